"""Key identifiers and exported public keys."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_KEY_ID = re.compile(r"^([a-z0-9][a-z0-9-]{0,62})\.v([1-9][0-9]{0,5})$")


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A payment key pair on the token: CKA_LABEL ``label``, CKA_ID ``v<version>``."""

    label: str
    version: int

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.label):
            raise ValueError(
                f"key label {self.label!r} must match {_LABEL.pattern} (lowercase, digits, '-')"
            )
        if not 1 <= self.version <= 999_999:
            raise ValueError(f"key version {self.version} must be between 1 and 999999")

    @property
    def key_id(self) -> str:
        """The id used in the API and the JWS ``kid``: ``<label>.v<version>``."""
        return f"{self.label}.v{self.version}"

    @property
    def cka_id(self) -> bytes:
        return f"v{self.version}".encode("ascii")

    @classmethod
    def parse(cls, key_id: str) -> KeyRef:
        match = _KEY_ID.fullmatch(key_id)
        if match is None:
            raise ValueError(f"key id {key_id!r} is not of the form <label>.v<version>")
        return cls(match.group(1), int(match.group(2)))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class PublicKeyInfo:
    """A payment public key as exported from the token."""

    ref: KeyRef
    spki_der: bytes

    @property
    def key_id(self) -> str:
        return self.ref.key_id

    @property
    def algorithm(self) -> str:
        return "ES256"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = serialization.load_der_public_key(self.spki_der)
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError(f"key {self.key_id} is not an EC P-256 key")
        return key

    @property
    def spki_pem(self) -> str:
        return (
            self.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def jwk(self) -> dict[str, str]:
        numbers = self.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
            "kid": self.key_id,
            "alg": "ES256",
            "use": "sig",
        }

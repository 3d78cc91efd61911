"""Ethereum's view of a secp256k1 key: keccak-256, addresses and (r, s, v) signatures.

Pure: no PKCS#11. The token signs (:mod:`paywarden.hsm.evm_keys`); this module turns
its public key into an address and its r||s into what Ethereum accepts: ``s`` in the
lower half of the group order (EIP-2; a high ``s`` is refused by ``ecrecover`` users
such as EIP-3009 tokens built on OpenZeppelin's ECDSA) and the recovery id ``v``,
the one with which (r, s, digest) recovers the key's own public key.

The recovery id is found with libsecp256k1 (coincurve): it only ever sees public
values (a public key, a digest about to be published, a signature). Python's
``hashlib.sha3_256`` is NOT keccak-256 (SHA-3 changed the padding) and OpenSSL 3.0
has no keccak, hence pycryptodome's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coincurve import PublicKey
from Crypto.Hash import keccak as _keccak
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.hsm.keys import KeyRef

# secp256k1 (SEC 2, section 2.4.1)
P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = N // 2

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak-256 (original Keccak padding, not FIPS 202 SHA3-256)."""
    return bytes(_keccak.new(digest_bits=256, data=data).digest())


# -- addresses ------------------------------------------------------------


def checksum_address(raw: bytes) -> str:
    """The EIP-55 mixed-case form of a 20-byte address."""
    if len(raw) != 20:
        raise ValueError(f"an address is 20 bytes, not {len(raw)}")
    lower = raw.hex()
    # Nibble i of keccak-256(lowercase hex) decides the case of hex digit i.
    mask = keccak256(lower.encode("ascii")).hex()[:40]
    pairs = zip(lower, mask, strict=True)
    return "0x" + "".join(c.upper() if c.isalpha() and int(m, 16) >= 8 else c for c, m in pairs)


def parse_address(text: str) -> bytes:
    """The 20 bytes of ``0x`` + 40 hex digits.

    All lower case or all upper case carries no checksum and is taken as it is; a
    mixed-case address must be exactly its EIP-55 form, so that a look-alike with one
    altered character (which a person comparing mixed-case text may miss) is refused
    rather than paid.
    """
    if not isinstance(text, str) or not _ADDRESS.fullmatch(text):
        raise ValueError("an address is 0x followed by 40 hexadecimal digits")
    digits = text[2:]
    raw = bytes.fromhex(digits)
    if digits != digits.lower() and digits != digits.upper() and checksum_address(raw) != text:
        raise ValueError(f"address {text} has a wrong EIP-55 checksum")
    return raw


def address_of_point(point: bytes) -> str:
    """The EIP-55 address of an uncompressed secp256k1 point (0x04 || x || y): the last
    20 bytes of keccak-256(x || y). Refuses bytes that are not a point of the curve."""
    _decode_point(point)
    return checksum_address(keccak256(point[1:])[-20:])


def _decode_point(point: bytes) -> tuple[int, int]:
    if len(point) != 65 or point[0] != 4:
        raise ValueError("a public key is 65 bytes: 0x04 || x || y")
    x, y = int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big")
    if not (x < P and y < P and (y * y - x * x * x - 7) % P == 0):
        raise ValueError("the public key is not a point of secp256k1")
    return x, y


# -- signatures ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvmSignature:
    """An Ethereum ECDSA signature: low ``s`` and recovery id ``v`` (0 or 1)."""

    r: int
    s: int
    v: int

    def __post_init__(self) -> None:
        if not (0 < self.r < N and 0 < self.s <= HALF_N and self.v in (0, 1)):
            raise ValueError("r in [1, n-1], s in [1, n/2] and v in {0, 1}")

    def to_bytes(self) -> bytes:
        """The 65 bytes r || s || v with v as 27 or 28, as ``ecrecover`` and EIP-3009
        tokens take it (and x402's ``signature`` field carries it, in hex)."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([27 + self.v])

    def hex(self) -> str:
        return "0x" + self.to_bytes().hex()


def normalise(digest: bytes, raw: bytes, public_point: bytes) -> EvmSignature:
    """The Ethereum form of a token's 64-byte r||s over ``digest`` by ``public_point``.

    ``s`` above n/2 becomes n - s (the same signature for ECDSA, the only one Ethereum
    accepts). The recovery id ``v`` is the one (0 or 1) from which ``ecrecover`` gets
    back the key's own public key Q, as libsecp256k1 recovers it; when neither does,
    the token did not sign ``digest`` with this key and nothing is returned. (Ids 2
    and 3, for R's x coordinate at or above n, probability about 2^-128, have no
    Ethereum encoding and are refused as well.)
    """
    if len(digest) != 32:
        raise ValueError("the digest is 32 bytes")
    if len(raw) != 64:
        raise ValueError(f"an ECDSA signature from the token is 64 bytes, not {len(raw)}")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    if not (0 < r < N and 0 < s < N):
        raise ValueError("the token's signature is out of range")
    if s > HALF_N:
        s = N - s
    _decode_point(public_point)
    rs = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for v in (0, 1):  # libsecp256k1's recovery (C): about 0.1 ms for both
        try:
            recovered = PublicKey.from_signature_and_message(rs + bytes([v]), digest, hasher=None)
        except ValueError:
            continue
        if recovered.format(compressed=False) == public_point:
            return EvmSignature(r, s, v)
    raise ValueError("the signature does not verify under the key's public key")


@dataclass(frozen=True, slots=True)
class EvmPublicKey:
    """An ``x402-exact-evm`` key's public half as read from the token."""

    ref: KeyRef
    point: bytes  # uncompressed, 0x04 || x || y

    def __post_init__(self) -> None:
        _decode_point(self.point)

    @property
    def key_id(self) -> str:
        return self.ref.key_id

    @property
    def address(self) -> str:
        """The key's Ethereum address, EIP-55 checksummed."""
        return address_of_point(self.point)

    @property
    def spki_der(self) -> bytes:
        """The public key as a DER SubjectPublicKeyInfo (what the signer's store keeps)."""
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), self.point)
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

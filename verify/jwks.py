"""The signer's public payment keys, read from its JWKS (``Signer.GetPublicKeys``).

Only what the signer publishes is accepted: EC P-256 keys for ES256 signatures, each with
its ``kid`` (``<label>.v<N>``) and its state (``paywarden_state``: active, verify-only, or
revoked with ``paywarden_revoked_at``) and the longest lifetime the signer gives a payment
(``paywarden_max_lifetime``, seconds: its ``max_expiry_seconds``). Anything else in the
document (another key type, a member this reader does not know, a kid listed twice, a
point off the curve) makes the whole set unusable: a payee checks against the set the
signer gave, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.policy.vocabulary import KeyState, Reason
from paywarden.verify.errors import PaymentRejected
from paywarden.verify.strict_json import b64url_decode

JWK_STATE = "paywarden_state"
JWK_REVOKED_AT = "paywarden_revoked_at"
JWK_MAX_LIFETIME = "paywarden_max_lifetime"
MAX_LIFETIME = 86_400  # the largest expiry window a signer may be configured with
ALGORITHM = "ES256"
_REQUIRED = frozenset({"kty", "crv", "x", "y", "kid", JWK_STATE})
_OPTIONAL = frozenset({"alg", "use", JWK_REVOKED_AT, JWK_MAX_LIFETIME})
_PUBLISHED = frozenset({KeyState.ACTIVE, KeyState.VERIFY_ONLY, KeyState.REVOKED})


@dataclass(frozen=True, slots=True)
class PaymentKey:
    """One key version of the set: its public key, its state, if revoked since when, and
    the longest payment lifetime the signer publishes (``None``: a signer that does not)."""

    kid: str
    public_key: ec.EllipticCurvePublicKey
    state: KeyState
    revoked_at: int | None = None
    max_lifetime: int | None = None


def _invalid(detail: str) -> PaymentRejected:
    return PaymentRejected(Reason.JWKS_INVALID, detail)


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _invalid(f"the JWKS has the member {key!r} twice")
        out[key] = value
    return out


def _coordinate(jwk: Mapping[str, object], name: str, kid: str) -> int:
    text = jwk[name]
    if not isinstance(text, str):
        raise _invalid(f"key {kid}: {name} is not a string")
    try:
        raw = b64url_decode(text, f"key {kid}'s {name}")
    except PaymentRejected:
        raise _invalid(f"key {kid}: {name} is not base64url") from None
    if len(raw) != 32:
        raise _invalid(f"key {kid}: {name} is not 32 bytes")
    return int.from_bytes(raw, "big")


def _key(jwk: object) -> PaymentKey:
    if not isinstance(jwk, dict):
        raise _invalid("a key is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _invalid("a key has no kid")
    members = set(jwk)
    if not _REQUIRED <= members or not members <= _REQUIRED | _OPTIONAL:
        missing, unknown = _REQUIRED - members, members - _REQUIRED - _OPTIONAL
        raise _invalid(f"key {kid}: missing {sorted(missing)}, unknown {sorted(unknown)}")
    if (jwk["kty"], jwk["crv"]) != ("EC", "P-256"):
        raise _invalid(f"key {kid}: not an EC P-256 key")
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        raise _invalid(f"key {kid}: not a key for {ALGORITHM} signatures")
    state = jwk[JWK_STATE]
    if not isinstance(state, str) or state not in _PUBLISHED:
        raise _invalid(f"key {kid}: unknown {JWK_STATE} {state!r}")
    revoked_at = jwk.get(JWK_REVOKED_AT)
    if (state == KeyState.REVOKED) != (revoked_at is not None) or (
        revoked_at is not None and type(revoked_at) is not int
    ):
        raise _invalid(f"key {kid}: {JWK_REVOKED_AT} is set exactly when the key is revoked")
    max_lifetime = jwk.get(JWK_MAX_LIFETIME)
    if max_lifetime is not None and (
        type(max_lifetime) is not int or not 1 <= max_lifetime <= MAX_LIFETIME
    ):
        raise _invalid(f"key {kid}: {JWK_MAX_LIFETIME} is not 1 to {MAX_LIFETIME} seconds")
    x, y = _coordinate(jwk, "x", kid), _coordinate(jwk, "y", kid)
    try:
        public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError:
        raise _invalid(f"key {kid}: the point is not on P-256") from None
    return PaymentKey(kid, public, KeyState(state), revoked_at, max_lifetime)


class Jwks:
    """A parsed key set: the keys by kid."""

    def __init__(self, keys: Mapping[str, PaymentKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def parse(cls, text: str | bytes) -> Jwks:
        """The set in ``text`` (the JSON of ``GetPublicKeysResponse.jwks_json``);
        :class:`PaymentRejected` (``JWKS_INVALID``) if it is not one this reader trusts."""
        try:
            doc = json.loads(text, object_pairs_hook=_pairs)
        except PaymentRejected:
            raise
        except (ValueError, RecursionError) as exc:
            raise _invalid(f"the JWKS is not JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"keys"} or not isinstance(doc["keys"], list):
            raise _invalid('the JWKS is not an object {"keys": [...]}')
        keys: dict[str, PaymentKey] = {}
        for jwk in doc["keys"]:
            key = _key(jwk)
            if key.kid in keys:
                raise _invalid(f"key {key.kid} is listed twice")
            keys[key.kid] = key
        if not keys:
            raise _invalid("the JWKS holds no key")
        return cls(keys)

    def get(self, kid: str) -> PaymentKey | None:
        return self._keys.get(kid)

    def kids(self) -> list[str]:
        return sorted(self._keys)

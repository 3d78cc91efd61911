"""A payee's offline check of a payment: the JWS the signer returned, against its JWKS.

What is accepted is exactly what the signer issues (``signer/core/payments.py``): a compact
JWS whose header is the RFC 8785 JSON of ``{"alg": "ES256", "kid": ..., "typ":
"paywarden-payment+jwt"}`` and whose payload is the RFC 8785 JSON of the twelve payment
claims, ``typ`` ``paywarden.payment.v1``. The checks, in order, each a rejection with its
own reason (:class:`PaymentRejected`):

1. three base64url parts, a JSON header (``JWS_MALFORMED``);
2. ``alg`` exactly ``ES256`` (``ALG_NOT_ALLOWED``: ``none`` and every other algorithm);
3. no header parameter but ``alg``, ``kid``, ``typ`` (``JWS_HEADER_NOT_ALLOWED``: ``crit``,
   ``jku``, ``x5u``, ``jwk`` ... could make a library fetch or trust another key), the
   header canonical (``JWS_NOT_CANONICAL``), ``typ`` the payment's (``TYP_NOT_ALLOWED``);
4. ``kid`` in the JWKS (``UNKNOWN_KEY``), the ES256 signature over the signing input
   (``BAD_SIGNATURE``), verified before the payload is read;
5. the payload canonical JSON (``JWS_NOT_CANONICAL``) holding exactly the payment's claims
   with their types (``CLAIMS_INVALID``), claim ``typ`` the payment's (``TYP_NOT_ALLOWED``),
   ``iat`` < ``exp`` and at most the signer's longest payment lifetime apart (the key's
   ``paywarden_max_lifetime``, else ``max_lifetime``, else 300 s; ``CLAIMS_INVALID``);
6. a revoked key only for a payment issued before its revocation and only until
   ``revoked_at`` + that lifetime (``KEY_REVOKED``): a thief of the key chooses ``iat``,
   so the offline check cannot tell a backdated payment from a genuine one after that;
7. the payee named is the caller: equal, code point for code point, to the caller's
   identifier in NFC (the form the signer signs payees in), with no case folding or
   trimming (``WRONG_PAYEE``);
8. not expired: ``now`` < ``exp`` (``PAYMENT_EXPIRED``); not issued more than ``leeway``
   seconds in the future (``PAYMENT_NOT_YET_VALID``).

Whether the payment was voided after it was signed (a freeze, a revoked key) is an online
question: ``Signer.CheckPayment``, which a payee must ask whenever a key is revoked (until
then a stolen key's backdated payment passes this check).

The JWS bytes are not unique to a payment: an ES256 signature (r, s) has a twin
(r, n - s) that verifies too, so anyone can make a second JWS of the same payment that
passes every check. Replay protection keys on the decision id (``jti``), never on the JWS.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from paywarden.policy.vocabulary import KeyState, Reason
from paywarden.verify.errors import PaymentRejected
from paywarden.verify.jwks import ALGORITHM, MAX_LIFETIME, Jwks, PaymentKey
from paywarden.verify.strict_json import Flat, b64url_decode, check_canonical, flat, json_object

JWS_TYPE = "paywarden-payment+jwt"
PAYLOAD_TYPE = "paywarden.payment.v1"
HEADER = frozenset({"alg", "kid", "typ"})
TEXT_CLAIMS = ("typ", "sid", "task", "sub", "payee", "amount", "asset", "ref", "nonce", "jti")
TIME_CLAIMS = ("iat", "exp")
CLAIMS = frozenset(TEXT_CLAIMS + TIME_CLAIMS)
DEFAULT_MAX_LIFETIME = 300  # the signer's max_expiry_seconds unless configured otherwise
DEFAULT_LEEWAY = 60  # seconds a payee's clock may be behind the signer's
_SIGNATURE_BYTES = 64  # r || s, 32 bytes each


@dataclass(frozen=True, slots=True)
class VerifiedPayment:
    """A payment that passed every check: what the signer signed, as it signed it.

    Two JWS strings can carry the same payment (ES256 signatures are malleable): whoever
    keeps a payment from being used twice keys on ``decision_id`` (the ``jti``), never on
    the JWS bytes."""

    key_id: str
    key_state: KeyState
    decision_id: str  # "jti": what Signer.CheckPayment takes
    payee: str
    amount: str  # a plain decimal string, never rounded
    asset: str
    reference: str
    agent_id: str  # "sub"
    session_id: str  # "sid"
    task_digest: str
    nonce: str
    issued_at: int
    expires_at: int
    payload: bytes  # the canonical claims, as signed


def _rejected(reason: Reason, detail: str) -> PaymentRejected:
    return PaymentRejected(reason, detail)


def _header(encoded: str) -> str:
    """The kid of a header that passes steps 1 to 3."""
    raw = b64url_decode(encoded, "header")
    parsed = json_object(raw, "header")
    alg = parsed.get("alg")
    if alg != ALGORITHM:
        raise _rejected(Reason.ALG_NOT_ALLOWED, f"alg {alg!r} is not {ALGORITHM}")
    extra = sorted(set(parsed) - HEADER)
    if extra:
        raise _rejected(Reason.JWS_HEADER_NOT_ALLOWED, f"header parameters not allowed: {extra}")
    header = flat(parsed, "header")
    check_canonical(header, raw, "header")
    if header.get("typ") != JWS_TYPE:
        raise _rejected(Reason.TYP_NOT_ALLOWED, f"the header's typ is not {JWS_TYPE!r}")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise _rejected(Reason.JWS_MALFORMED, "the header has no kid")
    return kid


def _check_signature(public_key: ec.EllipticCurvePublicKey, signed: bytes, encoded: str) -> None:
    raw = b64url_decode(encoded, "signature")
    if len(raw) != _SIGNATURE_BYTES:
        raise _rejected(Reason.BAD_SIGNATURE, "the signature is not 64 bytes (ES256 r || s)")
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _rejected(Reason.BAD_SIGNATURE, "the signature does not verify") from None


def _claims(raw: bytes, max_lifetime: int) -> Flat:
    claims = flat(json_object(raw, "payload"), "payload")
    check_canonical(claims, raw, "payload")
    if set(claims) != CLAIMS:
        missing, extra = sorted(CLAIMS - set(claims)), sorted(set(claims) - CLAIMS)
        raise _rejected(Reason.CLAIMS_INVALID, f"claims missing {missing}, not allowed {extra}")
    wrong = [c for c in TEXT_CLAIMS if type(claims[c]) is not str]
    wrong += [c for c in TIME_CLAIMS if type(claims[c]) is not int]
    if wrong:
        raise _rejected(Reason.CLAIMS_INVALID, f"claims of the wrong type: {wrong}")
    if claims["typ"] != PAYLOAD_TYPE:
        raise _rejected(Reason.TYP_NOT_ALLOWED, f"the claim typ is not {PAYLOAD_TYPE!r}")
    iat, exp = int(claims["iat"]), int(claims["exp"])
    if not iat < exp <= iat + max_lifetime:
        raise _rejected(Reason.CLAIMS_INVALID, f"exp is not after iat by at most {max_lifetime} s")
    return claims


def _lifetime(key: PaymentKey, max_lifetime: int | None) -> int:
    """The longest lifetime accepted: the smaller of the published and the given one."""
    if max_lifetime is not None and not 1 <= max_lifetime <= MAX_LIFETIME:
        raise ValueError(f"max_lifetime: 1 to {MAX_LIFETIME} seconds")
    bounds = [b for b in (key.max_lifetime, max_lifetime) if b is not None]
    return min(bounds) if bounds else DEFAULT_MAX_LIFETIME


def verify_payment(
    jws: str,
    jwks: Jwks | str | bytes,
    *,
    payee: str,
    now: float | None = None,
    leeway: int = DEFAULT_LEEWAY,
    max_lifetime: int | None = None,
) -> VerifiedPayment:
    """The payment ``jws`` (compact serialisation), checked against the signer's key set
    ``jwks`` (a :class:`Jwks` or its JSON) for the payee ``payee`` (the caller's own
    identifier) at ``now`` (Unix seconds; default: this machine's clock). A payment
    lives at most the key's published ``paywarden_max_lifetime`` and ``max_lifetime``
    (the smaller of those given; 300 s when neither is).

    Returns the payment's claims; raises :class:`PaymentRejected` with the reason of the
    first check that fails (see the module's docstring), whatever ``jws`` and ``jwks``
    hold. An empty ``payee`` is the caller's mistake: :class:`ValueError`.
    """
    if not payee:
        raise ValueError("payee: the caller's own identifier is required")
    keys = jwks if isinstance(jwks, Jwks) else Jwks.parse(jwks)
    if not isinstance(jws, str) or not jws.isascii():
        raise _rejected(Reason.JWS_MALFORMED, "a compact JWS is ASCII text")
    parts = jws.split(".")  # no surrounding whitespace either: what was signed, only
    if len(parts) != 3:
        raise _rejected(Reason.JWS_MALFORMED, "a compact JWS has three parts")
    kid = _header(parts[0])
    key = keys.get(kid)
    if key is None:
        raise _rejected(Reason.UNKNOWN_KEY, f"kid {kid!r} is not in the JWKS")
    payload_b64 = parts[1]
    raw = b64url_decode(payload_b64, "payload")  # malformed before the signature's verdict
    _check_signature(key.public_key, f"{parts[0]}.{payload_b64}".encode("ascii"), parts[2])
    lifetime = _lifetime(key, max_lifetime)
    claims = _claims(raw, lifetime)
    iat, exp = int(claims["iat"]), int(claims["exp"])
    moment = time.time() if now is None else now
    if key.state is KeyState.REVOKED and not (
        key.revoked_at is not None and iat < key.revoked_at and moment < key.revoked_at + lifetime
    ):
        raise _rejected(
            Reason.KEY_REVOKED,
            f"key {kid} was revoked at {key.revoked_at}: a payment issued before it is"
            f" accepted for {lifetime} s after it at most (iat {iat})",
        )
    if claims["payee"] != unicodedata.normalize("NFC", payee):
        raise _rejected(Reason.WRONG_PAYEE, "the payment names another payee")
    if moment >= exp:
        raise _rejected(Reason.PAYMENT_EXPIRED, f"the payment expired at {exp}")
    if iat > moment + leeway:
        raise _rejected(Reason.PAYMENT_NOT_YET_VALID, f"the payment is issued at {iat}")
    return VerifiedPayment(
        key_id=kid,
        key_state=key.state,
        decision_id=str(claims["jti"]),
        payee=str(claims["payee"]),
        amount=str(claims["amount"]),
        asset=str(claims["asset"]),
        reference=str(claims["ref"]),
        agent_id=str(claims["sub"]),
        session_id=str(claims["sid"]),
        task_digest=str(claims["task"]),
        nonce=str(claims["nonce"]),
        issued_at=iat,
        expires_at=exp,
        payload=raw,
    )

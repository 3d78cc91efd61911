"""Payment intents: strict validation, the claims, and the JWS."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from paywarden.policy.vocabulary import Amount, Asset
from paywarden.signer.core.session_input import parse_session_id
from paywarden.signer.core.validation import clean_text, parse_amount, parse_nonce
from paywarden.signer.core.x402_terms import X402Terms
from paywarden.signer.encoding import b64url, jcs
from paywarden.signer.errors import InvalidInput, Reason

MAX_PAYEE = 256
MAX_REFERENCE = 128
MAX_PURPOSE = 1024
PAYLOAD_TYPE = "paywarden.payment.v1"
JWS_TYPE = "paywarden-payment+jwt"
MAX_EXPIRES_AT = 2**53 - 1  # the largest integer JSON numbers carry exactly


@dataclass(frozen=True, slots=True)
class IntentFields:
    """The agent's request as it arrived (plain strings and an integer)."""

    session_id: str
    key_id: str
    payee: str
    amount: str
    asset: str
    reference: str
    purpose: str
    nonce: str
    expires_at: int
    # A SignX402's requirements as they arrived (bounded), for its refusal record.
    x402: Mapping[str, str | int] | None = None


@dataclass(frozen=True, slots=True)
class Intent:
    """A validated, normalised payment intent."""

    session_id: str
    key_id: str
    payee: str
    amount: Amount
    asset: str
    reference: str
    purpose: str
    nonce: str
    expires_at: int
    x402: X402Terms | None = None  # a SignX402 payment: its x402 terms

    def request_digest_input(self, agent_id: str) -> bytes:
        """What identifies "the same request" for retries (purpose included)."""
        x402 = {} if self.x402 is None else {"x402": self.x402.digest_fields()}
        return jcs(
            {
                **x402,
                "sid": self.session_id,
                "kid": self.key_id,
                "sub": agent_id,
                "payee": self.payee,
                "amount": str(self.amount),
                "asset": self.asset,
                "ref": self.reference,
                "purpose": self.purpose,
                "nonce": self.nonce,
                "exp": self.expires_at,
            }
        )


def validate_intent(
    fields: IntentFields, assets: Mapping[str, Asset], key_ids: Container[str]
) -> Intent:
    """Raises :class:`InvalidInput` with a precise reason for the first problem.
    ``key_ids``: the key ids and labels a request may name."""
    session_id = parse_session_id(fields.session_id)
    if not fields.asset:
        raise InvalidInput(Reason.FIELD_MISSING, "asset is required")
    asset = assets.get(fields.asset)
    if asset is None:
        raise InvalidInput(Reason.UNKNOWN_ASSET, "asset is not one this signer knows")
    if not fields.key_id:
        raise InvalidInput(Reason.FIELD_MISSING, "key_id is required")
    if fields.key_id not in key_ids:
        raise InvalidInput(Reason.UNKNOWN_KEY, "key_id is not a payment key of this signer")
    amount = parse_amount("amount", fields.amount, asset)
    payee = clean_text("payee", fields.payee, max_len=MAX_PAYEE)
    reference = clean_text("reference", fields.reference, max_len=MAX_REFERENCE)
    purpose = clean_text(
        "purpose", fields.purpose, max_len=MAX_PURPOSE, required=False, allow_newlines=True
    )
    nonce = parse_nonce(fields.nonce)
    if fields.expires_at == 0:
        raise InvalidInput(Reason.FIELD_MISSING, "expires_at is required")
    if fields.expires_at < 0:
        raise InvalidInput(Reason.EXPIRY_IN_PAST, "expires_at is not in the future")
    if fields.expires_at > MAX_EXPIRES_AT:
        raise InvalidInput(Reason.EXPIRY_TOO_FAR, "expires_at is too far ahead")
    return Intent(
        session_id=session_id,
        key_id=fields.key_id,
        payee=payee,
        amount=amount,
        asset=fields.asset,
        reference=reference,
        purpose=purpose,
        nonce=nonce,
        expires_at=fields.expires_at,
    )


def check_expiry(expires_at: int, now: int, max_ahead: int, session_end: int) -> None:
    if expires_at <= now:
        raise InvalidInput(Reason.EXPIRY_IN_PAST, "expires_at is not in the future")
    if expires_at > now + max_ahead:
        raise InvalidInput(Reason.EXPIRY_TOO_FAR, f"expires_at is more than {max_ahead} s ahead")
    if expires_at > session_end:
        raise InvalidInput(Reason.EXPIRY_AFTER_SESSION, "expires_at is after the session ends")


def claims(
    intent: Intent, *, agent_id: str, task_digest: str, issued_at: int, decision_id: str
) -> dict[str, str | int]:
    return {
        "typ": PAYLOAD_TYPE,
        "sid": intent.session_id,
        "task": task_digest,
        "sub": agent_id,
        "payee": intent.payee,
        "amount": str(intent.amount),
        "asset": intent.asset,
        "ref": intent.reference,
        "nonce": intent.nonce,
        "iat": issued_at,
        "exp": intent.expires_at,
        "jti": decision_id,
    }


def jws_signing_input(key_id: str, payload: bytes) -> bytes:
    # Explicit typing (RFC 8725 3.11): a payment is not a generic access token.
    header = jcs({"alg": "ES256", "kid": key_id, "typ": JWS_TYPE})
    return f"{b64url(header)}.{b64url(payload)}".encode("ascii")


def jws_compact(signing_input: bytes, signature: bytes) -> str:
    return f"{signing_input.decode('ascii')}.{b64url(signature)}"

"""The SDK takes a signed answer for a signature only when every claim is the request's.

The real signer cannot be made to sign a wrong answer on demand, so the answers here are
constructed: first one that matches its request (read as :class:`Signed`), then the same
answer with one thing changed, each of which must be :class:`UnexpectedAnswer`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from paywarden.client import Signed, UnexpectedAnswer
from paywarden.client._signing import Payment, build_intent, read_answer
from paywarden.v1 import signer_pb2

ASKED: Payment = {
    "payee": "acme-weather",
    "amount": "12.5",
    "asset": "USD",
    "reference": "inv-9",
    "expires_at": 1_900_000_120,
    "nonce": "bm9uY2Utbm9uY2Utbm9uY2Utbm9uY2U",
}


def segment(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def claims_for(intent: signer_pb2.PaymentIntent) -> dict[str, Any]:
    """The claims the signer writes for ``intent`` (the amount with the asset's decimals)."""
    return {
        "typ": "paywarden.payment.v1", "sid": intent.session_id, "task": "t" * 43,
        "sub": "agent-1", "payee": intent.payee, "amount": "12.50", "asset": intent.asset,
        "ref": intent.reference, "nonce": intent.nonce, "iat": 1_900_000_000,
        "exp": intent.expires_at, "jti": "dec-1",
    }  # fmt: skip


def answer(claims: dict[str, Any], *, jws_payload: bytes | None = None) -> signer_pb2.SignResponse:
    """A SIGNED response carrying ``claims`` (canonical JSON) and a JWS of it (or of
    ``jws_payload``); the signature segment is not checked here."""
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    header = segment(b'{"alg":"ES256","kid":"payments.v1","typ":"paywarden-payment+jwt"}')
    jws = f"{header}.{segment(payload if jws_payload is None else jws_payload)}.c2ln"
    return signer_pb2.SignResponse(
        status=signer_pb2.SIGNED, jws=jws, canonical_payload=payload, decision_id="dec-1",
        key_id="payments.v1", audit_seq=7,
    )  # fmt: skip


def test_the_matching_answer_is_a_signature() -> None:
    intent = build_intent("sess-1", ASKED)
    signed = read_answer(answer(claims_for(intent)), intent, 1, None)
    assert isinstance(signed, Signed)
    assert (signed.claims.amount, signed.claims.nonce) == ("12.50", intent.nonce)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("typ", "paywarden.receipt.v1"),
        ("sid", "sess-2"),
        ("payee", "acme-data"),
        ("amount", "125.0"),
        ("amount", "1.25e1"),
        ("asset", "EUR"),
        ("ref", "inv-10"),
        ("nonce", "b3RoZXItbm9uY2Utb3RoZXItbm9uY2U"),
        ("exp", 1_900_000_121),
        ("jti", "dec-2"),
    ],
)
def test_an_answer_with_another_claim_is_refused(claim: str, value: object) -> None:
    intent = build_intent("sess-1", ASKED)
    tampered = claims_for(intent) | {claim: value}
    with pytest.raises(UnexpectedAnswer, match=claim):
        read_answer(answer(tampered), intent, 1, None)


def test_a_jws_of_another_payload_is_refused() -> None:
    intent = build_intent("sess-1", ASKED)
    other = json.dumps(claims_for(intent) | {"payee": "mallory"}, sort_keys=True).encode()
    with pytest.raises(UnexpectedAnswer, match="jws payload"):
        read_answer(answer(claims_for(intent), jws_payload=other), intent, 1, None)

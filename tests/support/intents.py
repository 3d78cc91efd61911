"""One builder for the payment intents the tests send.

The amount has no default: each call site says what it pays, so no module's
"usual" amount hides in a helper.
"""

from __future__ import annotations

from paywarden.v1 import signer_pb2

from tests.helpers import Stack, new_nonce


def sign_request(
    stack: Stack,
    session_id: str,
    /,
    *,
    amount: str,
    payee: str = "acme-data",
    asset: str = "USD",
    key_id: str = "payments.v1",
    reference: str = "inv-1",
    purpose: str = "",
    nonce: str | None = None,
    expires_at: int | None = None,
    expires_in: int = 60,
) -> signer_pb2.SignRequest:
    """A request for ``session_id``; a fresh nonce and an expiry ``expires_in`` seconds
    from the stack's clock unless ``nonce`` / ``expires_at`` are given."""
    return signer_pb2.SignRequest(
        intent=signer_pb2.PaymentIntent(
            session_id=session_id,
            key_id=key_id,
            payee=payee,
            amount=amount,
            asset=asset,
            reference=reference,
            purpose=purpose,
            nonce=new_nonce() if nonce is None else nonce,
            expires_at=int(stack.clock.now()) + expires_in if expires_at is None else expires_at,
        )
    )

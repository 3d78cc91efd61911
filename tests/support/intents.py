"""One builder for the payment intents the tests send.

The amount has no default: each call site says what it pays, so no module's
"usual" amount hides in a helper.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from paywarden.signer.core.payments import IntentFields
from paywarden.v1 import signer_pb2

from tests.helpers import Stack, new_nonce


def intent_fields(
    session_id: str,
    *,
    payee: str,
    amount: str,
    expires_at: int,
    nonce: str | None = None,
    key_id: str = "payments.v1",
    asset: str = "USD",
    reference: str = "inv-1",
    purpose: str = "",
) -> IntentFields:
    """A payment intent as the service takes it; a fresh nonce unless one is given."""
    return IntentFields(
        session_id=session_id,
        key_id=key_id,
        payee=payee,
        amount=amount,
        asset=asset,
        reference=reference,
        purpose=purpose,
        nonce=new_nonce() if nonce is None else nonce,
        expires_at=expires_at,
    )


def payment_intent(
    session_id: str,
    *,
    payee: str,
    amount: str,
    expires_at: int | None = None,
    expires_in: int = 60,
    nonce: str | None = None,
    key_id: str = "payments.v1",
    asset: str = "USD",
    reference: str = "inv-1",
    purpose: str = "",
) -> signer_pb2.PaymentIntent:
    """``intent_fields(...)`` as the message an agent sends. It expires ``expires_in``
    seconds from now on the wall clock (a served process's clock) unless
    ``expires_at`` is given."""
    fields = intent_fields(
        session_id,
        payee=payee,
        amount=amount,
        expires_at=int(time.time()) + expires_in if expires_at is None else expires_at,
        nonce=nonce,
        key_id=key_id,
        asset=asset,
        reference=reference,
        purpose=purpose,
    )
    wire = signer_pb2.PaymentIntent.DESCRIPTOR.fields_by_name  # (not IntentFields.x402)
    return signer_pb2.PaymentIntent(
        **{f.name: getattr(fields, f.name) for f in dataclasses.fields(fields) if f.name in wire}
    )


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
    """``payment_intent(...)`` in a request, paying acme-data unless told; it expires
    ``expires_in`` seconds from the stack's clock unless ``expires_at`` is given."""
    return signer_pb2.SignRequest(
        intent=payment_intent(
            session_id,
            payee=payee,
            amount=amount,
            expires_at=int(stack.clock.now()) + expires_in if expires_at is None else expires_at,
            nonce=nonce,
            key_id=key_id,
            asset=asset,
            reference=reference,
            purpose=purpose,
        )
    )


def payment_request(session_id: str, /, **fields: Any) -> signer_pb2.SignRequest:
    """``payment_intent(session_id, **fields)`` in the request an agent sends; for a
    served process, whose clock is the wall clock."""
    return signer_pb2.SignRequest(intent=payment_intent(session_id, **fields))

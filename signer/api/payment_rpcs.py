"""Signer's CheckPayment RPC: proto in, use case, proto out.

A mixin of :class:`~paywarden.signer.api.signer_servicer.SignerServicer`, which holds
``payments`` and ``edge``."""

from __future__ import annotations

from paywarden.signer.api.authz import Edge, rpc
from paywarden.signer.core.standing import PaymentChecks, Standing
from paywarden.signer.identity import Principal
from paywarden.v1 import signer_pb2

_STANDINGS = {
    Standing.VALID: signer_pb2.VALID,
    Standing.VOIDED: signer_pb2.VOIDED,
    Standing.EXPIRED: signer_pb2.EXPIRED,
}


class PaymentRpcs:
    payments: PaymentChecks
    edge: Edge

    @rpc("/paywarden.v1.Signer/CheckPayment")
    def CheckPayment(
        self, caller: Principal, request: signer_pb2.CheckPaymentRequest
    ) -> signer_pb2.CheckPaymentResponse:
        answer = self.payments.check(caller, request.decision_id)
        return signer_pb2.CheckPaymentResponse(
            standing=_STANDINGS[answer.standing],
            reason=str(answer.reason or ""),
            detail=answer.detail,
            decision_id=answer.decision_id,
            payee=answer.payee,
            amount=answer.amount,
            asset=answer.asset,
            key_id=answer.key_id,
            expires_at=answer.expires_at,
            checked_at=answer.checked_at,
        )

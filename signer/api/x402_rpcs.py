"""Signer's SignX402 RPC: proto in, use case, proto out.

A mixin of :class:`~paywarden.signer.api.signer_servicer.SignerServicer`, which holds
``signing`` and ``edge``."""

from __future__ import annotations

from paywarden.signer import deadlines
from paywarden.signer.api.authz import Edge, rpc
from paywarden.signer.core.signing import Signing
from paywarden.signer.core.views import SignStatus
from paywarden.signer.core.x402 import X402Fields, from_address_of, payment_payload
from paywarden.signer.identity import Principal
from paywarden.v1 import signer_pb2


class X402Rpcs:
    signing: Signing
    edge: Edge

    @rpc("/paywarden.v1.Signer/SignX402")
    def SignX402(
        self, caller: Principal, request: signer_pb2.SignX402Request
    ) -> signer_pb2.SignX402Response:
        result = self.signing.sign_x402(caller, request_fields(request), deadlines.current())
        answer = signer_pb2.SignX402Response(
            status=signer_pb2.SIGNED,
            decision_id=result.decision_id,
            key_id=result.key_id,
            from_address=from_address_of(result.payload),
            replayed_result=result.replayed,
            audit_seq=result.audit_seq,
        )
        if result.status is SignStatus.PENDING_APPROVAL:
            answer.status = signer_pb2.PENDING_APPROVAL
            answer.approval_id = result.approval_id
            return answer
        answer.payment_payload_json, answer.x_payment = payment_payload(
            result.payload, result.jws or ""
        )
        return answer


def request_fields(request: signer_pb2.SignX402Request) -> X402Fields:
    """A SignX402 request as the use case takes it (every field as it arrived)."""
    r = request.requirements
    return X402Fields(
        session_id=request.session_id,
        key_id=request.key_id,
        x402_version=r.x402_version,
        scheme=r.scheme,
        network=r.network,
        asset=r.asset,
        pay_to=r.pay_to,
        amount=r.amount,
        resource=r.resource,
        max_timeout_seconds=r.max_timeout_seconds,
        extra_name=r.extra_name,
        extra_version=r.extra_version,
        extra_json=r.extra_json,
        reference=request.reference,
        purpose=request.purpose,
        nonce=request.nonce,
        expires_at=request.expires_at,
    )

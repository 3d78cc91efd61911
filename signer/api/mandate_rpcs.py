"""Control's RevokeMandate: proto in, :class:`~paywarden.signer.core.mandate_revocations.
MandateRevocations`, proto out. A mixin of :class:`~paywarden.signer.api.servicers.
ControlServicer`, which holds ``mandates`` and ``edge``."""

from __future__ import annotations

from paywarden.signer.api.authz import Edge, rpc
from paywarden.signer.core.mandate_revocations import MandateRevocations
from paywarden.signer.identity import Principal
from paywarden.signer.store.records import MandateRevocation, MandateRevocationKind
from paywarden.v1 import control_pb2


def mandate_revocation_proto(r: MandateRevocation) -> control_pb2.MandateRevocationRecord:
    out = control_pb2.MandateRevocationRecord(reason=r.reason, operator=r.operator, at=r.created_at)
    if r.kind is MandateRevocationKind.MANDATE:
        out.mandate_id = r.value
    else:
        out.agent_key_thumbprint = r.value
    return out


class MandateRpcs:
    mandates: MandateRevocations
    edge: Edge

    @rpc("/paywarden.v1.Control/RevokeMandate")
    def RevokeMandate(
        self, caller: Principal, request: control_pb2.RevokeMandateRequest
    ) -> control_pb2.RevokeMandateResponse:
        revocation, created, count = self.mandates.revoke(
            caller, request.mandate_id, request.agent_key_thumbprint, request.reason
        )
        return control_pb2.RevokeMandateResponse(
            revocation=mandate_revocation_proto(revocation),
            created=created,
            mandates_revoked=count,
        )

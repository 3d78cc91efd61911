"""Control's policy reload RPCs (ReloadPolicy, ConfirmReload, GetReload): proto in,
use case, proto out.

A mixin of :class:`~paywarden.signer.api.servicers.ControlServicer`, which holds
``reloads`` and ``edge``."""

from __future__ import annotations

from paywarden.policy.diff import PackSetDiff
from paywarden.policy.vocabulary import ReloadState
from paywarden.signer.api.authz import Edge, rpc
from paywarden.signer.core.reloads import PolicyReloads, ReloadOutcome, ShownReload
from paywarden.signer.identity import Principal
from paywarden.v1 import control_pb2

_STATES = {
    ReloadState.APPLIED: control_pb2.RELOAD_APPLIED,
    ReloadState.UNCHANGED: control_pb2.RELOAD_UNCHANGED,
    ReloadState.PENDING: control_pb2.RELOAD_PENDING,
}


def _refs(refs: list[dict[str, str | int]]) -> list[control_pb2.PolicyPackRef]:
    return [
        control_pb2.PolicyPackRef(
            id=str(r["id"]), version=int(r["version"]), sha256=str(r["sha256"])
        )
        for r in refs
    ]


def _changes(diff: PackSetDiff) -> list[control_pb2.PolicyChange]:
    return [
        control_pb2.PolicyChange(
            subject=c.subject, field=c.field, direction=str(c.direction), description=c.description
        )
        for c in diff.changes
    ]


def reload_proto(out: ReloadOutcome) -> control_pb2.ReloadPolicyResponse:
    return control_pb2.ReloadPolicyResponse(
        state=_STATES[out.state],
        reload_id=out.reload_id,
        old_sha256=out.old.sha256,
        new_sha256=out.new.sha256,
        old_packs=_refs(out.old.refs()),
        new_packs=_refs(out.new.refs()),
        widens=out.diff.widens,
        changes=_changes(out.diff),
        needs_second_operator=out.diff.needs_second_operator,
        expires_at=out.expires_at,
        proposed_by=out.proposed_by,
    )


def shown_proto(shown: ShownReload) -> control_pb2.ReloadPolicyResponse:
    r = shown.record
    pending = shown.new is not None and shown.diff is not None
    out = control_pb2.ReloadPolicyResponse(
        state=control_pb2.RELOAD_PENDING if pending else control_pb2.RELOAD_SETTLED,
        reload_id=r.id,
        old_sha256=shown.old.sha256,
        new_sha256=r.new_sha256,
        old_packs=_refs(shown.old.refs()),
        expires_at=r.expires_at,
        proposed_by=r.proposed_by,
    )
    if shown.new is not None and shown.diff is not None:
        out.new_packs.extend(_refs(shown.new.refs()))
        out.widens = shown.diff.widens
        out.changes.extend(_changes(shown.diff))
        out.needs_second_operator = shown.diff.needs_second_operator
    return out


class ReloadRpcs:
    reloads: PolicyReloads
    edge: Edge

    @rpc("/paywarden.v1.Control/ReloadPolicy")
    def ReloadPolicy(
        self, caller: Principal, request: control_pb2.ReloadPolicyRequest
    ) -> control_pb2.ReloadPolicyResponse:
        return reload_proto(self.reloads.reload(caller))

    @rpc("/paywarden.v1.Control/ConfirmReload")
    def ConfirmReload(
        self, caller: Principal, request: control_pb2.ConfirmReloadRequest
    ) -> control_pb2.ReloadPolicyResponse:
        return reload_proto(self.reloads.confirm(caller, request.reload_id, request.new_sha256))

    @rpc("/paywarden.v1.Control/GetReload")
    def GetReload(
        self, caller: Principal, request: control_pb2.GetReloadRequest
    ) -> control_pb2.ReloadPolicyResponse:
        return shown_proto(self.reloads.get(caller, request.reload_id))

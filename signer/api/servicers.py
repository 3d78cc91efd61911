"""Thin gRPC servicers: proto in, plain Python service call, proto out.

The Signer service's is in :mod:`.signer_servicer`."""

from __future__ import annotations

import json

from paywarden.policy.vocabulary import Amount, FreezeScope
from paywarden.signer.api.authz import Edge, rpc
from paywarden.signer.api.mandate_rpcs import MandateRpcs
from paywarden.signer.api.reload_rpcs import ReloadRpcs
from paywarden.signer.auditlog.checkpoints import Checkpoint
from paywarden.signer.core.approvals import Approvals
from paywarden.signer.core.checkpoints import Checkpoints
from paywarden.signer.core.explain import Explain
from paywarden.signer.core.explain_document import document_bytes
from paywarden.signer.core.freezes import Freezes
from paywarden.signer.core.mandate_revocations import MandateRevocations
from paywarden.signer.core.reloads import PolicyReloads
from paywarden.signer.core.revocations import Revocations
from paywarden.signer.core.sessions import Sessions
from paywarden.signer.core.views import ApprovalView, SessionView
from paywarden.signer.errors import InvalidInput, NotFound, Reason
from paywarden.signer.identity import Principal
from paywarden.signer.store.records import Freeze, Revocation, RevocationKind
from paywarden.v1 import (
    approvals_pb2,
    approvals_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)


def _ledger_proto(view: SessionView) -> sessions_pb2.MandateLedger | None:
    if view.mandate is None:
        return None
    m, use = view.mandate
    decimals = view.decimals.get(m.asset, 0)
    return sessions_pb2.MandateLedger(
        asset=m.asset,
        budget=str(Amount(m.budget_minor, decimals)),
        spent=str(Amount(use.spent_minor, decimals)),
        uses=use.uses,
        max_uses=m.max_uses or 0,
        expires_at=m.expires_at,
        revoked=m.revoked_at is not None,
    )


def _session_proto(view: SessionView) -> sessions_pb2.Session:
    r = view.record
    return sessions_pb2.Session(
        session_id=r.id,
        agent_id=r.agent_id,
        planner_id=r.planner_id,
        task_digest=r.task_digest,
        created_at=r.created_at,
        expires_at=r.expires_at,
        state=view.state,
        spend=[
            sessions_pb2.AssetSpend(
                asset=a,
                budget=str(Amount(r.budgets_minor[a], view.decimals[a])),
                spent=str(Amount(r.spent_minor.get(a, 0), view.decimals[a])),
            )
            for a in sorted(r.budgets_minor)
        ],
        allowed_payees=list(r.allowed_payees),
        phase=r.phase,
        pack_id=r.pack_id,
        mandate_id=r.mandate_id or "",
        mandate=_ledger_proto(view),
        plan=[
            sessions_pb2.PlanLine(
                payee=line.payee,
                asset=line.asset,
                max_amount=str(Amount(line.max_amount_minor, view.decimals.get(line.asset, 0))),
                count=line.count,
                used=line.used,
            )
            for line in r.plan
        ],
    )


class SessionsServicer(sessions_pb2_grpc.SessionsServicer):
    def __init__(self, sessions: Sessions, edge: Edge) -> None:
        self.sessions = sessions
        self.edge = edge

    @rpc("/paywarden.v1.Sessions/OpenSession")
    def OpenSession(
        self, caller: Principal, request: sessions_pb2.OpenSessionRequest
    ) -> sessions_pb2.OpenSessionResponse:
        view = self.sessions.open_session(
            caller,
            agent_id=request.agent_id,
            task_description=request.task_description,
            budgets=[(b.asset, b.amount) for b in request.budgets],
            ttl_seconds=request.ttl_seconds,
            allowed_payees=list(request.allowed_payees),
            plan_bound=request.plan_bound,
            mandate=request.mandate,
        )
        return sessions_pb2.OpenSessionResponse(session=_session_proto(view))

    @rpc("/paywarden.v1.Sessions/GetSession")
    def GetSession(
        self, caller: Principal, request: sessions_pb2.GetSessionRequest
    ) -> sessions_pb2.GetSessionResponse:
        view = self.sessions.get_session(caller, request.session_id)
        return sessions_pb2.GetSessionResponse(session=_session_proto(view))

    @rpc("/paywarden.v1.Sessions/CloseSession")
    def CloseSession(
        self, caller: Principal, request: sessions_pb2.CloseSessionRequest
    ) -> sessions_pb2.CloseSessionResponse:
        view = self.sessions.close_session(caller, request.session_id)
        return sessions_pb2.CloseSessionResponse(session=_session_proto(view))

    @rpc("/paywarden.v1.Sessions/CommitPlan")
    def CommitPlan(
        self, caller: Principal, request: sessions_pb2.CommitPlanRequest
    ) -> sessions_pb2.CommitPlanResponse:
        lines = [(ln.payee, ln.asset, ln.max_amount, ln.count) for ln in request.lines]
        view = self.sessions.commit_plan(caller, request.session_id, lines)
        return sessions_pb2.CommitPlanResponse(session=_session_proto(view))


def _approval_proto(view: ApprovalView) -> approvals_pb2.Approval:
    a, d = view.approval, view.decision
    return approvals_pb2.Approval(
        approval_id=a.id,
        decision_id=d.id,
        state=view.state,
        agent_id=d.agent_id,
        session_id=d.session_id,
        planner_id=view.session.planner_id,
        canonical_payload=d.payload or b"",
        payee=d.payee,
        amount=view.amount,
        asset=d.asset,
        key_id=d.key_id,
        reason=d.reason,
        trace_json=json.dumps([r.as_json() for r in d.trace]),  # the stored column's text
        untrusted_purpose=d.purpose,
        approvals_required=a.required,
        approved_by=list(a.approved_by),
        denied_by=a.denied_by or "",
        denial_note=a.note,
        created_at=a.created_at,
        expires_at=a.expires_at,
        pack_id=d.pack.id if d.pack is not None else "",
        pack_version=d.pack.version if d.pack is not None else 0,
        pack_sha256=d.pack.sha256 if d.pack is not None else "",
    )


class ApprovalsServicer(approvals_pb2_grpc.ApprovalsServicer):
    def __init__(self, approvals: Approvals, edge: Edge) -> None:
        self.approvals = approvals
        self.edge = edge

    @rpc("/paywarden.v1.Approvals/ListPending")
    def ListPending(
        self, caller: Principal, request: approvals_pb2.ListPendingRequest
    ) -> approvals_pb2.ListPendingResponse:
        views = self.approvals.list_pending(caller)
        return approvals_pb2.ListPendingResponse(approvals=[_approval_proto(v) for v in views])

    @rpc("/paywarden.v1.Approvals/GetApproval")
    def GetApproval(
        self, caller: Principal, request: approvals_pb2.GetApprovalRequest
    ) -> approvals_pb2.GetApprovalResponse:
        view = self.approvals.get_approval(caller, request.approval_id)
        return approvals_pb2.GetApprovalResponse(approval=_approval_proto(view))

    @rpc("/paywarden.v1.Approvals/Approve")
    def Approve(
        self, caller: Principal, request: approvals_pb2.ApproveRequest
    ) -> approvals_pb2.ApproveResponse:
        view = self.approvals.vote(caller, request.approval_id, True, request.note)
        return approvals_pb2.ApproveResponse(approval=_approval_proto(view))

    @rpc("/paywarden.v1.Approvals/Deny")
    def Deny(
        self, caller: Principal, request: approvals_pb2.DenyRequest
    ) -> approvals_pb2.DenyResponse:
        view = self.approvals.vote(caller, request.approval_id, False, request.note)
        return approvals_pb2.DenyResponse(approval=_approval_proto(view))


_SCOPE_NAMES: dict[int, FreezeScope] = {
    int(control_pb2.GLOBAL): FreezeScope.GLOBAL,
    int(control_pb2.AGENT): FreezeScope.AGENT,
    int(control_pb2.SESSION): FreezeScope.SESSION,
    int(control_pb2.KEY): FreezeScope.KEY,
}
_SCOPE_ENUMS = {v: k for k, v in _SCOPE_NAMES.items()}


def _scope(value: int) -> FreezeScope:
    name = _SCOPE_NAMES.get(int(value))
    if name is None:
        raise InvalidInput(Reason.STRING_INVALID, "scope must be GLOBAL, AGENT, SESSION or KEY")
    return name


def _freeze_proto(f: Freeze) -> control_pb2.FreezeRecord:
    return control_pb2.FreezeRecord(
        scope=_SCOPE_ENUMS[f.scope],  # type: ignore[arg-type]
        target=f.target,
        reason=f.reason,
        actor=f.actor,
        at=f.at,
    )


def checkpoint_proto(cp: Checkpoint) -> control_pb2.SignedCheckpoint:
    """A signed checkpoint as Control.Checkpoint and Signer.GetReceipt send it."""
    return control_pb2.SignedCheckpoint(
        tree_size=cp.size,
        root_hash=cp.root,
        time=cp.at,
        key_id=cp.key_id,
        body=cp.body,
        signature=cp.signature,
    )


def _revocation_proto(r: Revocation) -> control_pb2.RevocationRecord:
    principal = r.kind is RevocationKind.PRINCIPAL
    return control_pb2.RevocationRecord(
        principal_id=r.value if principal else "",
        cert_serial="" if principal else r.value,
        reason=r.reason,
        operator=r.operator,
        at=r.created_at,
    )


class ControlServicer(ReloadRpcs, MandateRpcs, control_pb2_grpc.ControlServicer):
    def __init__(
        self,
        freezes: Freezes,
        checkpoints: Checkpoints,
        edge: Edge,
        revocations: Revocations,
        explain: Explain,
        reloads: PolicyReloads,
        mandates: MandateRevocations,
    ) -> None:
        self.freezes = freezes
        self.checkpoints = checkpoints
        self.edge = edge
        self.revocations = revocations
        self.explain = explain
        self.reloads = reloads
        self.mandates = mandates

    @rpc("/paywarden.v1.Control/Freeze")
    def Freeze(
        self, caller: Principal, request: control_pb2.FreezeRequest
    ) -> control_pb2.FreezeResponse:
        freeze, created = self.freezes.freeze(
            caller, _scope(request.scope), request.target, request.reason
        )
        return control_pb2.FreezeResponse(freeze=_freeze_proto(freeze), created=created)

    @rpc("/paywarden.v1.Control/Unfreeze")
    def Unfreeze(
        self, caller: Principal, request: control_pb2.UnfreezeRequest
    ) -> control_pb2.UnfreezeResponse:
        removed = self.freezes.unfreeze(
            caller, _scope(request.scope), request.target, request.reason
        )
        return control_pb2.UnfreezeResponse(removed=removed)

    @rpc("/paywarden.v1.Control/ListFreezes")
    def ListFreezes(
        self, caller: Principal, request: control_pb2.ListFreezesRequest
    ) -> control_pb2.ListFreezesResponse:
        return control_pb2.ListFreezesResponse(
            freezes=[_freeze_proto(f) for f in self.freezes.freezes()]
        )

    @rpc("/paywarden.v1.Control/RevokeIdentity")
    def RevokeIdentity(
        self, caller: Principal, request: control_pb2.RevokeIdentityRequest
    ) -> control_pb2.RevokeIdentityResponse:
        revocation, created = self.revocations.revoke(
            caller, request.principal_id, request.cert_serial, request.reason
        )
        return control_pb2.RevokeIdentityResponse(
            revocation=_revocation_proto(revocation), created=created
        )

    @rpc("/paywarden.v1.Control/ListRevocations")
    def ListRevocations(
        self, caller: Principal, request: control_pb2.ListRevocationsRequest
    ) -> control_pb2.ListRevocationsResponse:
        return control_pb2.ListRevocationsResponse(
            revocations=[_revocation_proto(r) for r in self.revocations.revocations()]
        )

    @rpc("/paywarden.v1.Control/Checkpoint")
    def Checkpoint(
        self, caller: Principal, request: control_pb2.CheckpointRequest
    ) -> control_pb2.CheckpointResponse:
        cp = self.checkpoints.checkpoint()
        if cp is None:
            raise NotFound(Reason.STRING_INVALID, "the audit log is empty")
        return control_pb2.CheckpointResponse(
            checkpoint=checkpoint_proto(cp),
            audit_public_key_pem=self.checkpoints.audit_public_key_pem(),
        )

    @rpc("/paywarden.v1.Control/InclusionProof")
    def InclusionProof(
        self, caller: Principal, request: control_pb2.InclusionProofRequest
    ) -> control_pb2.InclusionProofResponse:
        p = self.checkpoints.inclusion_proof(request.seq, request.tree_size)
        return control_pb2.InclusionProofResponse(
            record=p.record,
            leaf_hash=p.leaf.hex(),
            tree_size=p.size,
            root_hash=p.root.hex(),
            proof=[h.hex() for h in p.proof],
        )

    @rpc("/paywarden.v1.Control/ConsistencyProof")
    def ConsistencyProof(
        self, caller: Principal, request: control_pb2.ConsistencyProofRequest
    ) -> control_pb2.ConsistencyProofResponse:
        first, second, proof = self.checkpoints.consistency_proof(request.first, request.second)
        return control_pb2.ConsistencyProofResponse(
            first_root=first.hex(), second_root=second.hex(), proof=[h.hex() for h in proof]
        )

    @rpc("/paywarden.v1.Control/ExplainAgent")
    def ExplainAgent(
        self, caller: Principal, request: control_pb2.ExplainAgentRequest
    ) -> control_pb2.ExplainAgentResponse:
        explanation = self.explain.agent(caller, request.agent_id)
        return control_pb2.ExplainAgentResponse(
            agent_id=explanation.agent_id,
            covered=explanation.power is not None,
            document=document_bytes(explanation).decode("utf-8"),
        )

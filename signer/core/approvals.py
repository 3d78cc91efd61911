"""Approvals: the pending payments a human approver lists, reads and votes on.

An approver never approves a payment that it requested or planned; every vote,
and every refused vote, leaves exactly one audit record.
"""

from __future__ import annotations

import logging

from paywarden.policy.vocabulary import ApprovalStatus, ReservationStatus, Vote
from paywarden.signer.core import audit_events
from paywarden.signer.core.deps import Deps, require, store_call
from paywarden.signer.core.mandate_checks import mandate_gone
from paywarden.signer.core.validation import clean_text
from paywarden.signer.core.views import ApprovalView
from paywarden.signer.errors import (
    Forbidden,
    InvalidInput,
    NotFound,
    PaywardenError,
    Reason,
    SessionNotUsable,
)
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.protocols import ApprovalTx
from paywarden.signer.store.records import InvariantBroken, StoreError

log = logging.getLogger("paywarden.signer")
MAX_NOTE = 1024


class Approvals:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._store = deps.store
        self._metrics = deps.metrics

    def list_pending(self, caller: Principal) -> list[ApprovalView]:
        require(caller, Role.APPROVER)
        now = self._deps.now()
        pending = store_call(lambda: self._store.pending_approvals(now))
        return [self.get_approval(caller, a.id) for a in pending]

    def get_approval(self, caller: Principal, approval_id: str) -> ApprovalView:
        require(caller, Role.APPROVER)
        now = self._deps.now()

        def read() -> ApprovalView:
            with self._store.approval_tx() as tx:
                return self._approval_view(tx, approval_id, now)

        return store_call(read)

    def _approval_view(self, tx: ApprovalTx, approval_id: str, now: int) -> ApprovalView:
        approval = tx.approval(approval_id)
        if approval is None:
            raise NotFound(Reason.APPROVAL_NOT_FOUND, "no such approval")
        decision = tx.decision(approval.decision_id)
        session = tx.session(decision.session_id, now) if decision else None
        if decision is None or session is None:
            raise InvariantBroken(f"approval {approval_id} lost its decision or session")
        state = approval.status
        if (
            state in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)
            and now >= approval.expires_at
        ):
            state = ApprovalStatus.EXPIRED
        amount = str(self._deps.amount(decision.amount_minor, decision.asset))
        return ApprovalView(approval, state, decision, session, amount)

    def vote(self, caller: Principal, approval_id: str, approve: bool, note: str) -> ApprovalView:
        """Every call leaves exactly one audit record: the vote, or its refusal."""
        try:
            return self._vote(caller, approval_id, approve, note)
        except PaywardenError as exc:
            if exc.audit_seq is None:
                self._audit_vote_refusal(caller, approval_id, approve, note, exc)
            raise

    def _audit_vote_refusal(
        self, caller: Principal, approval_id: str, approve: bool, note: str, exc: PaywardenError
    ) -> None:
        """A refused vote (requester, planner, not pending, not found, malformed).

        The approval id and note are as the caller sent them: untrusted, bounded."""
        if exc.reason == Reason.STORE_UNAVAILABLE:
            return  # the store just failed; waiting on it again helps nobody
        refused = audit_events.event(
            "approval.refused",
            caller,
            self._deps.now(),
            vote=Vote.APPROVE if approve else Vote.DENY,
            reason=str(exc.reason),
            message=exc.message,
            untrusted={"approval_id": approval_id[:100], "note": note[:MAX_NOTE]},
        )
        try:
            exc.audit_seq = self._store.audit_event(refused)
        except (StoreError, ValueError, TypeError) as err:
            log.error("cannot audit a refused vote: %s", err)

    def _vote(self, caller: Principal, approval_id: str, approve: bool, note: str) -> ApprovalView:
        require(caller, Role.APPROVER)
        note = clean_text("note", note, max_len=MAX_NOTE, required=False, allow_newlines=True)
        if not approval_id.startswith("apr_") or len(approval_id) > 64:
            raise InvalidInput(Reason.STRING_INVALID, "approval_id is malformed")

        def run() -> ApprovalView:
            with self._store.approval_tx() as tx:
                now = self._deps.now()  # read under the write lock, like every decision
                view = self._approval_view(tx, approval_id, now)
                if view.decision.agent_id == caller.id:
                    raise Forbidden(
                        Reason.APPROVER_IS_REQUESTER, "an approver cannot approve its own request"
                    )
                if view.session.planner_id == caller.id:
                    raise Forbidden(
                        Reason.APPROVER_IS_PLANNER,
                        "an approver cannot approve a payment in a session it opened",
                    )
                if (
                    view.state == ApprovalStatus.EXPIRED
                    and view.approval.status != ApprovalStatus.EXPIRED
                ):
                    tx.set_approval_status(approval_id, ApprovalStatus.EXPIRED, now)
                    tx.set_reservation(view.decision.id, ReservationStatus.RELEASED)
                if view.state != ApprovalStatus.PENDING:
                    raise SessionNotUsable(
                        Reason.APPROVAL_NOT_PENDING, f"the approval is {view.state}"
                    )
                gone = mandate_gone(tx, view.session, now)
                if gone is not None:  # it could never be signed: no vote on it
                    raise SessionNotUsable(*gone)
                vote = Vote.APPROVE if approve else Vote.DENY
                tx.add_vote(approval_id, caller.id, vote, now, note)
                after = tx.approval(approval_id)
                assert after is not None
                if not approve:
                    tx.set_approval_status(approval_id, ApprovalStatus.DENIED, now)
                    tx.set_reservation(view.decision.id, ReservationStatus.RELEASED)
                elif len(after.approved_by) >= after.required:
                    tx.set_approval_status(approval_id, ApprovalStatus.APPROVED, now)
                final = self._approval_view(tx, approval_id, now)
                tx.audit(
                    audit_events.event(
                        "approval.approve" if approve else "approval.deny",
                        caller,
                        now,
                        approval_id=approval_id,
                        decision_id=view.decision.id,
                        note=note or None,
                        state=final.state,
                        approved_by=list(final.approval.approved_by),
                        required=final.approval.required,
                    )
                )
                return final

        view = store_call(run)
        if view.state in (ApprovalStatus.APPROVED, ApprovalStatus.DENIED):
            self._metrics.approval(view.state)
        log.info(
            "approval vote",
            extra={"decision_id": view.decision.id, "approver": caller.id, "state": view.state},
        )
        return view

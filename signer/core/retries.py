"""A request seen before (same agent, nonce and request): how its retry is answered.

A retry is answered from the decision the first call recorded: the same answer,
or what became of it since (an approval given, denied or expired; a session
closed or a payment expired before it was signed).
"""

from __future__ import annotations

from dataclasses import replace

from paywarden.policy.vocabulary import ApprovalStatus, ReservationStatus, SessionState, Verdict
from paywarden.signer.core.mandate_checks import mandate_gone
from paywarden.signer.core.withdrawal import withdraw
from paywarden.signer.core.x402 import signable_until
from paywarden.signer.errors import Reason
from paywarden.signer.store.protocols import PaymentTx
from paywarden.signer.store.records import (
    ApprovalRecord,
    DecisionRecord,
    InvariantBroken,
    SessionRecord,
)


def answer_retry(
    tx: PaymentTx, previous: DecisionRecord, session: SessionRecord, now: int
) -> tuple[DecisionRecord, ApprovalRecord | None, bool, bool]:
    """The same request again: the same answer, or the approval's outcome, and
    whether this retry changes state (releases, expires or spends a reservation
    or an approval, or goes on to be signed).

    A decision that was allowed but never signed (the HSM failed) is signed
    on retry only while its session is open, its payload unexpired and the session's
    mandate (if any) neither revoked nor expired; otherwise its reservation is
    released and the retry is denied.
    """
    if previous.outcome == Verdict.DENY or previous.jws is not None:
        return previous, None, True, False
    approval = None
    if previous.outcome == Verdict.NEEDS_APPROVAL:
        approval = tx.approval_for_decision(previous.id)
        if approval is None:
            raise InvariantBroken(f"pending decision {previous.id} has no approval")
        if approval.status == ApprovalStatus.DENIED:
            # Who denied it and why are for humans (approvers' views, the vote's
            # audit record): neither goes into the answer, even before redaction.
            reason, message = Reason.APPROVAL_DENIED, "an approver denied it"
            return _denied(previous, reason, message), approval, True, False
    held = approval is not None
    refusal = _unsignable(session, previous, now, held=held) or mandate_gone(tx, session, now)
    if approval is not None and approval.status == ApprovalStatus.EXPIRED:
        refusal = refusal or (Reason.APPROVAL_EXPIRED, "approval expired")
        return _denied(previous, *refusal), approval, True, False
    if refusal is not None:
        # closed or expired session, or the payment's exp passed: never signable again
        approval, changed = withdraw(tx, previous.id, approval, now)
        return _denied(previous, *refusal), approval, True, changed
    if approval is not None and approval.status == ApprovalStatus.PENDING:
        return previous, approval, True, False
    tx.set_reservation(previous.id, ReservationStatus.SPENT)  # an approved hold becomes spend
    return previous, approval, True, True  # and is signed now


def _unsignable(
    session: SessionRecord, decision: DecisionRecord, now: int, *, held: bool
) -> tuple[Reason, str] | None:
    """Why a recorded, unsigned decision can no longer be signed (or None)."""
    state = session.state(now)
    if state == SessionState.CLOSED:
        return Reason.SESSION_CLOSED, "the session was closed before the payment was signed"
    if state == SessionState.EXPIRED:
        return Reason.SESSION_EXPIRED, "the session expired before the payment was signed"
    if now >= decision.expires_at:
        if held:
            return Reason.APPROVAL_EXPIRED, "approval expired with the payment"
        return Reason.EXPIRY_IN_PAST, "the payment expired before it was signed"
    if now >= signable_until(decision):  # an x402 authorisation's window closed
        if held:
            return Reason.APPROVAL_EXPIRED, "approval expired with the authorisation's window"
        return Reason.PAYMENT_WITHDRAWN, "the authorisation's window closed before it was signed"
    return None


def _denied(record: DecisionRecord, reason: Reason, message: str) -> DecisionRecord:
    return replace(record, outcome=Verdict.DENY, reason=reason, message=message)

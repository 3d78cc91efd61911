"""The records a new decision writes: the decision itself, and what an allowed one
reserves (its spend) or a held one waits on (its approval)."""

from __future__ import annotations

from paywarden.policy import Decision, Verdict
from paywarden.policy.vocabulary import ApprovalStatus, ReservationStatus
from paywarden.signer.core.payments import Intent
from paywarden.signer.core.x402 import signable_until
from paywarden.signer.identity import Principal
from paywarden.signer.store.records import (
    ApprovalRecord,
    DecisionRecord,
    PackRef,
    Reservation,
    SessionRecord,
)


def new_record(
    decision_id: str,
    now: int,
    caller: Principal,
    intent: Intent,
    request_hash: str,
    decision: Decision,
    payload: bytes | None,
) -> DecisionRecord:
    return DecisionRecord(
        id=decision_id,
        created_at=now,
        agent_id=caller.id,
        session_id=intent.session_id,
        nonce=intent.nonce,
        request_hash=request_hash,
        outcome=decision.verdict,
        reason=decision.reason,
        message=decision.message,
        key_id=intent.key_id,
        asset=intent.asset,
        amount_minor=intent.amount.minor,
        payload=payload,
        trace=decision.trace,
        purpose=intent.purpose,
        pack=PackRef.of(decision.pack),
        payee=intent.payee,
        expires_at=intent.expires_at,
    )


def holds(
    record: DecisionRecord, session: SessionRecord, payee_key: str, decision: Decision
) -> tuple[Reservation | None, ApprovalRecord | None]:
    """What an allowed decision reserves (spent), or a held one (held, with its
    pending approval); a denial reserves nothing."""
    if decision.verdict is Verdict.DENY:
        return None, None
    held = decision.verdict is Verdict.NEEDS_APPROVAL
    ends = signable_until(record)  # an x402 authorisation's window may close first
    reservation = Reservation(
        decision_id=record.id,
        agent_id=record.agent_id,
        session_id=session.id,
        asset=record.asset,
        payee_key=payee_key,
        amount_minor=record.amount_minor,
        created_at=record.created_at,
        expires_at=ends,
        status=ReservationStatus.HELD if held else ReservationStatus.SPENT,
        plan_line=decision.plan_line,
        mandate_id=session.mandate_id,
    )
    approval = None
    if held:
        approval = ApprovalRecord(
            id="apr_" + record.id[4:],
            decision_id=record.id,
            required=decision.approvers,
            status=ApprovalStatus.PENDING,
            created_at=record.created_at,
            expires_at=ends,
        )
    return reservation, approval

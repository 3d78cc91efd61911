"""Attaching a signature: the HSM's signature is kept only while the payment is still
committed.

Between the decision's commit and the signature's, the planner may close the
session, the payment may expire or be withdrawn, an approver's approval may lapse,
and an operator may freeze signing. The signature is kept only if none of that
happened by the time the write lock is held; otherwise it is thrown away and the
caller is told the payment was withdrawn. The rule lives here, over the store's
primitives (:class:`~paywarden.signer.store.protocols.SignatureTx`), so that every
backend keeps it the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from paywarden.policy.vocabulary import ApprovalStatus, ReservationStatus, Verdict
from paywarden.signer.store.protocols import PaymentStore, SignatureTx
from paywarden.signer.store.records import DecisionRecord


def still_committed(tx: SignatureTx, decision: DecisionRecord, now: int) -> bool:
    """May ``decision``'s signature be kept at ``now``? Only for an unsigned payment
    with a payload, allowed or approved, whose spend is still reserved and unexpired
    (an expired unsigned payment's spend has lapsed already and may be in use by
    another), and nothing frozen over its agent, session or key: the kill switch wins
    over a signature made after it was set."""
    if decision.jws is not None or decision.payload is None:
        return False
    if decision.outcome is Verdict.NEEDS_APPROVAL:
        approval = tx.approval_for_decision(decision.id)
        if approval is None or approval.status is not ApprovalStatus.APPROVED:
            return False
    elif decision.outcome is not Verdict.ALLOW:
        return False
    reservation = tx.reservation(decision.id)
    if reservation is None or reservation.status is not ReservationStatus.SPENT:
        return False
    if reservation.expires_at <= now:
        return False
    return tx.frozen(decision.agent_id, decision.session_id, decision.key_id) is None


def attach_signature(
    store: PaymentStore,
    decision_id: str,
    jws: str,
    clock: Callable[[], int],
    wait: float | None = None,
    check: Callable[[], None] | None = None,
) -> tuple[str, bool] | None:
    """Stores the JWS of a still-committed decision unless one is stored; returns (the
    stored JWS, whether this call stored it), or None when the payment was withdrawn
    or frozen meanwhile (nothing stored). ``clock`` is read once the transaction holds
    the write lock: an expiry that passed while the call waited for it counts.
    ``wait`` and ``check`` are :meth:`PaymentStore.signature_tx`'s."""
    with store.signature_tx(wait, check) as tx:
        now = clock()  # not before the wait: the spend may have lapsed meanwhile
        decision = tx.decision(decision_id)
        if decision is None:
            return None
        if decision.jws is not None:
            return decision.jws, False
        if not still_committed(tx, decision, now):
            return None
        tx.set_signature(decision_id, jws)
        return jws, True

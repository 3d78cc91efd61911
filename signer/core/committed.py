"""Attaching a signature: the HSM's signature is kept only while the payment is still
committed.

The signature is made and attached inside the Sign decision's transaction (one
commit holds the decision, its spend, its audit record and its signature), so that
nothing can close the session, withdraw the payment or freeze signing between the
decision and its signature. Time still moves while the HSM signs: a payment whose
expiry passed meanwhile, or a retry that completes an earlier decision, is judged
again here at the time it is attached. The rule lives here, over the store's
primitives (:class:`~paywarden.signer.store.protocols.SignatureTx`), so that every
backend keeps it the same way.
"""

from __future__ import annotations

from paywarden.policy.vocabulary import ApprovalStatus, ReservationStatus, Verdict
from paywarden.signer.store.protocols import SignatureTx
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
    tx: SignatureTx, decision_id: str, jws: str, now: int
) -> tuple[str, bool] | None:
    """Stores the JWS of a decision still committed at ``now`` unless one is stored, in
    the caller's transaction; returns (the stored JWS, whether this call stored it), or
    None when the payment was withdrawn or frozen (nothing stored)."""
    decision = tx.decision(decision_id)
    if decision is None:
        return None
    if decision.jws is not None:
        return decision.jws, False
    if not still_committed(tx, decision, now):
        return None
    tx.set_signature(decision_id, jws)
    return jws, True


def new_decision_signable(decision: DecisionRecord, now: int) -> bool:
    """May a decision being recorded in this very transaction carry the signature the
    HSM just made? Nothing can have closed its session, released its spend or frozen
    its scope since it was decided (the transaction holds the write lock and checked
    the freezes), so only time is judged again: not if its expiry passed while the
    HSM signed."""
    return decision.expires_at > now

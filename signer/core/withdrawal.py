"""Withdrawing unsigned decisions: what can never be signed gives up what it holds.

A decision recorded but not signed (held for approval, approved, or allowed while
the HSM failed) holds spend and perhaps an approval. Once it can never be signed
(its session closed, or a retry found it unsignable), its approval expires and its
reservation is released. The rule lives here, over the store's primitives, so that
every backend keeps it the same way; a signed decision is never withdrawn (the store
releases no signed reservation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from paywarden.policy.vocabulary import ApprovalStatus, ReservationStatus
from paywarden.signer.store.protocols import SessionStore, SessionTx
from paywarden.signer.store.records import ApprovalRecord, SessionRecord

# An approval still open to a vote or to a signature: withdrawing expires it.
_WITHDRAWABLE = (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)


class Withdrawing(Protocol):
    """What withdrawing one decision writes, in the caller's transaction."""

    def set_approval_status(self, approval_id: str, status: ApprovalStatus, now: int) -> None: ...

    def set_reservation(self, decision_id: str, status: ReservationStatus) -> bool: ...


def withdraw(
    tx: Withdrawing, decision_id: str, approval: ApprovalRecord | None, now: int
) -> tuple[ApprovalRecord | None, bool]:
    """Withdraws one unsigned decision: its approval (``approval``, pending or approved)
    expires and its reservation is released. Returns the approval as it stands now and
    whether this changed anything."""
    changed = False
    if approval is not None and approval.status in _WITHDRAWABLE:
        tx.set_approval_status(approval.id, ApprovalStatus.EXPIRED, now)
        approval = replace(approval, status=ApprovalStatus.EXPIRED)
        changed = True
    changed = tx.set_reservation(decision_id, ReservationStatus.RELEASED) or changed
    return approval, changed


def withdraw_unsigned(tx: SessionTx, session_id: str, now: int) -> list[str]:
    """Withdraws every unsigned decision of the session that still holds something;
    returns their ids (none the second time)."""
    withdrawn = []
    for decision_id in tx.unsigned_decisions(session_id):
        _, changed = withdraw(tx, decision_id, tx.approval_for_decision(decision_id), now)
        if changed:
            withdrawn.append(decision_id)
    return withdrawn


def close_session(
    store: SessionStore, session_id: str, now: int, audit: Mapping[str, Any]
) -> SessionRecord | None:
    """Closes an open session in one transaction: nothing unsigned in it can ever be
    signed, so its unsigned decisions are withdrawn, and ``audit`` is appended. Closing
    a closed session changes nothing and logs nothing. Returns the session as it
    stands, or None if it is unknown."""
    with store.session_tx() as tx:
        if tx.mark_closed(session_id, now):
            withdraw_unsigned(tx, session_id, now)
            tx.audit(audit)
        return tx.session(session_id, now)

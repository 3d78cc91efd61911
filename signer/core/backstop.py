"""The budget backstop: a reservation never takes a session past its budget, nor its
mandate past the mandate's budget or uses.

The policy already said yes on the facts of the very transaction that records the
decision, so this check failing means a bug (or the store edited behind the
signer's back), not a refusal: it raises :class:`InvariantBroken` and the whole
transaction is undone. It runs over the store's reads in the caller's transaction,
so every backend keeps it the same way.
"""

from __future__ import annotations

from typing import Protocol

from paywarden.signer.store.mandate_protocols import MandateTx
from paywarden.signer.store.records import InvariantBroken, Reservation


class BudgetReads(Protocol):
    def budget(self, session_id: str, asset: str) -> int | None: ...

    def live_spend(self, session_id: str, asset: str, now: int) -> int: ...


def check_budget(tx: BudgetReads, reservation: Reservation) -> None:
    """Raises :class:`InvariantBroken` unless ``reservation`` fits in what is left of
    its session's budget at the reservation's own time."""
    r = reservation
    budget = tx.budget(r.session_id, r.asset)
    if budget is None:
        raise InvariantBroken(f"session {r.session_id} has no budget in {r.asset}")
    if tx.live_spend(r.session_id, r.asset, r.created_at) + r.amount_minor > budget:
        raise InvariantBroken("spend would exceed the session budget")


def check_mandate(tx: MandateTx, reservation: Reservation) -> None:
    """Raises :class:`InvariantBroken` unless ``reservation`` fits in what is left of its
    mandate's budget and uses (nothing for a session without a mandate): the ``mandate``
    rule said yes on the same transaction's reads, so failing here is a bug."""
    r = reservation
    if r.mandate_id is None:
        return
    found = tx.mandate(r.mandate_id, r.created_at)
    if found is None:
        raise InvariantBroken(f"mandate {r.mandate_id} is not stored")
    mandate, use = found
    if use.spent_minor + r.amount_minor > mandate.budget_minor:
        raise InvariantBroken("spend would exceed the mandate's budget")
    if mandate.max_uses is not None and use.uses >= mandate.max_uses:
        raise InvariantBroken("a payment past the mandate's uses")

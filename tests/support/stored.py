"""Store-level helpers shared by the store's tests."""

from __future__ import annotations

from paywarden.signer.core.committed import attach_signature
from paywarden.signer.store.sqlite import SqlStore


def attach(store: SqlStore, decision_id: str, jws: str, now: int) -> tuple[str, bool] | None:
    """Attaches a signature in a transaction of its own, as Sign does in its decision's."""
    with store.payment_tx() as tx:
        return attach_signature(tx, decision_id, jws, now)

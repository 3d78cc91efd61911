"""A mandate's settled ledger: what :func:`.sqlite_facts.settle` adds to the mandates
row (migration 15, :mod:`.mandate_schema`) when a reservation of a session opened from
the mandate is both spent and signed, in that same transaction. The open part (neither
signed nor released) is read by :mod:`.sqlite_mandates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from paywarden.signer.store.records import InvariantBroken
from paywarden.signer.store.sql import Conn

# What settle's ``UPDATE reservations … RETURNING`` adds for the mandate: its id, and
# its row's asset and settled spend (both NULL when the mandate row is missing).
_ROW = "FROM mandates m WHERE m.id = reservations.mandate_id"
RETURNING = f"mandate_id, (SELECT m.asset {_ROW}), (SELECT m.spent_minor {_ROW})"


def settle(conn: Conn, returned: Sequence[Any], asset: str, amount: int, at: int) -> None:
    """Adds one signed payment (``amount`` of ``asset``, made at ``at``) to its mandate's
    row: its spend, one use, and its time if it is the newest. ``returned``: the
    :data:`RETURNING` values; nothing when the reservation has no mandate."""
    mandate_id, mandate_asset, spent = returned
    if mandate_id is None:
        return
    if spent is None:
        raise InvariantBroken(f"a signed payment of mandate {mandate_id}, which is not stored")
    if mandate_asset != asset:
        raise InvariantBroken(
            f"a signed payment in {asset} against mandate {mandate_id}, which is in {mandate_asset}"
        )
    conn.execute(
        "UPDATE mandates SET spent_minor = ?, uses = uses + 1, last_use_at = CASE"
        " WHEN last_use_at IS NULL OR last_use_at < ? THEN ? ELSE last_use_at END WHERE id = ?",
        (str(int(spent) + amount), at, at, mandate_id),
    )

"""A session's facts at a cost that does not grow with the history: its signed part
from its aggregates (``session_budgets.spent_minor``, ``session_payees``, kept by
:func:`.sqlite_facts.settle`), its open part from its unsigned reservations through
the partial index ``reservations_open_session`` (see :mod:`.sqlite_facts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite_facts import OPEN


@dataclass(slots=True)
class SessionUsage:
    """A session's open (unsigned, live) reservations, summed."""

    spent_minor: dict[str, int] = field(default_factory=dict)
    payees: set[str] = field(default_factory=set)
    plan_used: dict[int, int] = field(default_factory=dict)


def open_session_usage(conn: Conn, session_id: str, now: int) -> SessionUsage:
    usage = SessionUsage()
    for asset, amount, payee, line in conn.execute(
        "SELECT asset, amount_minor, payee_key, plan_line FROM reservations"  # noqa: S608
        f" INDEXED BY reservations_open_session WHERE session_id = ? AND expires_at > ?"
        f" AND {OPEN}",
        (session_id, now),
    ):
        usage.spent_minor[asset] = usage.spent_minor.get(asset, 0) + int(amount)
        usage.payees.add(payee)
        if line is not None:
            usage.plan_used[line] = usage.plan_used.get(line, 0) + 1
    return usage


def settled_session_payee(conn: Conn, session_id: str, payee_key: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM session_payees WHERE session_id = ? AND payee_key = ?",
        (session_id, payee_key),
    ).fetchone()
    return row is not None


def session_payees(conn: Conn, session_id: str, settled: int, held: set[str]) -> int:
    """Distinct payees of the session: ``settled`` signed ones and the ``held`` (open
    ones') that are not among them."""
    return settled + sum(1 for p in held if not settled_session_payee(conn, session_id, p))


def payee_in_session(conn: Conn, session_id: str, payee_key: str, now: int) -> bool:
    if settled_session_payee(conn, session_id, payee_key):
        return True
    row = conn.execute(
        "SELECT 1 FROM reservations INDEXED BY reservations_open_session"  # noqa: S608
        f" WHERE session_id = ? AND expires_at > ? AND {OPEN} AND payee_key = ? LIMIT 1",
        (session_id, now, payee_key),
    ).fetchone()
    return row is not None


def live_spend(conn: Conn, session_id: str, asset: str, now: int) -> int:
    """The session's settled spend in ``asset`` plus its open reservations', in one
    statement (both are decimal TEXT, summed here)."""
    return sum(
        int(amount)
        for (amount,) in conn.execute(
            "SELECT spent_minor FROM session_budgets WHERE session_id = ? AND asset = ?"  # noqa: S608
            " UNION ALL SELECT amount_minor FROM reservations"
            f" INDEXED BY reservations_open_session WHERE session_id = ? AND expires_at > ?"
            f" AND {OPEN} AND asset = ?",
            (session_id, asset, session_id, now, asset),
        )
    )

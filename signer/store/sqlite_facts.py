"""The facts a decision reads, at a cost that does not grow with the history.

A reservation counts while it is not released and not past its expiry, and for ever
once signed (:data:`~paywarden.signer.store.sqlite_reads.LIVE`). Every fact is split
in two:

- *settled*: signed reservations. They never change again, so their sums are kept
  in aggregate tables, updated by :func:`settle` in the transaction that signs them:
  cumulative spend per agent and asset and cumulative payment counts per agent, each
  keyed by the second of ``created_at`` (the sum over ``(since, now]`` is two
  lookups), the agent's payees with the first and last time each was paid, and per
  session its spend per asset (``session_budgets.spent_minor``), its payees and its
  plan lines' use. Decisions (every outcome counts for the breaker) are counted the
  same way as they are recorded (:func:`count_decision`).
- *open*: unsigned reservations not released. They are read row by row through
  partial indexes that hold only them, limited to ``expires_at > now`` (or, for
  the breaker, ``created_at > since``): an unsigned reservation expires at most the
  configured maximum expiry after it was made, so these are young rows only.

Amounts are decimal TEXT (they may exceed 64 bits): sums are made in Python.
Every query here is an index SEARCH (``tests/test_aggregates.py`` checks the plans).
"""

from __future__ import annotations

from typing import Any

from paywarden.policy.vocabulary import ReservationStatus, Verdict
from paywarden.signer.store import mandate_facts
from paywarden.signer.store.records import AgentUsage, InvariantBroken, WindowStats
from paywarden.signer.store.sql import Conn

DAY = 86_400

# The partial indexes' condition, spelt as in their DDL (SQLite uses a partial
# index only for a query whose WHERE clause contains it verbatim).
OPEN = "signed = 0 AND status != 'released'"


# -- writes: settling a signed reservation, counting a decision ----------------------------


def settle(conn: Conn, decision_id: str, *, mandates: bool = True) -> None:
    """Moves a reservation into the aggregates once it is both spent and signed (in
    either order); nothing if it is not, or was settled already. ``mandates``: False
    in a migration before mandates were kept (version 15)."""
    # Marked signed, returning with it the rows it adds to: its session's spend, the
    # agent's newest spend and payments rows and its mandate's ledger (one statement;
    # RETURNING: SQLite 3.35).
    r = "reservations"
    latest = f"FROM agent_spend s WHERE s.agent_id = {r}.agent_id AND s.asset = {r}.asset"
    paid = f"FROM agent_payments p WHERE p.agent_id = {r}.agent_id ORDER BY p.at DESC LIMIT 1"
    mandate = mandate_facts.RETURNING if mandates else "NULL, NULL, NULL"
    rows = conn.execute(
        "UPDATE reservations SET signed = 1 WHERE decision_id = ? AND signed = 0"  # noqa: S608 - constant text
        " AND status = 'spent' AND (SELECT jws FROM decisions WHERE id = ?) IS NOT NULL"
        " RETURNING agent_id, session_id, asset, payee_key, amount_minor, created_at, plan_line,"
        f" (SELECT b.spent_minor FROM session_budgets b WHERE b.session_id = {r}.session_id"
        f" AND b.asset = {r}.asset), (SELECT s.at {latest} ORDER BY s.at DESC LIMIT 1),"
        f" (SELECT s.total {latest} ORDER BY s.at DESC LIMIT 1),"
        f" (SELECT p.at {paid}), (SELECT p.total {paid}), {mandate}",
        (decision_id, decision_id),
    ).fetchall()
    if not rows:
        return
    agent_id, session_id, asset, payee_key, amount_text, at, plan_line, spent = rows[0][:8]
    newest, mandate = rows[0][8:12], rows[0][12:]
    amount = int(amount_text)
    mandate_facts.settle(conn, mandate, asset, amount, at)
    _add_spend(conn, agent_id, asset, at, amount, None if newest[0] is None else newest[:2])
    _add_counts(conn, "agent_payments", ("total",), agent_id, at, (1,), newest[2:])
    conn.execute(
        "INSERT INTO agent_payees (agent_id, payee_key, first_at, last_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (agent_id, payee_key) DO UPDATE SET"
        " first_at = CASE WHEN excluded.first_at < agent_payees.first_at"
        " THEN excluded.first_at ELSE agent_payees.first_at END,"
        " last_at = CASE WHEN excluded.last_at > agent_payees.last_at"
        " THEN excluded.last_at ELSE agent_payees.last_at END",
        (agent_id, payee_key, at, at),
    )
    if spent is None:
        raise InvariantBroken(f"a signed payment in {asset}, which its session has no budget in")
    conn.execute(
        "UPDATE session_budgets SET spent_minor = ? WHERE session_id = ? AND asset = ?",
        (str(int(spent) + amount), session_id, asset),
    )
    added = conn.execute(
        "INSERT INTO session_payees (session_id, payee_key) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (session_id, payee_key),
    ).rowcount
    if added:
        conn.execute(
            "UPDATE sessions SET signed_payees = signed_payees + 1 WHERE id = ?", (session_id,)
        )
    if plan_line is not None:
        conn.execute(
            "UPDATE plan_lines SET signed_used = signed_used + 1 WHERE session_id = ? AND idx = ?",
            (session_id, plan_line),
        )


def count_decision(conn: Conn, agent_id: str, at: int, outcome: str) -> None:
    """Counts a recorded decision (and a denial) for the breaker's window."""
    newest = conn.execute(
        "SELECT at, decisions, denials FROM agent_decisions WHERE agent_id = ?"
        " ORDER BY at DESC LIMIT 1",
        (agent_id,),
    ).fetchone()
    deltas = (1, 1 if outcome == Verdict.DENY else 0)
    columns = ("decisions", "denials")
    _add_counts(conn, "agent_decisions", columns, agent_id, at, deltas, newest or [None])


def _add_spend(
    conn: Conn, agent_id: str, asset: str, at: int, amount: int, latest: list[Any] | None
) -> None:
    # The row at ``at`` starts from the total before it; it and every later row grow
    # by ``amount``. Later rows exist only when a payment is signed after others made
    # after it (an approval): at most the maximum expiry's seconds of them. ``latest``:
    # the agent's newest row in ``asset`` (at, total), None if it has none.
    if latest is None or latest[0] <= at:  # the usual case: the newest row
        total = int(latest[1]) if latest is not None else 0
        conn.execute(
            "INSERT INTO agent_spend (agent_id, asset, at, total) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (agent_id, asset, at) DO UPDATE SET total = excluded.total",
            (agent_id, asset, at, str(total + amount)),
        )
        return
    conn.execute(
        "INSERT INTO agent_spend (agent_id, asset, at, total) VALUES (?, ?, ?,"
        " COALESCE((SELECT total FROM agent_spend WHERE agent_id = ? AND asset = ? AND at < ?"
        " ORDER BY at DESC LIMIT 1), '0')) ON CONFLICT DO NOTHING",
        (agent_id, asset, at, agent_id, asset, at),
    )
    later = conn.execute(
        "SELECT at, total FROM agent_spend WHERE agent_id = ? AND asset = ? AND at >= ?",
        (agent_id, asset, at),
    ).fetchall()
    conn.executemany(
        "UPDATE agent_spend SET total = ? WHERE agent_id = ? AND asset = ? AND at = ?",
        [(str(int(total) + amount), agent_id, asset, t) for t, total in later],
    )


def _add_counts(
    conn: Conn,
    table: str,
    columns: tuple[str, ...],
    agent_id: str,
    at: int,
    deltas: tuple[int, ...],
    latest: list[Any],
) -> None:
    # As _add_spend, for integer counts (``table``, ``columns``: constants; no row: [None]).
    names = ", ".join(columns)
    if latest[0] is None or latest[0] <= at:  # the usual case: the newest row
        before = latest[1:] if latest[0] is not None else (0,) * len(columns)
        conn.execute(
            f"INSERT INTO {table} (agent_id, at, {names})"  # noqa: S608
            f" VALUES (?, ?{', ?' * len(columns)}) ON CONFLICT (agent_id, at) DO UPDATE SET"
            f" {', '.join(f'{c} = excluded.{c}' for c in columns)}",
            (agent_id, at, *(int(b) + d for b, d in zip(before, deltas, strict=True))),
        )
        return
    before = conn.execute(
        f"SELECT {names} FROM {table} WHERE agent_id = ? AND at < ?"  # noqa: S608
        " ORDER BY at DESC LIMIT 1",
        (agent_id, at),
    ).fetchone()
    conn.execute(
        f"INSERT INTO {table} (agent_id, at, {names})"  # noqa: S608
        f" VALUES (?, ?{', ?' * len(columns)}) ON CONFLICT DO NOTHING",
        (agent_id, at, *(before or (0,) * len(columns))),
    )
    conn.execute(
        f"UPDATE {table} SET {', '.join(f'{c} = {c} + ?' for c in columns)}"  # noqa: S608
        " WHERE agent_id = ? AND at >= ?",
        (*deltas, agent_id, at),
    )


# -- reads -------------------------------------------------------------------------------------
#
# A decision's single-row reads are made together, ``SELECT (SELECT …), (SELECT …), …``
# (on PostgreSQL every statement is a round trip under the write lock): each a scalar
# subquery and its parameters (:data:`Part`), read by :func:`_read`.

Part = tuple[str, tuple[str | int, ...]]


def _read(conn: Conn, parts: list[Part]) -> tuple[Any, ...]:
    """The values of ``parts``, in their order, read in one statement."""
    params: list[str | int] = []
    for _, p in parts:
        params += p
    row = conn.execute("SELECT " + ", ".join(sql for sql, _ in parts), params).fetchone()
    return tuple(row)


def _spend_parts(agent_id: str, asset: str, *after: int) -> list[Part]:
    """The settled spend total of the agent in ``asset``, and that before each of
    ``after`` (see :func:`_since`)."""
    where = "FROM agent_spend WHERE agent_id = ? AND asset = ?"
    return [(f"(SELECT total {where} ORDER BY at DESC LIMIT 1)", (agent_id, asset))] + [
        (f"(SELECT total {where} AND at <= ? ORDER BY at DESC LIMIT 1)", (agent_id, asset, t))
        for t in after
    ]


def _count_parts(table: str, column: str, agent_id: str, after: int) -> list[Part]:
    """A settled count's total for the agent and that before ``after``; ``table`` and
    ``column`` are constants."""
    where = f"FROM {table} WHERE agent_id = ?"
    return [
        (f"(SELECT {column} {where} ORDER BY at DESC LIMIT 1)", (agent_id,)),
        (f"(SELECT {column} {where} AND at <= ? ORDER BY at DESC LIMIT 1)", (agent_id, after)),
    ]


def _since(total: Any, *before: Any) -> list[int]:
    """What was added after each point, from a cumulative total and its value before."""
    return [int(total or 0) - int(b or 0) for b in before]


def _payee_parts(agent_id: str, payee_key: str, since: int) -> list[Part]:
    """How many payees the agent's settled payments created at or after ``since`` went
    to, and when its latest signed payment to ``payee_key`` was made (None: never).
    Costs the number of payees paid since then, not the history."""
    where = "FROM agent_payees WHERE agent_id = ?"
    return [
        (f"(SELECT COUNT(*) {where} AND last_at >= ?)", (agent_id, since)),
        (f"(SELECT last_at {where} AND payee_key = ?)", (agent_id, payee_key)),
    ]


# The first asset after ``?`` the agent has settled spend in: one index step.
_NEXT_ASSET = "(SELECT MIN(asset) FROM agent_spend WHERE agent_id = ? AND asset > ?)"
# When the agent (the second ``?``) last paid an open reservation's payee in a settled
# payment, for the rows created at or after the first ``?``.
_HELD_LAST_PAID = (
    "CASE WHEN reservations.created_at >= ? THEN (SELECT last_at FROM agent_payees"
    " WHERE agent_payees.agent_id = ? AND agent_payees.payee_key = reservations.payee_key) END"
)


def _payees(
    settled: Any, last: Any, payee_key: str, since: int, held: dict[str, Any]
) -> tuple[int, bool]:
    """Distinct payees paid since ``since``: ``settled`` signed ones (``last``: when
    ``payee_key`` was last paid) and the ``held`` (open ones', each with when it was
    last paid) not among them; and whether ``payee_key`` is one of them."""
    extra = sum(1 for t in held.values() if t is None or t < since)
    return int(settled) + extra, payee_key in held or (last is not None and last >= since)


def agent_usage(
    conn: Conn,
    agent_id: str,
    asset: str,
    payee_key: str,
    now: int,
    day_start: int,
    window_seconds: int,
) -> AgentUsage:
    total, rolling_before, today_before, paid, paid_before_window, settled, last = _read(
        conn,
        _spend_parts(agent_id, asset, now - DAY, day_start - 1)
        + _count_parts("agent_payments", "total", agent_id, now - window_seconds)
        + _payee_parts(agent_id, payee_key, day_start),
    )
    rolling, today = _since(total, rolling_before, today_before)
    (in_window,) = _since(paid, paid_before_window)
    paid_before = last is not None
    held_today: dict[str, Any] = {}
    for a, amount, payee, at, status, last_paid in conn.execute(
        f"SELECT asset, amount_minor, payee_key, created_at, status, {_HELD_LAST_PAID}"  # noqa: S608
        f" FROM reservations INDEXED BY reservations_open_agent"
        f" WHERE agent_id = ? AND expires_at > ? AND {OPEN}",
        (day_start, agent_id, agent_id, now),
    ):
        if a == asset and at > now - DAY:
            rolling += int(amount)
        if a == asset and at >= day_start:
            today += int(amount)
        if at > now - window_seconds:
            in_window += 1
        if at >= day_start:
            held_today[payee] = last_paid
        if payee == payee_key and status == ReservationStatus.SPENT:
            paid_before = True
    payees_today, seen_today = _payees(settled, last, payee_key, day_start, held_today)
    return AgentUsage(rolling, today, in_window, paid_before, payees_today, seen_today)


def window_stats(
    conn: Conn, agent_id: str, since: int, payee_key: str, *, after_reset: bool = False
) -> WindowStats:
    """Reservations not released and decisions created after ``since`` (with
    ``after_reset``: or after the agent's last reset by an operator's unfreeze,
    whichever is later)."""
    first: list[Part] = [(_NEXT_ASSET, (agent_id, ""))]
    if after_reset:
        first.append(("(SELECT at FROM breaker_resets WHERE agent_id = ?)", (agent_id,)))
    asset, *reset = _read(conn, first)
    if reset and reset[0] is not None:
        since = max(since, int(str(reset[0])))
    # The counts, the payees, and each asset's spend with the next asset, one asset a statement.
    parts = (
        _count_parts("agent_decisions", "decisions", agent_id, since)
        + _count_parts("agent_decisions", "denials", agent_id, since)
        + _payee_parts(agent_id, payee_key, since + 1)
    )
    spend: dict[str, int] = {}
    values = None
    while asset is not None:
        a = str(asset)
        got = _read(conn, parts + _spend_parts(agent_id, a, since) + [(_NEXT_ASSET, (agent_id, a))])
        values = values or got[: len(parts)]
        spend[a] = _since(*got[len(parts) : len(parts) + 2])[0]
        asset = got[-1]
        parts = []
    if values is None:
        values = _read(conn, parts)
    d_total, d_before, n_total, n_before, settled, last = values
    held: dict[str, Any] = {}
    for asset, amount, payee, last_paid in conn.execute(
        f"SELECT asset, amount_minor, payee_key, {_HELD_LAST_PAID}"  # noqa: S608
        f" FROM reservations INDEXED BY reservations_open_agent_made"
        f" WHERE agent_id = ? AND created_at > ? AND {OPEN}",
        (since, agent_id, agent_id, since),
    ):
        spend[asset] = spend.get(asset, 0) + int(amount)
        held[payee] = last_paid
    payees, seen = _payees(settled, last, payee_key, since + 1, held)
    return WindowStats(
        decisions=_since(d_total, d_before)[0],
        denials=_since(n_total, n_before)[0],
        spend_minor={a: v for a, v in spend.items() if v},
        payees=payees,
        payee_seen=seen,
    )

"""The store's facts come from maintained aggregates (signer/store/sqlite_facts.py):
they must equal a full recomputation over the recorded history with the rule of what
counts (a reservation counts while not released and not past its expiry, and for ever
once signed), and no read on the signing path may scan the history."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paywarden.policy.vocabulary import (
    FreezeScope,
    FreezeSource,
    Phase,
    PlanLine,
    ReservationStatus,
    Verdict,
)
from paywarden.signer.store import schema, sqlite_facts, sqlite_reads, sqlite_session_facts
from paywarden.signer.store.records import (
    DecisionRecord,
    Freeze,
    Reservation,
    SessionRecord,
    WindowStats,
)
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite import SqliteStore, SqlStore

from tests.support.backends import Stores

# The tests that take ``stores`` run on SQLite and on PostgreSQL; the query plans and
# the version-7 backfill are SQLite's.
pytestmark = pytest.mark.both_backends

DAY = 86_400
START = 1_750_000_000 - 1_750_000_000 % DAY - 3_600  # an hour before a UTC midnight
MAX_EXPIRY = 600
AGENTS = ("agent-1", "agent-2")
ASSETS = {"USD": 2, "ETH": 18}
PAYEES = ("alpha", "bravo", "charlie", "delta")
EVENT = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}
AGGREGATES = (
    "agent_spend",
    "agent_payments",
    "agent_decisions",
    "agent_payees",
    "session_payees",
)


def _sid(agent: str, n: int) -> str:
    return f"ses_{agent}_{n}"


SESSIONS = tuple(_sid(a, n) for a in AGENTS for n in range(2))


@dataclass
class Held:
    """The test's own record of one reservation."""

    r: Reservation
    status: ReservationStatus
    signed: bool = False

    def live(self, now: int) -> bool:
        if self.status is ReservationStatus.RELEASED:
            return False
        signed_spend = self.signed and self.status is ReservationStatus.SPENT
        return self.r.expires_at > now or signed_spend


@dataclass
class History:
    store: SqlStore
    now: int = START
    n: int = 0
    reset: dict[str, int] | None = None
    decisions: list[tuple[str, int, Verdict]] | None = None
    held: list[Held] | None = None

    def __post_init__(self) -> None:
        self.reset, self.decisions, self.held = {}, [], []


def _open_sessions(store: SqlStore) -> None:
    for sid in SESSIONS:
        agent = sid.removeprefix("ses_").rsplit("_", 1)[0]
        store.create_session(
            SessionRecord(
                id=sid,
                agent_id=agent,
                planner_id="planner-1",
                task_digest="0" * 64,
                created_at=START,
                expires_at=START + 30 * DAY,
                closed_at=None,
                budgets_minor={"USD": 10**30, "ETH": 10**30},
                spent_minor={},
                phase=Phase.EXPLORE,
            ),
            ASSETS,
            EVENT,
        )
        lines = tuple(PlanLine(p, p, "USD", 10**30, 1_000) for p in PAYEES[:2])
        assert store.commit_plan(sid, lines, START, EVENT) is not None


# -- the operations ------------------------------------------------------------------------


def _decide(h: History, data: st.DataObject) -> None:
    assert h.decisions is not None and h.held is not None
    sid = data.draw(st.sampled_from(SESSIONS))
    agent = sid.removeprefix("ses_").rsplit("_", 1)[0]
    outcome = data.draw(st.sampled_from(list(Verdict)))
    signed = outcome is Verdict.ALLOW and data.draw(st.booleans())
    asset = data.draw(st.sampled_from(sorted(ASSETS)))
    big = st.integers(1, 10**21) if asset == "ETH" else st.integers(1, 10**4)
    amount = data.draw(big)
    h.n += 1
    decision = DecisionRecord(
        id=f"dec_{h.n}",
        created_at=h.now,
        agent_id=agent,
        session_id=sid,
        nonce=f"n{h.n}",
        request_hash=f"h{h.n}",
        outcome=outcome,
        reason="X",
        message="",
        key_id="payments.v1",
        asset=asset,
        amount_minor=amount,
        jws=f"jws-{h.n}" if signed else None,
    )
    reservation = None
    if outcome is not Verdict.DENY:
        status = ReservationStatus.SPENT if outcome is Verdict.ALLOW else ReservationStatus.HELD
        reservation = Reservation(
            decision_id=decision.id,
            agent_id=agent,
            session_id=sid,
            asset=asset,
            payee_key=data.draw(st.sampled_from(PAYEES)),
            amount_minor=amount,
            created_at=h.now,
            expires_at=h.now + data.draw(st.integers(1, MAX_EXPIRY)),
            status=status,
            plan_line=data.draw(st.none() | st.integers(0, 1)),
        )
        h.held.append(Held(reservation, status, signed))
    with h.store.payment_tx() as tx:
        tx.record_decision(decision, consume_nonce=True, reservation=reservation)
    h.decisions.append((agent, h.now, outcome))


def _pick(h: History, data: st.DataObject, ok: Callable[[Held], bool]) -> Held | None:
    assert h.held is not None
    candidates = [x for x in h.held if ok(x)]
    return data.draw(st.sampled_from(candidates)) if candidates else None


def _sign_later(h: History, data: st.DataObject) -> None:
    # As core/committed.py allows: spent, unsigned, not expired.
    x = _pick(
        h,
        data,
        lambda x: not x.signed and x.status is ReservationStatus.SPENT and x.r.expires_at > h.now,
    )
    if x is None:
        return
    with h.store.payment_tx() as tx:
        assert tx.set_signature(x.r.decision_id, "jws-late")
    x.signed = True


def _approve(h: History, data: st.DataObject) -> None:
    x = _pick(h, data, lambda x: x.status is ReservationStatus.HELD and x.r.expires_at > h.now)
    if x is None:
        return
    with h.store.payment_tx() as tx:
        assert tx.set_reservation(x.r.decision_id, ReservationStatus.SPENT)
    x.status = ReservationStatus.SPENT


def _release(h: History, data: st.DataObject) -> None:
    x = _pick(h, data, lambda x: x.status is not ReservationStatus.RELEASED)
    if x is None:
        return
    with h.store.payment_tx() as tx:
        changed = tx.set_reservation(x.r.decision_id, ReservationStatus.RELEASED)
    assert changed is not x.signed  # a signed payment is never released
    if not x.signed:
        x.status = ReservationStatus.RELEASED


def _reset_breaker(h: History, data: st.DataObject) -> None:
    assert h.reset is not None
    agent = data.draw(st.sampled_from(AGENTS))
    freeze = Freeze(FreezeScope.AGENT, agent, "r", "operator/o", FreezeSource.OPERATOR, h.now)
    h.store.set_freeze(freeze, EVENT)
    assert h.store.clear_freeze(FreezeScope.AGENT, agent, h.now, EVENT)
    h.reset[agent] = h.now


def _advance(h: History, data: st.DataObject) -> None:
    h.now += data.draw(st.sampled_from((0, 1, 30, MAX_EXPIRY, 3_600, DAY - 1, DAY + 7)))


OPERATIONS = (_decide, _decide, _decide, _sign_later, _approve, _release, _reset_breaker, _advance)


# -- the recomputation -----------------------------------------------------------------------


def _expected_usage(
    h: History, agent: str, asset: str, payee: str, day_start: int, window: int
) -> tuple[Any, ...]:
    assert h.held is not None
    rows = [x for x in h.held if x.r.agent_id == agent and x.live(h.now)]
    today = {x.r.payee_key for x in rows if x.r.created_at >= day_start}
    return (
        sum(x.r.amount_minor for x in rows if x.r.asset == asset and x.r.created_at > h.now - DAY),
        sum(x.r.amount_minor for x in rows if x.r.asset == asset and x.r.created_at >= day_start),
        sum(1 for x in rows if x.r.created_at > h.now - window),
        any(x.r.payee_key == payee and x.status is ReservationStatus.SPENT for x in rows),
        len(today),
        payee in today,
    )


def _expected_window(h: History, agent: str, since: int, payee: str) -> WindowStats:
    assert h.held is not None and h.decisions is not None and h.reset is not None
    since = max(since, h.reset.get(agent, since))
    decided = [o for a, t, o in h.decisions if a == agent and t > since]
    rows = [
        x
        for x in h.held
        if x.r.agent_id == agent
        and x.r.created_at > since
        and x.status is not ReservationStatus.RELEASED
    ]
    spend: dict[str, int] = {}
    for x in rows:
        spend[x.r.asset] = spend.get(x.r.asset, 0) + x.r.amount_minor
    payees = {x.r.payee_key for x in rows}
    return WindowStats(
        decisions=len(decided),
        denials=sum(1 for o in decided if o is Verdict.DENY),
        spend_minor=spend,
        payees=len(payees),
        payee_seen=payee in payees,
    )


def _check(h: History, data: st.DataObject) -> None:
    assert h.held is not None
    agent = data.draw(st.sampled_from(AGENTS))
    asset = data.draw(st.sampled_from(sorted(ASSETS)))
    payee = data.draw(st.sampled_from(PAYEES))
    day_start = h.now - h.now % DAY
    window = data.draw(st.sampled_from((0, 1, 60, MAX_EXPIRY, 3_600)))
    since = h.now - data.draw(st.sampled_from((0, 60, 3_600, DAY)))
    with h.store.payment_tx() as tx:
        usage = tx.agent_usage(agent, asset, payee, h.now, day_start, window)
        stats = tx.window_stats(agent, since, payee)
        sessions = {sid: tx.session(sid, h.now) for sid in SESSIONS}
        in_session = {sid: tx.payee_in_session(sid, payee, h.now) for sid in SESSIONS}
        live = {sid: tx.live_spend(sid, asset, h.now) for sid in SESSIONS}
    got = (
        usage.spent_24h_minor,
        usage.spent_today_minor,
        usage.payments_in_window,
        usage.payee_paid_before,
        usage.payees_today,
        usage.payee_seen_today,
    )
    assert got == _expected_usage(h, agent, asset, payee, day_start, window)
    assert stats == _expected_window(h, agent, since, payee)
    for sid, record in sessions.items():
        rows = [x for x in h.held if x.r.session_id == sid and x.live(h.now)]
        assert record is not None
        spent = dict.fromkeys(ASSETS, 0)
        for x in rows:
            spent[x.r.asset] += x.r.amount_minor
        assert dict(record.spent_minor) == spent == _live_by_sql(h.store, sid, h.now)
        assert live[sid] == spent[asset]
        assert record.payees == len({x.r.payee_key for x in rows})
        assert in_session[sid] == any(x.r.payee_key == payee for x in rows)
        used = [sum(1 for x in rows if x.r.plan_line == i) for i in range(len(record.plan))]
        assert [line.used for line in record.plan] == used


def _live_by_sql(store: SqlStore, session_id: str, now: int) -> dict[str, int]:
    """The session's spend by the LIVE rule over every one of its reservations (read on
    a connection of the store's own, outside any transaction)."""
    spent = dict.fromkeys(ASSETS, 0)

    def read(conn: Conn) -> list[tuple[Any, ...]]:
        return conn.execute(
            "SELECT asset, amount_minor FROM reservations"
            f" WHERE session_id = ? AND {sqlite_reads.LIVE}",
            (session_id, now),
        ).fetchall()

    for asset, amount in store._read(read):
        spent[asset] += int(amount)
    return spent


def _aggregates(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = {t: sorted(conn.execute(f"SELECT * FROM {t}")) for t in AGGREGATES}
        tables["reservations"] = conn.execute(
            "SELECT decision_id, signed FROM reservations ORDER BY 1"
        ).fetchall()
        tables["sessions"] = conn.execute(
            "SELECT id, signed_payees FROM sessions ORDER BY 1"
        ).fetchall()
        tables["session_budgets"] = conn.execute(
            "SELECT session_id, asset, spent_minor FROM session_budgets ORDER BY 1, 2"
        ).fetchall()
        tables["plan_lines"] = conn.execute(
            "SELECT session_id, idx, signed_used FROM plan_lines ORDER BY 1, 2"
        ).fetchall()
        return tables
    finally:
        conn.close()


def _backfilled(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The aggregates as the migration to version 7 computes them from the rows."""
    copy = path.with_name("copy.db")
    src, dst = sqlite3.connect(path), sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    for table in AGGREGATES:
        dst.execute(f"DELETE FROM {table}")
    dst.execute("UPDATE reservations SET signed = 0")
    dst.execute("UPDATE sessions SET signed_payees = 0")
    dst.execute("UPDATE session_budgets SET spent_minor = '0'")
    dst.execute("UPDATE plan_lines SET signed_used = 0")
    schema.BACKFILLS[7](dst)
    dst.commit()
    dst.close()
    return _aggregates(copy)


def test_facts_equal_a_recomputation_over_the_history(stores: Stores) -> None:
    """150 histories on SQLite, each also against the version-7 backfill; fewer on
    PostgreSQL (each is a database of its own), against the recomputation alone."""
    examples = 12 if stores.postgres else 150

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def histories(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "s.db"
            store = stores.open(path)
            try:
                store.migrate()
                _open_sessions(store)
                h = History(store)
                for _ in range(data.draw(st.integers(1, 40))):
                    data.draw(st.sampled_from(OPERATIONS))(h, data)
                    if data.draw(st.booleans()):
                        _check(h, data)
                _check(h, data)
            finally:
                store.close()
            if not stores.postgres:
                assert _backfilled(path) == _aggregates(path)

    histories()


# -- no read on the signing path scans the history ------------------------------------------


def _a_history(path: Path) -> None:
    store = SqliteStore(path)
    store.migrate()
    _open_sessions(store)
    with store.payment_tx() as tx:
        for i, signed in enumerate((True, False)):
            sid = SESSIONS[0]
            decision = DecisionRecord(
                id=f"dec_{i}", created_at=START, agent_id=AGENTS[0], session_id=sid,
                nonce=f"n{i}", request_hash="h", outcome=Verdict.ALLOW, reason="X", message="",
                key_id="k", asset="USD", amount_minor=5, jws="j" if signed else None,
            )  # fmt: skip
            reservation = Reservation(
                f"dec_{i}", AGENTS[0], sid, "USD", "alpha", 5, START, START + 60,
                ReservationStatus.SPENT, 0,
            )  # fmt: skip
            tx.record_decision(decision, consume_nonce=True, reservation=reservation)
    store.close()


def test_fact_reads_search_indexes_and_never_scan(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _a_history(path)
    conn = sqlite3.connect(path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    now = START + 1
    sqlite_facts.agent_usage(conn, AGENTS[0], "USD", "alpha", now, now - DAY, 60)
    sqlite_facts.window_stats(conn, AGENTS[0], now - 3_600, "alpha")
    sqlite_session_facts.payee_in_session(conn, SESSIONS[0], "bravo", now)
    sqlite_session_facts.live_spend(conn, SESSIONS[0], "USD", now)
    record = sqlite_reads.session(conn, SESSIONS[0], now)
    conn.set_trace_callback(None)
    assert record is not None and record.spent_minor["USD"] == 10 and record.payees == 1
    searched = 0
    for statement in statements:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
        scans = [p for p in plan if p.startswith("SCAN") and p != "SCAN CONSTANT ROW"]
        assert not scans, (statement, plan)
        assert not [p for p in plan if "TEMP B-TREE" in p], (statement, plan)
        searched += sum(1 for p in plan if p.startswith("SEARCH"))
    joined = "\n".join(statements)
    for index in (
        "reservations_open_agent",
        "reservations_open_agent_made",
        "reservations_open_session",
    ):
        assert f"INDEXED BY {index} " in joined  # the open rows: young ones only
    assert searched >= len(statements)
    conn.close()


def test_a_late_signature_counts_from_its_creation_time(tmp_path: Path, stores: Stores) -> None:
    """An approved payment signed after later payments were: the rolling sums include it
    from when it was made, and the later payments' totals grow by it."""
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    _open_sessions(store)
    sid = SESSIONS[0]
    base = Reservation("dec_1", AGENTS[0], sid, "ETH", "alpha", 10**20, START, START + 600,
                       ReservationStatus.HELD)  # fmt: skip

    def decision(i: int, at: int, jws: str | None) -> DecisionRecord:
        return DecisionRecord(
            id=f"dec_{i}", created_at=at, agent_id=AGENTS[0], session_id=sid, nonce=f"n{i}",
            request_hash="h", outcome=Verdict.ALLOW, reason="X", message="", key_id="k",
            asset="ETH", amount_minor=10**20, jws=jws,
        )  # fmt: skip

    with store.payment_tx() as tx:
        tx.record_decision(decision(1, START, None), consume_nonce=True, reservation=base)
    later = replace(
        base, decision_id="dec_2", created_at=START + 100, status=ReservationStatus.SPENT
    )
    with store.payment_tx() as tx:
        tx.record_decision(decision(2, START + 100, "j2"), consume_nonce=True, reservation=later)
    with store.payment_tx() as approving:
        assert approving.set_reservation("dec_1", ReservationStatus.SPENT)
    with store.payment_tx() as signing:
        assert signing.set_signature("dec_1", "j1")
    now = START + 10_000  # both expired: only signed spend counts
    with store.payment_tx() as tx:
        usage = tx.agent_usage(AGENTS[0], "ETH", "alpha", now, START + 50, 60)
        assert (usage.spent_24h_minor, usage.spent_today_minor) == (2 * 10**20, 10**20)
        assert tx.window_stats(AGENTS[0], START - 1, "alpha").spend_minor == {"ETH": 2 * 10**20}
        recent = tx.window_stats(AGENTS[0], START, "alpha")
        assert recent.spend_minor == {"ETH": 10**20}
        assert (recent.payees, recent.payee_seen) == (1, True)  # paid last at START + 100
    store.close()


def test_an_allowed_payment_never_signed_stops_counting_as_paid_when_it_lapses(
    tmp_path: Path, stores: Stores
) -> None:
    """ "Paid before" is a signed payment, or an allowed one that may still be signed;
    one that lapsed unsigned paid nobody."""
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    _open_sessions(store)
    sid = SESSIONS[0]
    decision = DecisionRecord(
        id="dec_1", created_at=START, agent_id=AGENTS[0], session_id=sid, nonce="n1",
        request_hash="h", outcome=Verdict.ALLOW, reason="X", message="", key_id="k",
        asset="USD", amount_minor=5,
    )  # fmt: skip
    reservation = Reservation("dec_1", AGENTS[0], sid, "USD", "alpha", 5, START, START + 60,
                              ReservationStatus.SPENT)  # fmt: skip
    with store.payment_tx() as tx:
        tx.record_decision(decision, consume_nonce=True, reservation=reservation)
    with store.payment_tx() as tx:
        day = START - START % DAY
        assert tx.agent_usage(AGENTS[0], "USD", "alpha", START + 59, day, 60).payee_paid_before
        lapsed = tx.agent_usage(AGENTS[0], "USD", "alpha", START + 60, day, 60)
        assert not lapsed.payee_paid_before
        assert (lapsed.payees_today, lapsed.spent_today_minor) == (0, 0)
    store.close()

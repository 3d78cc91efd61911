"""``paywarden explain agent`` (issue 12, point 5): what an agent can do right now.

The store's overview of one agent is read with the deciding path's own fact reads and
searches indexes only (no scan of the history).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from paywarden.policy.vocabulary import (
    ApprovalStatus,
    FreezeScope,
    FreezeSource,
    ReservationStatus,
    Verdict,
)
from paywarden.signer.store.records import (
    ApprovalRecord,
    DecisionRecord,
    Freeze,
    Reservation,
    SessionRecord,
)
from paywarden.signer.store.sqlite import SqliteStore

DAY = 86_400
T0 = 1_750_000_000 - 1_750_000_000 % DAY + 12 * 3_600  # noon UTC
RECORD = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}


def _session_at(store: SqliteStore, sid: str, agent: str, expires_at: int) -> None:
    store.create_session(
        SessionRecord(
            id=sid, agent_id=agent, planner_id="planner-1", task_digest="0" * 64,
            created_at=T0 - 2 * DAY, expires_at=expires_at, closed_at=None,
            budgets_minor={"USD": 100_000}, spent_minor={},
        ),
        {"USD": 2},
        RECORD,
    )  # fmt: skip


def _payment(
    store: SqliteStore, n: int, agent: str, sid: str, amount: int, at: int, *, held: bool = False
) -> None:
    with store.payment_tx() as tx:
        decision = DecisionRecord(
            id=f"dec_{n}", created_at=at, agent_id=agent, session_id=sid, nonce=f"n{n}",
            request_hash="h", outcome=Verdict.NEEDS_APPROVAL if held else Verdict.ALLOW, reason="X",
            message="", key_id="payments.v1", asset="USD", amount_minor=amount,
            jws=None if held else "j", expires_at=at + 300,
        )  # fmt: skip
        reservation = Reservation(
            f"dec_{n}", agent, sid, "USD", f"payee-{n}", amount, at, at + 300,
            ReservationStatus.HELD if held else ReservationStatus.SPENT,
        )  # fmt: skip
        approval = None
        if held:
            approval = ApprovalRecord(
                f"apr_{n}", f"dec_{n}", 1, ApprovalStatus.PENDING, at, at + 300
            )
        tx.record_decision(decision, consume_nonce=True, reservation=reservation, approval=approval)


def _a_store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    store.migrate()
    _session_at(store, "ses_open", "agent-1", T0 + 3_600)
    _session_at(store, "ses_later", "agent-1", T0 + 7_200)
    _session_at(store, "ses_expired", "agent-1", T0 - 60)
    _session_at(store, "ses_closed", "agent-1", T0 + 3_600)
    _session_at(store, "ses_other", "agent-2", T0 + 3_600)
    _payment(store, 1, "agent-1", "ses_open", 1_000, T0 - DAY - 60)  # yesterday: neither window
    _payment(store, 2, "agent-1", "ses_open", 2_000, T0 - 13 * 3_600)  # yesterday, last 24 h
    _payment(store, 3, "agent-1", "ses_open", 300, T0 - 3_600)  # today
    _payment(store, 4, "agent-1", "ses_later", 40, T0 - 30, held=True)  # today, pending
    _payment(store, 5, "agent-2", "ses_other", 7_000, T0 - 60)  # another agent's
    with store.session_tx() as tx:
        assert tx.mark_closed("ses_closed", T0 - 100)
    for scope, target in (
        (FreezeScope.SESSION, "ses_later"),
        (FreezeScope.KEY, "payments.v1"),
        (FreezeScope.KEY, "other.v1"),
        (FreezeScope.AGENT, "agent-2"),
    ):
        store.set_freeze(
            Freeze(scope, target, "why", "operator/o", FreezeSource.OPERATOR, T0), RECORD
        )
    return store


def test_the_overview_is_the_agents_own_usage_sessions_approvals_and_freezes(
    tmp_path: Path,
) -> None:
    store = _a_store(tmp_path / "s.db")
    overview = store.agent_overview(
        "agent-1", assets=["USD"], keys=["payments.v1"], now=T0,
        day_start=T0 - 12 * 3_600, velocity_seconds=2 * 3_600, breaker_seconds=DAY,
        max_sessions=10,
    )  # fmt: skip
    usage = overview.usage["USD"]
    assert usage.spent_today_minor == 300 + 40
    assert usage.spent_24h_minor == 2_000 + 300 + 40
    assert usage.payments_in_window == 2  # the signed one an hour ago and the held one
    assert usage.payees_today == 2
    assert [s.id for s in overview.sessions] == ["ses_open", "ses_later"]
    assert overview.open_sessions == 2
    assert overview.sessions[0].spent_minor == {"USD": 3_300}
    assert overview.pending_approvals == 1
    assert {(f.scope, f.target) for f in overview.freezes} == {
        (FreezeScope.SESSION, "ses_later"),
        (FreezeScope.KEY, "payments.v1"),
    }
    assert overview.window is not None and overview.window.spend_minor == {"USD": 2_340}
    capped = store.agent_overview(
        "agent-1", assets=[], keys=[], now=T0, day_start=T0, velocity_seconds=0,
        breaker_seconds=None, max_sessions=1,
    )  # fmt: skip
    assert [s.id for s in capped.sessions] == ["ses_open"] and capped.open_sessions == 2
    assert capped.window is None and capped.usage == {}
    store.close()


def test_the_overview_searches_indexes_and_never_scans(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _a_store(path).close()
    store = SqliteStore(path)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.agent_overview(
        "agent-1", assets=["USD"], keys=["payments.v1"], now=T0, day_start=T0 - 3_600,
        velocity_seconds=60, breaker_seconds=3_600, max_sessions=10,
    )  # fmt: skip
    store.close()
    conn = sqlite3.connect(path)
    checked = 0
    for statement in statements:
        if statement in ("BEGIN", "COMMIT"):
            continue
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
        assert not [p for p in plan if p.startswith("SCAN") and p != "SCAN CONSTANT ROW"], (
            statement,
            plan,
        )
        assert not [p for p in plan if "TEMP B-TREE" in p], (statement, plan)
        checked += 1
    assert checked > 10
    assert any("INDEXED BY sessions_open_agent" in s for s in statements)
    conn.close()

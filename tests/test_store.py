"""The store: transactional spend, nonces, signatures and sessions on both backends;
the SQLite file's own migrations, durability settings and mode on SQLite alone
(PostgreSQL's: tests/test_postgres_store.py)."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from paywarden.policy.vocabulary import ReservationStatus, Verdict
from paywarden.signer.core.backstop import check_budget
from paywarden.signer.core.withdrawal import close_session
from paywarden.signer.store.records import (
    DecisionRecord,
    InvariantBroken,
    Reservation,
    SessionRecord,
    StoreError,
)
from paywarden.signer.store.schema import SCHEMA_VERSION
from paywarden.signer.store.sqlite import SqliteStore

from tests.helpers import Pki, TestToken, write_config
from tests.support.backends import Stores
from tests.support.cli import paywarden
from tests.support.stored import attach

# The tests that take ``stores`` run on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

USD2 = {"USD": 2}
EVENT = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}


def _session(sid: str = "ses_" + "A" * 43, budget: int = 1000) -> SessionRecord:
    return SessionRecord(
        id=sid,
        agent_id="agent-1",
        planner_id="planner-1",
        task_digest="0" * 64,
        created_at=1,
        expires_at=2**40,
        closed_at=None,
        budgets_minor={"USD": budget},
        spent_minor={"USD": 0},
    )


def _reservation(i: int, amount: int, sid: str = "ses_" + "A" * 43) -> Reservation:
    return Reservation(
        decision_id=f"dec_{i}",
        agent_id="agent-1",
        session_id=sid,
        asset="USD",
        payee_key="acme",
        amount_minor=amount,
        created_at=1,
        expires_at=2**40,
        status=ReservationStatus.SPENT,
    )


def _put(tx: Any, i: int, amount: int, outcome: str = "allow", nonce: str | None = None) -> None:
    decision = _decision(i, amount, outcome)
    if nonce is not None:
        decision = replace(decision, nonce=nonce)
    reservation = _reservation(i, amount) if outcome == "allow" else None
    tx.record_decision(decision, consume_nonce=True, reservation=reservation)


def _decision(
    i: int, amount: int, outcome: str = "allow", sid: str = "ses_" + "A" * 43
) -> DecisionRecord:
    return DecisionRecord(
        id=f"dec_{i}",
        created_at=1,
        agent_id="agent-1",
        session_id=sid,
        nonce=f"nonce-{i}",
        request_hash=f"h{i}",
        outcome=Verdict(outcome),
        reason="ALLOWED" if outcome == "allow" else "BUDGET_EXCEEDED",
        message="",
        key_id="payments.v1",
        asset="USD",
        amount_minor=amount,
        payload=b"{}" if outcome == "allow" else None,
    )


def test_migrate_sets_version_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION  # idempotent
    store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "session_budgets", "decisions", "nonces"} <= tables
    conn.close()
    store = SqliteStore(tmp_path / "s.db")
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SqliteStore(tmp_path / "s.db")
    with pytest.raises(StoreError, match="newer"):
        store.migrate()
    store.close()


def test_nonce_is_unique_in_the_store_itself(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    with store.payment_tx() as tx:
        _put(tx, 1, 10)
    with pytest.raises(StoreError), store.payment_tx() as tx:
        _put(tx, 2, 10, nonce="nonce-1")
    # the failed transaction left nothing behind: no decision, no spend
    assert store.get_decision("dec_2") is None
    session = store.get_session(_session().id, 2)
    assert session is not None and session.spent_minor["USD"] == 10
    store.close()


def test_spend_beyond_budget_is_refused_by_the_store(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(budget=100), USD2, EVENT)
    with pytest.raises(InvariantBroken), store.payment_tx() as tx:
        check_budget(tx, _reservation(1, 101))  # the core's backstop, before the record
        _put(tx, 1, 101)
    assert store.get_decision("dec_1") is None
    store.close()


def test_the_budget_backstop_counts_live_spend_only(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(budget=100), USD2, EVENT)
    with store.payment_tx() as tx:
        _put(tx, 1, 60)
        _put(tx, 2, 30)
        tx.set_reservation("dec_2", ReservationStatus.RELEASED)  # counts no more
        assert (tx.budget(_session().id, "USD"), tx.live_spend(_session().id, "USD", 2)) == (
            100,
            60,
        )
        check_budget(tx, _reservation(3, 40))  # exactly what is left
        with pytest.raises(InvariantBroken, match="exceed"):
            check_budget(tx, _reservation(3, 41))
        with pytest.raises(InvariantBroken, match="no budget"):
            check_budget(tx, replace(_reservation(3, 1), asset="EUR"))
    store.close()


def test_two_stores_race_for_the_last_of_a_budget(tmp_path: Path, stores: Stores) -> None:
    """Check-and-spend in one write transaction (SQLite's BEGIN IMMEDIATE, PostgreSQL's
    write lock): two stores on one database never both pass."""
    path = tmp_path / "s.db"
    first = stores.open(path)
    first.migrate()
    first.create_session(_session(budget=100), USD2, EVENT)
    racing = [first, stores.open(path)]
    allowed: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        store = racing[n % 2]
        with store.payment_tx() as tx:
            session = tx.session(_session().id, 2)
            assert session is not None
            fits = session.spent_minor["USD"] + 7 <= session.budgets_minor["USD"]
            _put(tx, n, 7, "allow" if fits else "deny")
        if fits:
            with lock:
                allowed.append(n)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(allowed) == 100 // 7
    session = first.get_session(_session().id, 2)
    assert session is not None and session.spent_minor["USD"] == 7 * (100 // 7)
    for s in racing:
        s.close()


def test_a_write_reported_committed_is_committed_even_after_a_failed_statement(
    tmp_path: Path, stores: Stores
) -> None:
    """A statement fails inside a write transaction and its error is caught: SQLite goes
    on and commits the rest; PostgreSQL can only roll back, and must say so rather than
    report a commit."""
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    try:
        with store.payment_tx() as tx:
            tx.audit(EVENT)
            with pytest.raises((StoreError, sqlite3.Error)):
                tx._conn.execute("INSERT INTO no_such_table VALUES (1)")
        committed = True
    except StoreError:
        committed = False
    assert store.audit_head()[0] == (1 if committed else 0)
    assert committed is not stores.postgres
    store.close()


def test_signature_is_attached_once(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    with store.payment_tx() as tx:
        _put(tx, 1, 10)
        _put(tx, 2, 10, "deny")
    assert attach(store, "dec_1", "first", 2) == ("first", True)
    assert attach(store, "dec_1", "second", 2) == ("first", False)
    assert attach(store, "dec_2", "x", 2) is None  # a denial never gets a signature
    store.close()


def test_close_session_is_idempotent(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    first = close_session(store, _session().id, 100, EVENT)
    second = close_session(store, _session().id, 200, EVENT)
    assert first is not None and second is not None
    assert first.closed_at == second.closed_at == 100
    assert close_session(store, "ses_" + "B" * 43, 1, EVENT) is None
    store.close()


def test_store_cli_inspection_and_export(
    tmp_path: Path, token: TestToken, pki: Pki, stores: Stores
) -> None:
    config = write_config(tmp_path, token, pki, stores=stores)
    store = stores.open(tmp_path / "state.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    store.close()
    info = paywarden("store-info", "--config", config)
    assert info.returncode == 0, info.stderr
    assert f"schema version {SCHEMA_VERSION}" in info.stdout
    assert "sessions: 1 rows" in info.stdout
    export = paywarden("store-export", "--config", config, "--table", "sessions")
    assert export.returncode == 0, export.stderr
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert [r["id"] for r in rows] == [_session().id]
    missing = paywarden("store-export", "--config", config, "--table", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr
    if stores.password is not None:  # PostgreSQL's: never shown
        for proc in (info, export, missing):
            assert stores.password not in proc.stdout + proc.stderr


def test_migration_from_version_1_keeps_spend_nonces_and_decisions(tmp_path: Path) -> None:
    """A v1 database (counter-based spend) migrates to reservations without loss."""
    from paywarden.signer.store.schema import MIGRATIONS

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[1])
    conn.execute("PRAGMA user_version = 1")
    sid = _session().id
    conn.execute(
        "INSERT INTO sessions VALUES (?, 'agent-1', 'planner-1', ?, 1, ?, NULL, '[]')",
        (sid, "0" * 64, 2**40),
    )
    conn.execute("INSERT INTO session_budgets VALUES (?, 'USD', '1000', '250')", (sid,))
    payload = json.dumps({"payee": "acme", "exp": 2**40}).encode()
    conn.execute(
        "INSERT INTO decisions VALUES ('dec_1', 1, 'agent-1', ?, 'n1', 'h1', 'allow', 'ALLOWED',"
        " '', 'payments.v1', 'USD', '250', ?, 'jws', '[]', '')",
        (sid, payload),
    )
    conn.execute("INSERT INTO nonces VALUES ('n1', 'dec_1')")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    assert store.migrate() == SCHEMA_VERSION
    session = store.get_session(sid, 2)
    assert session is not None
    assert session.spent_minor == {"USD": 250}
    assert session.payees == 1
    decision = store.get_decision("dec_1")
    assert decision is not None and decision.jws == "jws" and decision.payee == "acme"
    with store.payment_tx() as tx:
        assert tx.decision_for_nonce("agent-1", "n1") is not None
        assert tx.decision_for_nonce("agent-2", "n1") is None
    store.close()


def test_changed_decimals_are_detected(tmp_path: Path, stores: Stores) -> None:
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    assert store.adopt_decimals({"USD": 2}) == []
    assert store.adopt_decimals({"USD": 0}) == ["USD"]
    assert store.adopt_decimals({}) == ["USD"]
    store.close()


def test_serve_refuses_to_start_when_an_asset_changed_decimals(
    tmp_path: Path, token: TestToken, pki: Pki, stores: Stores
) -> None:
    config = write_config(tmp_path, token, pki, stores=stores)
    store = stores.open(tmp_path / "state.db")
    store.migrate()
    store.create_session(_session(), {"USD": 3}, EVENT)  # written when USD had 3 decimals
    store.close()
    proc = paywarden("serve", "--config", config, timeout=60)
    assert proc.returncode == 2
    assert "assets.USD.decimals" in proc.stderr


def test_store_file_is_private(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    store.close()
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600


def test_a_payment_at_the_first_second_of_a_long_day_counts_for_that_day(
    tmp_path: Path, stores: Stores
) -> None:
    """On a 25-hour (DST) day the day starts more than 24 h before now."""
    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    day_start = 1_000_000
    with store.payment_tx() as tx:
        tx.record_decision(
            _decision(1, 10),
            consume_nonce=True,
            reservation=replace(_reservation(1, 10), created_at=day_start),
        )
    with store.payment_tx() as tx:
        usage = tx.agent_usage("agent-1", "USD", "acme", day_start + 90_000, day_start, 60)
    assert usage.spent_today_minor == 10
    assert usage.spent_24h_minor == 0
    store.close()


def test_read_only_table_readers(tmp_path: Path) -> None:
    from paywarden.signer.store import sqlite_reads

    store = SqliteStore(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    store.close()
    before = (tmp_path / "s.db").read_bytes()
    version, counts = sqlite_reads.table_counts(tmp_path / "s.db")
    assert version == SCHEMA_VERSION
    assert dict(counts)["sessions"] == 1 and dict(counts)["audit_log"] == 1
    assert [name for name, _ in counts] == sqlite_reads.table_names(tmp_path / "s.db")
    rows = list(sqlite_reads.table_rows(tmp_path / "s.db", "sessions"))
    assert [r["id"] for r in rows] == [_session().id]
    with pytest.raises(ValueError, match="nope"):
        list(sqlite_reads.table_rows(tmp_path / "s.db", "nope"))
    assert (tmp_path / "s.db").read_bytes() == before  # nothing written


def test_the_offline_readers_read_either_backend_and_write_nothing(
    tmp_path: Path, stores: Stores
) -> None:
    from paywarden.signer.store import offline_reads

    store = stores.open(tmp_path / "s.db")
    store.migrate()
    store.create_session(_session(), USD2, EVENT)
    store.close()
    where = stores.config(tmp_path / "s.db")
    before = stores.audit_log(tmp_path / "s.db")
    version, counts = offline_reads.table_counts(where)
    assert version == SCHEMA_VERSION
    assert dict(counts)["sessions"] == 1 and dict(counts)["audit_log"] == 1
    assert [name for name, _ in counts] == offline_reads.table_names(where)
    rows = list(offline_reads.table_rows(where, "sessions"))
    assert [r["id"] for r in rows] == [_session().id]
    with pytest.raises(ValueError, match="nope"):
        list(offline_reads.table_rows(where, "nope"))
    assert stores.audit_log(tmp_path / "s.db") == before  # nothing written

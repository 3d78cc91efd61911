"""SQLite implementation of :class:`~paywarden.signer.store.Store`.

WAL mode with ``synchronous=FULL``: a decision is on disk before its
signature leaves the service. One connection per store, guarded by a lock
in-process and by ``BEGIN IMMEDIATE`` against other processes. Amounts are
integers in the asset's smallest unit, stored as decimal TEXT so that no
asset can overflow SQLite's 64-bit integers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from paywarden.signer.store import DecisionRecord, SessionRecord, StoreError

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        planner_id TEXT NOT NULL,
        task_digest TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        closed_at INTEGER,
        allowed_payees TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE session_budgets (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        asset TEXT NOT NULL,
        budget_minor TEXT NOT NULL,
        spent_minor TEXT NOT NULL DEFAULT '0',
        PRIMARY KEY (session_id, asset)
    );
    CREATE TABLE decisions (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        agent_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('allow', 'deny')),
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        key_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        amount_minor TEXT NOT NULL,
        payload BLOB,
        jws TEXT,
        trace TEXT NOT NULL,
        purpose TEXT NOT NULL
    );
    CREATE INDEX decisions_session ON decisions(session_id);
    CREATE TABLE nonces (
        nonce TEXT PRIMARY KEY,
        decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id)
    );
    """,
}


def _session(conn: sqlite3.Connection, session_id: str) -> SessionRecord | None:
    row = conn.execute(
        "SELECT id, agent_id, planner_id, task_digest, created_at, expires_at, closed_at,"
        " allowed_payees FROM sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        return None
    budgets: dict[str, int] = {}
    spent: dict[str, int] = {}
    for asset, budget, used in conn.execute(
        "SELECT asset, budget_minor, spent_minor FROM session_budgets WHERE session_id = ?",
        (session_id,),
    ):
        budgets[asset] = int(budget)
        spent[asset] = int(used)
    return SessionRecord(
        id=row[0],
        agent_id=row[1],
        planner_id=row[2],
        task_digest=row[3],
        created_at=row[4],
        expires_at=row[5],
        closed_at=row[6],
        budgets_minor=budgets,
        spent_minor=spent,
        allowed_payees=tuple(json.loads(row[7])),
    )


_DECISION_COLUMNS = (
    "id, created_at, agent_id, session_id, nonce, request_hash, outcome, reason, message,"
    " key_id, asset, amount_minor, payload, jws, trace, purpose"
)


def _decision(row: Any) -> DecisionRecord:
    return DecisionRecord(
        id=row[0],
        created_at=row[1],
        agent_id=row[2],
        session_id=row[3],
        nonce=row[4],
        request_hash=row[5],
        outcome=row[6],
        reason=row[7],
        message=row[8],
        key_id=row[9],
        asset=row[10],
        amount_minor=int(row[11]),
        payload=bytes(row[12]) if row[12] is not None else None,
        jws=row[13],
        trace_json=row[14],
        purpose=row[15],
    )


class _Tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def session(self, session_id: str) -> SessionRecord | None:
        return _session(self._conn, session_id)

    def decision_for_nonce(self, nonce: str) -> DecisionRecord | None:
        row = self._conn.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions"  # noqa: S608 - constant column list
            " WHERE id = (SELECT decision_id FROM nonces WHERE nonce = ?)",
            (nonce,),
        ).fetchone()
        return _decision(row) if row is not None else None

    def record_decision(self, decision: DecisionRecord, *, consume_nonce: bool) -> None:
        d = decision
        self._conn.execute(
            f"INSERT INTO decisions ({_DECISION_COLUMNS})"  # noqa: S608 - constant column list
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.id, d.created_at, d.agent_id, d.session_id, d.nonce, d.request_hash,
                d.outcome, d.reason, d.message, d.key_id, d.asset, str(d.amount_minor),
                d.payload, d.jws, d.trace_json, d.purpose,
            ),
        )  # fmt: skip
        if consume_nonce:
            # PRIMARY KEY: a second insert of the nonce fails the transaction.
            self._conn.execute(
                "INSERT INTO nonces (nonce, decision_id) VALUES (?, ?)", (d.nonce, d.id)
            )
        if d.outcome == "allow":
            row = self._conn.execute(
                "SELECT spent_minor, budget_minor FROM session_budgets"
                " WHERE session_id = ? AND asset = ?",
                (d.session_id, d.asset),
            ).fetchone()
            if row is None:
                raise StoreError(f"session {d.session_id} has no budget in {d.asset}")
            spent = int(row[0]) + d.amount_minor
            if spent > int(row[1]):
                # the policy said yes on the facts of this very transaction;
                # reaching this means a bug, and the whole transaction is undone
                raise StoreError("spend would exceed the session budget")
            self._conn.execute(
                "UPDATE session_budgets SET spent_minor = ? WHERE session_id = ? AND asset = ?",
                (str(spent), d.session_id, d.asset),
            )


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        self._lock = threading.Lock()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from None
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from None

    def _read(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            try:
                return fn(self._conn, *args)
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from None

    def migrate(self) -> int:
        with self._write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store's schema version {version} is newer than this signer's "
                    f"({SCHEMA_VERSION})"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
        return SCHEMA_VERSION

    def check(self) -> None:
        self._read(lambda c: c.execute("SELECT 1").fetchone())

    def create_session(self, session: SessionRecord) -> None:
        s = session
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO sessions (id, agent_id, planner_id, task_digest, created_at,"
                    " expires_at, closed_at, allowed_payees) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        s.id, s.agent_id, s.planner_id, s.task_digest, s.created_at,
                        s.expires_at, s.closed_at, json.dumps(list(s.allowed_payees)),
                    ),
                )  # fmt: skip
                for asset, budget in s.budgets_minor.items():
                    conn.execute(
                        "INSERT INTO session_budgets (session_id, asset, budget_minor)"
                        " VALUES (?, ?, ?)",
                        (s.id, asset, str(budget)),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create session: {exc}") from None

    def get_session(self, session_id: str) -> SessionRecord | None:
        result: SessionRecord | None = self._read(_session, session_id)
        return result

    def close_session(self, session_id: str, now: int) -> SessionRecord | None:
        try:
            with self._write() as conn:
                conn.execute(
                    "UPDATE sessions SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                    (now, session_id),
                )
                return _session(conn, session_id)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot close session: {exc}") from None

    @contextmanager
    def payment_tx(self) -> Iterator[_Tx]:
        try:
            with self._write() as conn:
                yield _Tx(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    def attach_signature(self, decision_id: str, jws: str) -> str:
        try:
            with self._write() as conn:
                conn.execute(
                    "UPDATE decisions SET jws = ? WHERE id = ? AND outcome = 'allow'"
                    " AND jws IS NULL",
                    (jws, decision_id),
                )
                row = conn.execute(
                    "SELECT jws FROM decisions WHERE id = ?", (decision_id,)
                ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the signature: {exc}") from None
        if row is None or row[0] is None:
            raise StoreError(f"decision {decision_id} is not an allowed decision")
        stored: str = row[0]
        return stored

    def get_decision(self, decision_id: str) -> DecisionRecord | None:
        row = self._read(
            lambda c: c.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE id = ?",  # noqa: S608
                (decision_id,),
            ).fetchone()
        )
        return _decision(row) if row is not None else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

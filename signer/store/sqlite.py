"""SQLite implementation of :class:`~paywarden.signer.store.protocols.Store`.

WAL mode with ``synchronous=FULL``: a decision is on disk before its
signature leaves the service. One connection per store, guarded by a lock
in-process and by ``BEGIN IMMEDIATE`` against other processes. Amounts are
integers in the asset's smallest unit, stored as decimal TEXT so that no
asset can overflow SQLite's 64-bit integers; sums are made in Python.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from paywarden.signer.auditlog import append
from paywarden.signer.auditlog.append import AuditState
from paywarden.signer.store import schema
from paywarden.signer.store.records import (
    AgentUsage,
    ApprovalRecord,
    Checkpoint,
    DecisionRecord,
    Freeze,
    InvariantBroken,
    PlanLineRecord,
    Reservation,
    SessionRecord,
    StoreError,
    WindowStats,
)

# -- the audit log ---------------------------------------------------------------------


def _audit_state(conn: sqlite3.Connection) -> AuditState:
    size, frontier_json = conn.execute(
        "SELECT size, frontier FROM audit_state WHERE id = 1"
    ).fetchone()
    head_time = None
    if size:
        (head,) = conn.execute(  # O(1): the record at the log's head, by key
            "SELECT json_extract(body, '$.time') FROM audit_log WHERE seq = ?", (size,)
        ).fetchone() or (None,)
        if isinstance(head, int):
            head_time = head
    frontier = tuple((int(s), bytes.fromhex(h)) for s, h in json.loads(frontier_json))
    return AuditState(int(size), frontier, head_time)


def _append_audit(conn: sqlite3.Connection, event: Mapping[str, Any]) -> int:
    """Appends one record in the caller's transaction (see :func:`append.append`);
    returns its sequence number."""
    record, leaf, state = append.append(_audit_state(conn), event)
    conn.execute(
        "INSERT INTO audit_log (seq, body, leaf) VALUES (?, ?, ?)", (state.size, record, leaf)
    )
    conn.execute(
        "UPDATE audit_state SET size = ?, frontier = ? WHERE id = 1",
        (state.size, json.dumps([[s, h.hex()] for s, h in state.frontier])),
    )
    return state.size


def _frozen(conn: sqlite3.Connection, agent_id: str, session_id: str, key_id: str) -> Freeze | None:
    row = conn.execute(
        "SELECT scope, target, reason, actor, source, at FROM freezes WHERE"
        " (scope = 'global') OR (scope = 'agent' AND target = ?) OR"
        " (scope = 'session' AND target = ?) OR (scope = 'key' AND target = ?)"
        " ORDER BY CASE scope WHEN 'global' THEN 0 WHEN 'agent' THEN 1 WHEN 'session' THEN 2"
        " ELSE 3 END LIMIT 1",
        (agent_id, session_id, key_id),
    ).fetchone()
    return Freeze(*row) if row is not None else None


# Lock waits are taken in slices this long, so that a server's stop can end them.
_SLICE = 0.05

# A reservation counts while held or spent and not yet past the payment's expiry,
# and for ever once signed. An allowed payment the HSM never signed cannot be signed
# after its exp (a retry is denied), so its spend lapses then, without a retry. The
# signed check is one primary-key lookup per row the caller reads anyway.
_LIVE = (
    "(status != 'released' AND (expires_at > ? OR (status = 'spent' AND EXISTS"
    " (SELECT 1 FROM decisions WHERE decisions.id = reservations.decision_id"
    " AND decisions.jws IS NOT NULL))))"
)


def _session(conn: sqlite3.Connection, session_id: str, now: int) -> SessionRecord | None:
    row = conn.execute(
        "SELECT id, agent_id, planner_id, task_digest, created_at, expires_at, closed_at,"
        " allowed_payees, phase, pack_id, pack_version, pack_sha256 FROM sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        return None
    budgets = {
        asset: int(budget)
        for asset, budget in conn.execute(
            "SELECT asset, budget_minor FROM session_budgets WHERE session_id = ?", (session_id,)
        )
    }
    spent = dict.fromkeys(budgets, 0)
    payees: set[str] = set()
    used: dict[int, int] = {}
    for asset, amount, payee_key, line in conn.execute(
        f"SELECT asset, amount_minor, payee_key, plan_line FROM reservations"  # noqa: S608
        f" WHERE session_id = ? AND {_LIVE}",
        (session_id, now),
    ):
        spent[asset] = spent.get(asset, 0) + int(amount)
        payees.add(payee_key)
        if line is not None:
            used[line] = used.get(line, 0) + 1
    plan = tuple(
        PlanLineRecord(payee, key, asset, int(max_minor), count, used.get(idx, 0))
        for idx, payee, key, asset, max_minor, count in conn.execute(
            "SELECT idx, payee, payee_key, asset, max_amount_minor, count FROM plan_lines"
            " WHERE session_id = ? ORDER BY idx",
            (session_id,),
        )
    )
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
        phase=row[8],
        pack_id=row[9],
        plan=plan,
        payees=frozenset(payees),
        pack_version=row[10],
        pack_sha256=row[11],
    )


_DECISION_COLUMNS = (
    "id, created_at, agent_id, session_id, nonce, request_hash, outcome, reason, message,"
    " key_id, asset, amount_minor, payload, jws, trace, purpose, pack, payee, expires_at"
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
        pack_json=row[16],
        payee=row[17],
        expires_at=row[18],
    )


def _get_decision(conn: sqlite3.Connection, decision_id: str) -> DecisionRecord | None:
    row = conn.execute(
        f"SELECT {_DECISION_COLUMNS} FROM decisions WHERE id = ?",  # noqa: S608
        (decision_id,),
    ).fetchone()
    return _decision(row) if row is not None else None


def _approval(conn: sqlite3.Connection, where: str, key: str) -> ApprovalRecord | None:
    row = conn.execute(
        "SELECT id, decision_id, required, status, created_at, expires_at FROM approvals"  # noqa: S608
        f" WHERE {where} = ?",
        (key,),
    ).fetchone()
    if row is None:
        return None
    votes = conn.execute(
        "SELECT approver_id, vote, note FROM approval_votes WHERE approval_id = ? ORDER BY at,"
        " approver_id",
        (row[0],),
    ).fetchall()
    denied = [v for v in votes if v[1] == "deny"]
    return ApprovalRecord(
        id=row[0],
        decision_id=row[1],
        required=row[2],
        status=row[3],
        created_at=row[4],
        expires_at=row[5],
        approved_by=tuple(v[0] for v in votes if v[1] == "approve"),
        denied_by=denied[0][0] if denied else None,
        note=denied[0][2] if denied else "",
    )


def _set_reservation(conn: sqlite3.Connection, decision_id: str, status: str) -> bool:
    if status == "released":
        # Anything not yet signed can be released; a signed payment never is.
        cur = conn.execute(
            "UPDATE reservations SET status = 'released' WHERE decision_id = ?"
            " AND status != 'released' AND (SELECT jws FROM decisions WHERE id = ?) IS NULL",
            (decision_id, decision_id),
        )
        return cur.rowcount > 0
    cur = conn.execute(
        "UPDATE reservations SET status = ? WHERE decision_id = ? AND status = 'held'",
        (status, decision_id),
    )
    return cur.rowcount > 0


def _set_approval_status(conn: sqlite3.Connection, approval_id: str, status: str, now: int) -> None:
    conn.execute(
        "UPDATE approvals SET status = ?, decided_at = ? WHERE id = ? AND status IN"
        " ('pending', 'approved')",
        (status, now, approval_id),
    )


class _Tx:
    """What both deciding transactions can do."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def session(self, session_id: str, now: int) -> SessionRecord | None:
        return _session(self._conn, session_id, now)

    def set_reservation(self, decision_id: str, status: str) -> bool:
        return _set_reservation(self._conn, decision_id, status)

    def set_approval_status(self, approval_id: str, status: str, now: int) -> None:
        _set_approval_status(self._conn, approval_id, status, now)

    def audit(self, event: Mapping[str, Any]) -> int:
        return _append_audit(self._conn, event)

    def frozen(self, agent_id: str, session_id: str, key_id: str) -> Freeze | None:
        return _frozen(self._conn, agent_id, session_id, key_id)


class _PaymentTx(_Tx):
    def agent_usage(
        self, agent_id: str, asset: str, now: int, day_start: int, window_seconds: int
    ) -> AgentUsage:
        since = min(now - 86_400, day_start, now - window_seconds)
        rows = self._conn.execute(
            "SELECT asset, amount_minor, payee_key, created_at FROM reservations"  # noqa: S608
            f" WHERE agent_id = ? AND created_at >= ? AND {_LIVE}",
            (agent_id, since, now),
        ).fetchall()
        spent_24h = sum(int(a) for s, a, _p, t in rows if s == asset and t > now - 86_400)
        spent_today = sum(int(a) for s, a, _p, t in rows if s == asset and t >= day_start)
        in_window = sum(1 for _s, _a, _p, t in rows if t > now - window_seconds)
        today = frozenset(p for _s, _a, p, t in rows if t >= day_start)
        paid = frozenset(
            r[0]
            for r in self._conn.execute(
                "SELECT DISTINCT payee_key FROM reservations WHERE agent_id = ?"
                " AND status = 'spent'",
                (agent_id,),
            )
        )
        return AgentUsage(spent_24h, spent_today, in_window, paid, today)

    def decision_for_nonce(self, agent_id: str, nonce: str) -> DecisionRecord | None:
        row = self._conn.execute(
            f"SELECT {_DECISION_COLUMNS} FROM decisions"  # noqa: S608 - constant column list
            " WHERE id = (SELECT decision_id FROM nonces WHERE agent_id = ? AND nonce = ?)",
            (agent_id, nonce),
        ).fetchone()
        return _decision(row) if row is not None else None

    def approval_for_decision(self, decision_id: str) -> ApprovalRecord | None:
        return _approval(self._conn, "decision_id", decision_id)

    def record_decision(
        self,
        decision: DecisionRecord,
        *,
        consume_nonce: bool,
        reservation: Reservation | None = None,
        approval: ApprovalRecord | None = None,
    ) -> None:
        d = decision
        self._conn.execute(
            f"INSERT INTO decisions ({_DECISION_COLUMNS})"  # noqa: S608 - constant column list
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.id, d.created_at, d.agent_id, d.session_id, d.nonce, d.request_hash,
                d.outcome, d.reason, d.message, d.key_id, d.asset, str(d.amount_minor),
                d.payload, d.jws, d.trace_json, d.purpose, d.pack_json, d.payee, d.expires_at,
            ),
        )  # fmt: skip
        if consume_nonce:
            # PRIMARY KEY: a second insert of the agent's nonce fails the transaction.
            self._conn.execute(
                "INSERT INTO nonces (agent_id, nonce, decision_id) VALUES (?, ?, ?)",
                (d.agent_id, d.nonce, d.id),
            )
        if reservation is not None:
            self._reserve(reservation)
        if approval is not None:
            a = approval
            self._conn.execute(
                "INSERT INTO approvals (id, decision_id, required, status, created_at,"
                " expires_at) VALUES (?, ?, ?, 'pending', ?, ?)",
                (a.id, a.decision_id, a.required, a.created_at, a.expires_at),
            )

    def _reserve(self, r: Reservation) -> None:
        row = self._conn.execute(
            "SELECT budget_minor FROM session_budgets WHERE session_id = ? AND asset = ?",
            (r.session_id, r.asset),
        ).fetchone()
        if row is None:
            raise InvariantBroken(f"session {r.session_id} has no budget in {r.asset}")
        # Only this asset's live spend: the whole session was read for the facts already.
        spent = sum(
            int(amount)
            for (amount,) in self._conn.execute(
                "SELECT amount_minor FROM reservations"  # noqa: S608 - _LIVE is a constant
                f" WHERE session_id = ? AND asset = ? AND {_LIVE}",
                (r.session_id, r.asset, r.created_at),
            )
        )
        if spent + r.amount_minor > int(row[0]):
            # the policy said yes on the facts of this very transaction;
            # reaching this means a bug, and the whole transaction is undone
            raise InvariantBroken("spend would exceed the session budget")
        self._conn.execute(
            "INSERT INTO reservations (decision_id, agent_id, session_id, asset, payee_key,"
            " amount_minor, created_at, expires_at, status, plan_line)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.decision_id, r.agent_id, r.session_id, r.asset, r.payee_key,
                str(r.amount_minor), r.created_at, r.expires_at, r.status, r.plan_line,
            ),
        )  # fmt: skip

    def window_stats(self, agent_id: str, since: int) -> WindowStats:
        # An operator's unfreeze starts the breaker's window afresh for the agent.
        reset = self._conn.execute(
            "SELECT at FROM breaker_resets WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        if reset is not None:
            since = max(since, int(reset[0]))
        decided = self._conn.execute(
            "SELECT outcome, COUNT(*) FROM decisions WHERE agent_id = ? AND created_at > ?"
            " GROUP BY outcome",
            (agent_id, since),
        ).fetchall()
        counts = dict(decided)
        spend: dict[str, int] = {}
        payees: set[str] = set()
        for asset, amount, payee in self._conn.execute(
            "SELECT asset, amount_minor, payee_key FROM reservations WHERE agent_id = ?"
            " AND created_at > ? AND status != 'released'",
            (agent_id, since),
        ):
            spend[asset] = spend.get(asset, 0) + int(amount)
            payees.add(payee)
        return WindowStats(
            decisions=sum(counts.values()),
            denials=counts.get("deny", 0),
            spend_minor=spend,
            payees=frozenset(payees),
        )

    def freeze(self, freeze: Freeze) -> bool:
        return _freeze(self._conn, freeze)


class _ApprovalTx(_Tx):
    def approval(self, approval_id: str) -> ApprovalRecord | None:
        return _approval(self._conn, "id", approval_id)

    def decision(self, decision_id: str) -> DecisionRecord | None:
        return _get_decision(self._conn, decision_id)

    def add_vote(self, approval_id: str, approver_id: str, vote: str, now: int, note: str) -> None:
        # A second approval by the same approver counts once; a denial always
        # records who denied and why, even after that approver approved.
        conflict = (
            "DO UPDATE SET vote = 'deny', at = excluded.at, note = excluded.note"
            if vote == "deny"
            else "DO NOTHING"
        )
        self._conn.execute(
            "INSERT INTO approval_votes (approval_id, approver_id, vote, at, note)"  # noqa: S608
            f" VALUES (?, ?, ?, ?, ?) ON CONFLICT (approval_id, approver_id) {conflict}",
            (approval_id, approver_id, vote, now, note),
        )


def _freeze(conn: sqlite3.Connection, f: Freeze) -> bool:
    """Adds a freeze; False when the same scope and target were frozen already."""
    changed = conn.execute(
        "INSERT OR IGNORE INTO freezes (scope, target, reason, actor, source, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (f.scope, f.target, f.reason, f.actor, f.source, f.at),
    ).rowcount
    return bool(changed)


class SqliteStore:
    def __init__(self, path: Path, *, lock_timeout: float = 10.0) -> None:
        self.path = path
        self._lock_timeout = lock_timeout
        self._not_after: float | None = None  # no wait ends later (while stopping)
        self._closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Decisions and purposes are private: owner-only file (the WAL and
            # shared-memory files SQLite makes take the same mode).
            path.touch(mode=0o600, exist_ok=True)
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=lock_timeout
            )
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the store at {path} cannot use WAL mode (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        self._lock = threading.Lock()
        self._freeze_generation = 0

    def _left(self, ends: float) -> float:
        """Seconds left of a wait that ends at ``ends``, or earlier once the server stops."""
        if self._not_after is not None:
            ends = min(ends, self._not_after)
        return ends - time.monotonic()

    @contextmanager
    def _locked(self, wait: float | None) -> Iterator[float]:
        """Holds the in-process lock; yields when the wait for the locks ends: ``wait``
        seconds from now, never more than the store's lock timeout. The wait is taken in
        slices so that a server that starts stopping meanwhile shortens it."""
        budget = self._lock_timeout if wait is None else min(max(wait, 0.0), self._lock_timeout)
        ends = time.monotonic() + budget
        while not self._lock.acquire(timeout=max(0.0, min(_SLICE, self._left(ends)))):
            if self._left(ends) <= 0:
                raise StoreError(f"store busy: waited {budget:.2f} s for the lock")
        try:
            if self._closed:  # a call that outlived the server's stop
                raise StoreError("the store is closed")
            yield ends
        finally:
            self._lock.release()

    def _begin(self, ends: float) -> None:
        """``BEGIN IMMEDIATE``, retried in slices of SQLite's busy timeout until ``ends``."""
        while True:
            left = self._left(ends)
            try:
                self._conn.execute(
                    f"PRAGMA busy_timeout = {int(max(0.0, min(_SLICE, left)) * 1000)}"
                )
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or self._left(ends) <= 0:
                    raise StoreError(f"store unavailable: {exc}") from None
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from None

    @contextmanager
    def _write(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, waiting at most ``wait`` seconds for the
        locks. ``check`` runs once the lock is taken and again just before the commit:
        whatever it raises abandons the transaction (a caller whose deadline passed)."""
        with self._locked(wait) as ends:
            self._begin(ends)
            try:
                if check is not None:
                    check()
                yield self._conn
                if check is not None:
                    check()
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from None

    def _read(self, fn: Any, *args: Any) -> Any:
        with self._locked(None):
            try:
                return fn(self._conn, *args)
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from None

    def migrate(self) -> int:
        with self._write() as conn:
            return schema.migrate(conn)

    def check(self) -> None:
        """Can a decision be committed now? The probe commits a one-row write on its own
        connection, as a decision would: a full disk, a read-only file or a lock held
        too long fail it. A short timeout, so that it never waits behind the service."""
        try:
            probe = sqlite3.connect(str(self.path), isolation_level=None, timeout=1.0)
            try:
                probe.execute("PRAGMA synchronous=FULL")
                probe.execute("BEGIN IMMEDIATE")
                probe.execute(
                    "INSERT INTO health_probe (id, probes) VALUES (1, 1)"
                    " ON CONFLICT (id) DO UPDATE SET probes = probes + 1"
                )
                probe.execute("COMMIT")
            finally:
                if probe.in_transaction:
                    probe.execute("ROLLBACK")
                probe.close()
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    def adopt_decimals(self, decimals: Mapping[str, int]) -> list[str]:
        """Amounts are stored in minor units: the assets whose stored decimals
        differ from ``decimals`` (rows from before decimals were kept adopt them)."""
        with self._write() as conn:
            for asset, places in decimals.items():
                conn.execute(
                    "UPDATE session_budgets SET decimals = ? WHERE asset = ? AND decimals IS NULL",
                    (places, asset),
                )
            stored = conn.execute("SELECT DISTINCT asset, decimals FROM session_budgets").fetchall()
        return sorted({a for a, d in stored if decimals.get(a) != d})

    def create_session(
        self, session: SessionRecord, decimals: Mapping[str, int], audit: Mapping[str, Any]
    ) -> None:
        s = session
        try:
            with self._write() as conn:
                _append_audit(conn, audit)
                conn.execute(
                    "INSERT INTO sessions (id, agent_id, planner_id, task_digest, created_at,"
                    " expires_at, closed_at, allowed_payees, phase, pack_id, pack_version,"
                    " pack_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        s.id, s.agent_id, s.planner_id, s.task_digest, s.created_at,
                        s.expires_at, s.closed_at, json.dumps(list(s.allowed_payees)),
                        s.phase, s.pack_id, s.pack_version, s.pack_sha256,
                    ),
                )  # fmt: skip
                for asset, budget in s.budgets_minor.items():
                    conn.execute(
                        "INSERT INTO session_budgets (session_id, asset, budget_minor, decimals)"
                        " VALUES (?, ?, ?, ?)",
                        (s.id, asset, str(budget), decimals[asset]),
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot create session: {exc}") from None

    def get_session(self, session_id: str, now: int) -> SessionRecord | None:
        result: SessionRecord | None = self._read(_session, session_id, now)
        return result

    def close_session(
        self, session_id: str, now: int, audit: Mapping[str, Any]
    ) -> SessionRecord | None:
        try:
            with self._write() as conn:
                changed = conn.execute(
                    "UPDATE sessions SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                    (now, session_id),
                ).rowcount
                if not changed:  # unknown or closed already: nothing happened, nothing to log
                    return _session(conn, session_id, now)
                # Nothing unsigned in a closed session can ever be signed: expire its
                # approvals and release what it held.
                conn.execute(
                    "UPDATE approvals SET status = 'expired', decided_at = ? WHERE status IN"
                    " ('pending', 'approved') AND decision_id IN (SELECT id FROM decisions"
                    " WHERE session_id = ? AND jws IS NULL)",
                    (now, session_id),
                )
                conn.execute(
                    "UPDATE reservations SET status = 'released' WHERE status != 'released'"
                    " AND decision_id IN (SELECT id FROM decisions WHERE session_id = ?"
                    " AND jws IS NULL)",
                    (session_id,),
                )
                _append_audit(conn, audit)
                return _session(conn, session_id, now)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot close session: {exc}") from None

    def commit_plan(
        self,
        session_id: str,
        lines: tuple[PlanLineRecord, ...],
        now: int,
        audit: Mapping[str, Any],
    ) -> SessionRecord | None:
        try:
            with self._write() as conn:
                changed = conn.execute(
                    "UPDATE sessions SET phase = 'execute' WHERE id = ? AND phase = 'explore'"
                    " AND closed_at IS NULL",
                    (session_id,),
                ).rowcount
                if changed != 1:
                    return None
                _append_audit(conn, audit)
                for idx, line in enumerate(lines):
                    conn.execute(
                        "INSERT INTO plan_lines (session_id, idx, payee, payee_key, asset,"
                        " max_amount_minor, count) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            session_id, idx, line.payee, line.payee_key, line.asset,
                            str(line.max_amount_minor), line.count,
                        ),
                    )  # fmt: skip
                return _session(conn, session_id, now)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot commit the plan: {exc}") from None

    @contextmanager
    def payment_tx(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> Iterator[_PaymentTx]:
        try:
            with self._write(wait, check) as conn:
                yield _PaymentTx(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    @contextmanager
    def approval_tx(self) -> Iterator[_ApprovalTx]:
        try:
            with self._write() as conn:
                yield _ApprovalTx(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    def attach_signature(
        self,
        decision_id: str,
        jws: str,
        clock: Callable[[], int],
        wait: float | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[str, bool] | None:
        """Attaches the JWS only while the payment is still committed: its reservation
        spent and unexpired at ``clock()`` read under the write lock, for a held payment
        its approval approved, and nothing frozen. Otherwise (the session was closed,
        the payment expired, was withdrawn or frozen while the HSM signed, or while this
        call waited for the lock) the signature is thrown away and None is returned. An
        expired unsigned payment's spend has lapsed already and may be in use by another."""
        try:
            with self._write(wait, check) as conn:
                now = clock()  # not before the wait: the spend may have lapsed meanwhile
                attached = conn.execute(
                    "UPDATE decisions SET jws = ? WHERE id = ? AND jws IS NULL"
                    " AND payload IS NOT NULL AND ("
                    "   (outcome = 'allow') OR (outcome = 'pending' AND EXISTS (SELECT 1 FROM"
                    "   approvals WHERE decision_id = ? AND status = 'approved')))"
                    " AND EXISTS (SELECT 1 FROM reservations WHERE decision_id = ?"
                    "   AND status = 'spent' AND expires_at > ?)"
                    # the kill switch wins over a signature made after it was set
                    " AND NOT EXISTS (SELECT 1 FROM freezes WHERE scope = 'global'"
                    "   OR (scope = 'agent' AND target = decisions.agent_id)"
                    "   OR (scope = 'session' AND target = decisions.session_id)"
                    "   OR (scope = 'key' AND target = decisions.key_id))",
                    (jws, decision_id, decision_id, decision_id, now),
                ).rowcount
                row = conn.execute(
                    "SELECT jws FROM decisions WHERE id = ?", (decision_id,)
                ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the signature: {exc}") from None
        if row is None or row[0] is None:
            return None
        stored: str = row[0]
        return stored, bool(attached)

    def get_decision(self, decision_id: str) -> DecisionRecord | None:
        """One decision as recorded: for tests and inspection, not part of ``Store``."""
        result: DecisionRecord | None = self._read(_get_decision, decision_id)
        return result

    def pending_approvals(self, now: int) -> list[ApprovalRecord]:
        def read(conn: sqlite3.Connection) -> list[ApprovalRecord]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM approvals WHERE status = 'pending' AND expires_at > ?"
                    " ORDER BY created_at, id",
                    (now,),
                )
            ]
            return [a for a in (_approval(conn, "id", i) for i in ids) if a is not None]

        result: list[ApprovalRecord] = self._read(read)
        return result

    # -- audit log and freezes ------------------------------------------------------

    def audit_event(self, event: Mapping[str, Any]) -> int:
        try:
            with self._write() as conn:
                return _append_audit(conn, event)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot append to the audit log: {exc}") from None

    def audit_head(self) -> tuple[int, bytes]:
        state: AuditState = self._read(_audit_state)
        return state.size, state.root

    def latest_audit_time(self) -> int:
        row = self._read(
            lambda c: c.execute(
                "SELECT body FROM audit_log WHERE seq = (SELECT size FROM audit_state WHERE id = 1)"
            ).fetchone()
        )
        if row is None:
            return 0
        try:
            return int(json.loads(row[0])["time"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the audit log's head has no readable time: {exc}") from None

    def audit_leaves(self, size: int) -> list[bytes]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT leaf FROM audit_log WHERE seq <= ? ORDER BY seq", (size,)
            ).fetchall()
        )
        return [bytes(r[0]) for r in rows]

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        c = checkpoint
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO audit_checkpoints (size, root, at, key_id, body,"
                    " signature) VALUES (?, ?, ?, ?, ?, ?)",
                    (c.size, c.root, c.at, c.key_id, c.body, c.signature),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store the checkpoint: {exc}") from None

    def last_checkpoint(self) -> Checkpoint | None:
        row = self._read(
            lambda c: c.execute(
                "SELECT size, root, at, key_id, body, signature FROM audit_checkpoints"
                " ORDER BY size DESC LIMIT 1"
            ).fetchone()
        )
        return Checkpoint(*row) if row is not None else None

    def audit_record(self, seq: int) -> str:
        row = self._read(
            lambda c: c.execute("SELECT body FROM audit_log WHERE seq = ?", (seq,)).fetchone()
        )
        if row is None:
            raise StoreError(f"audit record {seq} is missing")
        return str(row[0])

    def set_freeze(self, freeze: Freeze, audit: Mapping[str, Any]) -> bool:
        try:
            with self._write() as conn:
                added = _freeze(conn, freeze)
                if added:
                    _append_audit(conn, audit)
                    self._freeze_generation += 1  # under the lock, before the commit
                return added
        except sqlite3.Error as exc:
            raise StoreError(f"cannot freeze: {exc}") from None

    def clear_freeze(self, scope: str, target: str, now: int, audit: Mapping[str, Any]) -> bool:
        try:
            with self._write() as conn:
                removed = conn.execute(
                    "DELETE FROM freezes WHERE scope = ? AND target = ?", (scope, target)
                ).rowcount
                if removed and scope == "agent":
                    conn.execute(
                        "INSERT OR REPLACE INTO breaker_resets (agent_id, at) VALUES (?, ?)",
                        (target, now),
                    )
                if removed:
                    _append_audit(conn, audit)
                    self._freeze_generation += 1  # under the lock, before the commit
                return bool(removed)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot unfreeze: {exc}") from None

    def freezes(self) -> list[Freeze]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT scope, target, reason, actor, source, at FROM freezes ORDER BY at, scope"
            ).fetchall()
        )
        return [Freeze(*r) for r in rows]

    def wait_until(self, not_after: float | None) -> None:
        """Ends every lock wait by ``not_after`` (``time.monotonic``; None lifts it): while
        the server drains, no call outlives the grace period waiting for the store."""
        self._not_after = not_after

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()

    def freeze_generation(self) -> int:
        return self._freeze_generation


def read_audit_log(
    path: Path,
) -> tuple[list[tuple[int, str, bytes | None]], list[Checkpoint]]:
    """The audit log's raw rows (seq, body, leaf) and its checkpoints, for offline
    checks that trust nothing: read-only, no migration, one read transaction."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        # One read transaction: a checkpoint committed between two reads would
        # otherwise cover records that were not read.
        conn.execute("BEGIN")
        records = [
            (int(s), str(b), bytes(h) if h is not None else None)
            for s, b, h in conn.execute("SELECT seq, body, leaf FROM audit_log ORDER BY rowid")
        ]
        checkpoints = [
            Checkpoint(*r)
            for r in conn.execute(
                "SELECT size, root, at, key_id, body, signature FROM audit_checkpoints"
                " ORDER BY size"
            )
        ]
        conn.execute("COMMIT")
    finally:
        conn.close()
    return records, checkpoints

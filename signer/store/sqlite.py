"""SQLite implementation of :class:`~paywarden.signer.store.protocols.Store`.

WAL mode with ``synchronous=FULL``: a decision is on disk before its
signature leaves the service (the connection and its locks:
:mod:`.sqlite_connection`). Amounts are integers in the asset's smallest unit,
stored as decimal TEXT so that no asset can overflow SQLite's 64-bit integers;
sums are made in Python. Reads shared with the transactions are in
:mod:`.sqlite_reads`, writes inside a transaction in :mod:`.sqlite_tx`, the payment
key versions in :mod:`.sqlite_keys`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from paywarden.policy.vocabulary import FreezeScope, PlanLine
from paywarden.signer.auditlog.append import AuditState
from paywarden.signer.store import mandate_reads, sqlite_agent
from paywarden.signer.store import sqlite_reads as reads
from paywarden.signer.store import sqlite_tx as tx
from paywarden.signer.store.payment_reads import SqlPaymentReads
from paywarden.signer.store.records import (
    AgentOverview,
    ApprovalRecord,
    Checkpoint,
    DecisionAudit,
    DecisionRecord,
    Freeze,
    MandateRecord,
    Revocation,
    RevocationKind,
    SessionRecord,
    StoreError,
)
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite_connection import SqliteConnection
from paywarden.signer.store.sqlite_keys import SqliteKeyStore
from paywarden.signer.store.sqlite_mandates import SqlMandates
from paywarden.signer.store.sqlite_reloads import SqlitePolicyReloads
from paywarden.signer.store.sqlite_tx import (
    SqliteApprovalTx,
    SqlitePaymentBatch,
    SqlitePaymentTx,
    SqliteSessionTx,
)


class SqlStore(SqlitePolicyReloads, SqliteKeyStore, SqlPaymentReads, SqlMandates):
    """Every use case's protocol (:class:`~paywarden.signer.store.protocols.Store`) in the
    SQL both backends run, on a backend's :class:`~.connection.Connection`."""

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
        self,
        session: SessionRecord,
        decimals: Mapping[str, int],
        audit: Mapping[str, Any],
        mandate: MandateRecord | None = None,
        presentation: str | None = None,
    ) -> None:
        s = session
        if s.mandate_id != (mandate.id if mandate is not None else None):
            raise ValueError("a session carries the id of the mandate it is opened from")
        try:
            with self._write() as conn:
                if mandate is not None:  # refused before anything is written
                    mandate_reads.open_mandate(conn, mandate)
                    if presentation is not None:
                        mandate_reads.present(conn, presentation, mandate.id, s.created_at)
                tx.append_audit(conn, audit)
                conn.execute(
                    "INSERT INTO sessions (id, agent_id, planner_id, task_digest, created_at,"
                    " expires_at, closed_at, allowed_payees, phase, pack_id, pack_version,"
                    " pack_sha256, mandate_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        s.id, s.agent_id, s.planner_id, s.task_digest, s.created_at,
                        s.expires_at, s.closed_at, json.dumps(list(s.allowed_payees)),
                        s.phase, s.pack_id, s.pack_version, s.pack_sha256, s.mandate_id,
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
        result: SessionRecord | None = self._read(reads.session, session_id, now)
        return result

    @contextmanager
    def session_tx(self) -> Iterator[SqliteSessionTx]:
        try:
            with self._write() as conn:
                yield SqliteSessionTx(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot close session: {exc}") from None

    def commit_plan(
        self,
        session_id: str,
        lines: tuple[PlanLine, ...],
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
                tx.append_audit(conn, audit)
                for idx, line in enumerate(lines):
                    conn.execute(
                        "INSERT INTO plan_lines (session_id, idx, payee, payee_key, asset,"
                        " max_amount_minor, count) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            session_id, idx, line.payee, line.payee_key, line.asset,
                            str(line.max_amount_minor), line.count,
                        ),
                    )  # fmt: skip
                return reads.session(conn, session_id, now)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot commit the plan: {exc}") from None

    @contextmanager
    def payment_tx(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> Iterator[SqlitePaymentTx]:
        try:
            with self._write(wait, check) as conn:
                yield SqlitePaymentTx(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    @contextmanager
    def payment_batch(self, wait: float | None = None) -> Iterator[SqlitePaymentBatch]:
        batch: SqlitePaymentBatch | None = None
        try:
            with self._write(wait) as conn:
                batch = SqlitePaymentBatch(conn)
                yield batch
                if batch.broken:  # an item could not be undone: nothing of the batch commits
                    raise StoreError("a decision of the batch could not be rolled back")
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    @contextmanager
    def approval_tx(self) -> Iterator[SqliteApprovalTx]:
        try:
            with self._write() as conn:
                yield SqliteApprovalTx(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    def get_decision(self, decision_id: str) -> DecisionRecord | None:
        """One decision as recorded: for tests and inspection, not part of ``Store``."""
        result: DecisionRecord | None = self._read(reads.decision_by_id, decision_id)
        return result

    def pending_approvals(self, now: int) -> list[ApprovalRecord]:
        def read(conn: Conn) -> list[ApprovalRecord]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM approvals WHERE status = 'pending' AND expires_at > ?"
                    " ORDER BY created_at, id",
                    (now,),
                )
            ]
            return [a for a in (reads.approval(conn, "id", i) for i in ids) if a is not None]

        result: list[ApprovalRecord] = self._read(read)
        return result

    # -- audit log and freezes ------------------------------------------------------

    def audit_event(self, event: Mapping[str, Any]) -> int:
        try:
            with self._write() as conn:
                return tx.append_audit(conn, event)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot append to the audit log: {exc}") from None

    def audit_head(self) -> tuple[int, bytes]:
        state: AuditState = self._read(reads.audit_state)
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

    def audit_subtrees(self, nodes: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        result: dict[tuple[int, int], bytes] = self._read(reads.audit_subtrees, list(nodes))
        return result

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        c = checkpoint
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO audit_checkpoints (size, root, at, key_id, body, signature)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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

    def decision_audit(self, decision_id: str) -> DecisionAudit | None:
        row = self._read(
            lambda c: c.execute(
                "SELECT d.request_hash, a.seq, d.payee, d.jws IS NOT NULL FROM decisions d"
                " LEFT JOIN decision_audit a ON a.decision_id = d.id WHERE d.id = ?",
                (decision_id,),
            ).fetchone()
        )
        if row is None:
            return None
        seq = None if row[1] is None else int(row[1])
        return DecisionAudit(str(row[0]), seq, str(row[2]), bool(row[3]))

    def set_freeze(self, freeze: Freeze, audit: Mapping[str, Any]) -> bool:
        try:
            with self._write() as conn:
                added = tx.add_freeze(conn, freeze)
                if added:
                    tx.append_audit(conn, audit)
                    self._freeze_generation += 1  # under the lock, before the commit
                return added
        except sqlite3.Error as exc:
            raise StoreError(f"cannot freeze: {exc}") from None

    def clear_freeze(
        self, scope: FreezeScope, target: str, now: int, audit: Mapping[str, Any]
    ) -> bool:
        try:
            with self._write() as conn:
                removed = conn.execute(
                    "DELETE FROM freezes WHERE scope = ? AND target = ?", (scope, target)
                ).rowcount
                if removed and scope == FreezeScope.AGENT:
                    conn.execute(
                        "INSERT INTO breaker_resets (agent_id, at) VALUES (?, ?)"
                        " ON CONFLICT (agent_id) DO UPDATE SET at = excluded.at",
                        (target, now),
                    )
                if removed:
                    tx.append_audit(conn, audit)
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
        return [reads.freeze_row(r) for r in rows]

    def freeze_generation(self) -> int:
        return self._freeze_generation

    # -- revoked identities ----------------------------------------------------------

    def revoke(self, revocation: Revocation, audit: Mapping[str, Any]) -> bool:
        r = revocation
        try:
            with self._write() as conn:
                added = conn.execute(
                    "INSERT INTO revocations (kind, value, reason, operator, created_at)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (r.kind, r.value, r.reason, r.operator, r.created_at),
                ).rowcount
                if added:
                    tx.append_audit(conn, audit)
                    self._revocation_generation += 1  # under the lock, before the commit
                return bool(added)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot revoke: {exc}") from None

    def revocations(self) -> list[Revocation]:
        rows = self._read(
            lambda c: c.execute(
                "SELECT kind, value, reason, operator, created_at FROM revocations"
                " ORDER BY created_at, rowid"
            ).fetchall()
        )
        return [Revocation(RevocationKind(k), v, why, op, at) for k, v, why, op, at in rows]

    def revocations_after(self, position: int) -> tuple[list[Revocation], int]:
        # The rowid: never reused (nothing is deleted), and handed out in commit order
        # (one writer at a time): a reader that saw a row has seen every earlier one.
        rows = self._read(
            lambda c: c.execute(
                "SELECT rowid, kind, value, reason, operator, created_at FROM revocations"
                " WHERE rowid > ? ORDER BY rowid",
                (position,),
            ).fetchall()
        )
        found = [Revocation(RevocationKind(k), v, why, op, at) for _, k, v, why, op, at in rows]
        return found, rows[-1][0] if rows else position

    def revocation_generation(self) -> int:
        return self._revocation_generation

    # -- an agent's overview ---------------------------------------------------------

    def agent_overview(
        self,
        agent_id: str,
        *,
        assets: Collection[str],
        keys: Collection[str],
        now: int,
        day_start: int,
        velocity_seconds: int,
        breaker_seconds: int | None,
        max_sessions: int,
    ) -> AgentOverview:
        def read(conn: Conn) -> AgentOverview:
            return sqlite_agent.agent_overview(
                conn,
                agent_id,
                assets=assets,
                keys=keys,
                now=now,
                day_start=day_start,
                velocity_seconds=velocity_seconds,
                breaker_seconds=breaker_seconds,
                max_sessions=max_sessions,
            )

        result: AgentOverview = self._read_snapshot(read)  # one snapshot for every part
        return result


class SqliteStore(SqlStore, SqliteConnection):
    """:class:`SqlStore` on one SQLite file (WAL, ``BEGIN IMMEDIATE``)."""

    def __init__(self, path: Path, *, lock_timeout: float = 10.0) -> None:
        super().__init__(path, lock_timeout=lock_timeout)

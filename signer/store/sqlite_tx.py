"""The SQLite store's writes inside a transaction the caller holds: the audit append
(built by :func:`paywarden.signer.auditlog.append.append`, persisted here), the
reservation, approval and freeze updates, and the deciding transactions
(:class:`~paywarden.signer.store.protocols.PaymentTx`,
:class:`~paywarden.signer.store.protocols.ApprovalTx`), closing a session's
(:class:`~paywarden.signer.store.protocols.SessionTx`) and attaching a signature's
(:class:`~paywarden.signer.store.protocols.SignatureTx`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from paywarden.policy.vocabulary import ApprovalStatus, ReservationStatus, Vote
from paywarden.signer.auditlog import append
from paywarden.signer.store import mandate_reads
from paywarden.signer.store import sqlite_facts as facts
from paywarden.signer.store import sqlite_key_rows as keys
from paywarden.signer.store import sqlite_reads as reads
from paywarden.signer.store import sqlite_session_facts as session_facts
from paywarden.signer.store.decision_text import pack_text, trace_text
from paywarden.signer.store.records import (
    AgentUsage,
    ApprovalRecord,
    DecisionRecord,
    Freeze,
    InvariantBroken,
    KeyVersion,
    MandateRecord,
    MandateUse,
    Reservation,
    SessionRecord,
    StoreError,
    WindowStats,
)
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite_agent import breaker_window


def append_audit(conn: Conn, event: Mapping[str, Any]) -> int:
    """Appends one record in the caller's transaction (see :func:`append.grow`), with
    the perfect subtrees its leaf completed; returns its sequence number."""
    grown = append.grow(reads.audit_state(conn), event)
    record, leaf, state = grown.appended
    conn.execute(
        "INSERT INTO audit_log (seq, body, leaf) VALUES (?, ?, ?)", (state.size, record, leaf)
    )
    if grown.nodes:
        conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", grown.nodes)
    conn.execute(
        "UPDATE audit_state SET size = ?, frontier = ? WHERE id = 1",
        (state.size, json.dumps([[s, h.hex()] for s, h in state.frontier])),
    )
    return state.size


def set_reservation(conn: Conn, decision_id: str, status: ReservationStatus) -> bool:
    if status == ReservationStatus.RELEASED:
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
    facts.settle(conn, decision_id)  # a held payment signed already: spent now
    return cur.rowcount > 0


def set_approval_status(conn: Conn, approval_id: str, status: ApprovalStatus, now: int) -> None:
    conn.execute(
        "UPDATE approvals SET status = ?, decided_at = ? WHERE id = ? AND status IN"
        " ('pending', 'approved')",
        (status, now, approval_id),
    )


class SqliteTx:
    """What both deciding transactions can do."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def session(self, session_id: str, now: int) -> SessionRecord | None:
        return reads.session(self._conn, session_id, now)

    def set_reservation(self, decision_id: str, status: ReservationStatus) -> bool:
        return set_reservation(self._conn, decision_id, status)

    def set_approval_status(self, approval_id: str, status: ApprovalStatus, now: int) -> None:
        set_approval_status(self._conn, approval_id, status, now)

    def audit(self, event: Mapping[str, Any]) -> int:
        return append_audit(self._conn, event)

    def frozen(self, agent_id: str, session_id: str, key_id: str) -> Freeze | None:
        return reads.frozen(self._conn, agent_id, session_id, key_id)


class SqliteSessionTx(SqliteTx):
    """Closing a session (:class:`~paywarden.signer.store.protocols.SessionTx`)."""

    def mark_closed(self, session_id: str, now: int) -> bool:
        changed = self._conn.execute(
            "UPDATE sessions SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
            (now, session_id),
        ).rowcount
        return bool(changed)

    def unsigned_decisions(self, session_id: str) -> list[str]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT id FROM decisions WHERE session_id = ? AND jws IS NULL AND ("
                " EXISTS (SELECT 1 FROM reservations WHERE decision_id = decisions.id"
                "   AND status != 'released')"
                " OR EXISTS (SELECT 1 FROM approvals WHERE decision_id = decisions.id"
                "   AND status IN ('pending', 'approved'))) ORDER BY created_at, id",
                (session_id,),
            )
        ]

    def approval_for_decision(self, decision_id: str) -> ApprovalRecord | None:
        return reads.approval(self._conn, "decision_id", decision_id)


class SqliteSignatureTx(SqliteTx):
    """Attaching a signature (:class:`~paywarden.signer.store.protocols.SignatureTx`)."""

    def decision(self, decision_id: str) -> DecisionRecord | None:
        return reads.decision_by_id(self._conn, decision_id)

    def approval_for_decision(self, decision_id: str) -> ApprovalRecord | None:
        return reads.approval(self._conn, "decision_id", decision_id)

    def reservation(self, decision_id: str) -> Reservation | None:
        return reads.reservation(self._conn, decision_id)

    def set_signature(self, decision_id: str, jws: str) -> bool:
        changed = self._conn.execute(
            "UPDATE decisions SET jws = ? WHERE id = ? AND jws IS NULL", (jws, decision_id)
        ).rowcount
        facts.settle(self._conn, decision_id)
        return bool(changed)


class SqlitePaymentTx(SqliteSignatureTx):
    """The Sign decision's transaction, which attaches its signature too."""

    def key_version(self, key_id: str) -> KeyVersion | None:
        return keys.key_version(self._conn, key_id)

    def active_key(self, label: str) -> KeyVersion | None:
        return keys.active_key(self._conn, label)

    def agent_usage(
        self,
        agent_id: str,
        asset: str,
        payee_key: str,
        now: int,
        day_start: int,
        window_seconds: int,
    ) -> AgentUsage:
        return facts.agent_usage(
            self._conn, agent_id, asset, payee_key, now, day_start, window_seconds
        )

    def payee_in_session(self, session_id: str, payee_key: str, now: int) -> bool:
        return session_facts.payee_in_session(self._conn, session_id, payee_key, now)

    def decision_for_nonce(self, agent_id: str, nonce: str) -> DecisionRecord | None:
        row = self._conn.execute(
            f"SELECT {reads.DECISION_COLUMNS} FROM decisions"  # noqa: S608 - constant column list
            " WHERE id = (SELECT decision_id FROM nonces WHERE agent_id = ? AND nonce = ?)",
            (agent_id, nonce),
        ).fetchone()
        return reads.decision(row) if row is not None else None

    def approval_for_decision(self, decision_id: str) -> ApprovalRecord | None:
        return reads.approval(self._conn, "decision_id", decision_id)

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
            f"INSERT INTO decisions ({reads.DECISION_COLUMNS})"  # noqa: S608 - constant column list
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                d.id, d.created_at, d.agent_id, d.session_id, d.nonce, d.request_hash,
                d.outcome, d.reason, d.message, d.key_id, d.asset, str(d.amount_minor),
                d.payload, d.jws, trace_text(d.trace), d.purpose, pack_text(d.pack), d.payee,
                d.expires_at,
            ),
        )  # fmt: skip
        if consume_nonce:
            # PRIMARY KEY: a second insert of the agent's nonce fails the transaction.
            self._conn.execute(
                "INSERT INTO nonces (agent_id, nonce, decision_id) VALUES (?, ?, ?)",
                (d.agent_id, d.nonce, d.id),
            )
        facts.count_decision(self._conn, d.agent_id, d.created_at, d.outcome)
        if reservation is not None:
            self._reserve(reservation)
            facts.settle(self._conn, reservation.decision_id)  # signed in the same commit
        if approval is not None:
            a = approval
            self._conn.execute(
                "INSERT INTO approvals (id, decision_id, required, status, created_at,"
                " expires_at) VALUES (?, ?, ?, 'pending', ?, ?)",
                (a.id, a.decision_id, a.required, a.created_at, a.expires_at),
            )

    def decision_audited(self, decision_id: str, seq: int) -> None:
        self._conn.execute(
            "INSERT INTO decision_audit (decision_id, seq) VALUES (?, ?)", (decision_id, seq)
        )

    def budget(self, session_id: str, asset: str) -> int | None:
        row = self._conn.execute(
            "SELECT budget_minor FROM session_budgets WHERE session_id = ? AND asset = ?",
            (session_id, asset),
        ).fetchone()
        return int(row[0]) if row is not None else None

    def live_spend(self, session_id: str, asset: str, now: int) -> int:
        return session_facts.live_spend(self._conn, session_id, asset, now)

    def _reserve(self, r: Reservation) -> None:
        # The session's mandate is the reservation's: its spend counts against the
        # mandate even if the caller left it out, and naming another mandate is a bug.
        mandate = "(SELECT mandate_id FROM sessions WHERE id = ?)"
        stored, session_mandate = self._conn.execute(
            "INSERT INTO reservations (decision_id, agent_id, session_id, asset, payee_key,"  # noqa: S608 - constant text
            " amount_minor, created_at, expires_at, status, plan_line, mandate_id)"
            f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, {mandate}))"
            f" RETURNING mandate_id, {mandate}",
            (
                r.decision_id, r.agent_id, r.session_id, r.asset, r.payee_key,
                str(r.amount_minor), r.created_at, r.expires_at, r.status, r.plan_line,
                r.mandate_id, r.session_id, r.session_id,
            ),
        ).fetchone()  # fmt: skip
        if stored != session_mandate:
            raise InvariantBroken(f"a reservation of mandate {stored} in a session of another")

    def mandate(self, mandate_id: str, now: int) -> tuple[MandateRecord, MandateUse] | None:
        return mandate_reads.mandate(self._conn, mandate_id, now)

    def window_stats(self, agent_id: str, since: int, payee_key: str) -> WindowStats:
        # An operator's unfreeze starts the breaker's window afresh for the agent.
        return breaker_window(self._conn, agent_id, since, payee_key)

    def freeze(self, freeze: Freeze) -> bool:
        return add_freeze(self._conn, freeze)


# What a failed statement raises: sqlite3's errors on SQLite, StoreError on PostgreSQL
# (:class:`~.postgres_connection.PgConn`).
_STATEMENT_FAILED = (sqlite3.Error, StoreError)


class SqlitePaymentBatch:
    """Several Sign decisions in one transaction (one commit, one fsync): each item is a
    savepoint, so that what one item raises undoes only that item's writes."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self.broken = False  # an item's rollback failed: the batch must not commit

    @contextmanager
    def item(self) -> Iterator[SqlitePaymentTx]:
        try:
            self._conn.execute("SAVEPOINT item")
        except _STATEMENT_FAILED as exc:
            self.broken = True
            raise StoreError(f"cannot open a decision of the batch: {exc}") from None
        try:
            yield SqlitePaymentTx(self._conn)
        except BaseException as failed:
            try:
                self._conn.execute("ROLLBACK TO item")
                self._conn.execute("RELEASE item")
            except _STATEMENT_FAILED as exc:
                self.broken = True
                raise StoreError(f"cannot undo a decision of the batch: {exc}") from None
            if isinstance(failed, sqlite3.Error):  # undone: the store failed this decision
                raise StoreError(f"store unavailable: {failed}") from None
            raise
        try:
            self._conn.execute("RELEASE item")
        except _STATEMENT_FAILED as exc:
            # Its writes are neither kept apart nor undone: the batch must not commit them
            # while their caller is told the call failed.
            self.broken = True
            raise StoreError(f"cannot close a decision of the batch: {exc}") from None


class SqliteApprovalTx(SqliteTx):
    def approval(self, approval_id: str) -> ApprovalRecord | None:
        return reads.approval(self._conn, "id", approval_id)

    def mandate(self, mandate_id: str, now: int) -> tuple[MandateRecord, MandateUse] | None:
        return mandate_reads.mandate(self._conn, mandate_id, now)

    def decision(self, decision_id: str) -> DecisionRecord | None:
        return reads.decision_by_id(self._conn, decision_id)

    def add_vote(self, approval_id: str, approver_id: str, vote: Vote, now: int, note: str) -> None:
        # A second approval by the same approver counts once; a denial always
        # records who denied and why, even after that approver approved.
        conflict = (
            "DO UPDATE SET vote = 'deny', at = excluded.at, note = excluded.note"
            if vote == Vote.DENY
            else "DO NOTHING"
        )
        self._conn.execute(
            "INSERT INTO approval_votes (approval_id, approver_id, vote, at, note)"  # noqa: S608
            f" VALUES (?, ?, ?, ?, ?) ON CONFLICT (approval_id, approver_id) {conflict}",
            (approval_id, approver_id, vote, now, note),
        )


def add_freeze(conn: Conn, f: Freeze) -> bool:
    """Adds a freeze; False when the same scope and target were frozen already."""
    changed = conn.execute(
        "INSERT INTO freezes (scope, target, reason, actor, source, at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (f.scope, f.target, f.reason, f.actor, f.source, f.at),
    ).rowcount
    return bool(changed)

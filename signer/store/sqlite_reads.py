"""Reads of the SQLite store: the row mappers and queries that transactions and
:class:`~paywarden.signer.store.sqlite.SqliteStore` share (each runs on a connection
the caller holds), and the read-only readers that offline tools use instead of SQL
of their own (``paywarden audit``, ``store-info``, ``store-export``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paywarden.policy.vocabulary import (
    ApprovalStatus,
    FreezeScope,
    FreezeSource,
    Phase,
    PlanLine,
    ReservationStatus,
    Verdict,
    Vote,
)
from paywarden.signer.auditlog.append import AuditState
from paywarden.signer.store import sqlite_session_facts as session_facts
from paywarden.signer.store.decision_text import pack_of, trace_of
from paywarden.signer.store.records import (
    ApprovalRecord,
    Checkpoint,
    DecisionRecord,
    Freeze,
    Reservation,
    SessionRecord,
    StoreError,
)
from paywarden.signer.store.sql import Conn

# A reservation counts while held or spent and not yet past the payment's expiry,
# and for ever once signed. An allowed payment the HSM never signed cannot be signed
# after its exp (a retry is denied), so its spend lapses then, without a retry.
# The rule, as SQL over one reservation; the signer's reads do not run it over the
# history but keep it in two parts (:mod:`.sqlite_facts`): the signed reservations'
# aggregates, and the open ones that have not expired.
LIVE = (
    "(status != 'released' AND (expires_at > ? OR (status = 'spent' AND EXISTS"
    " (SELECT 1 FROM decisions WHERE decisions.id = reservations.decision_id"
    " AND decisions.jws IS NOT NULL))))"
)


def session(conn: Conn, session_id: str, now: int) -> SessionRecord | None:
    """The session with what it spent and paid that still counts at ``now`` (see
    :data:`LIVE`): the signed part from its aggregates, the open part from its
    unsigned reservations (:mod:`.sqlite_facts`)."""
    row = conn.execute(
        "SELECT id, agent_id, planner_id, task_digest, created_at, expires_at, closed_at,"
        " allowed_payees, phase, pack_id, pack_version, pack_sha256, signed_payees, mandate_id"
        " FROM sessions WHERE id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        return None
    held = session_facts.open_session_usage(conn, session_id, now)
    budgets: dict[str, int] = {}
    spent = dict(held.spent_minor)
    for asset, budget, signed in conn.execute(
        "SELECT asset, budget_minor, spent_minor FROM session_budgets WHERE session_id = ?",
        (session_id,),
    ):
        budgets[asset] = int(budget)
        spent[asset] = spent.get(asset, 0) + int(signed)
    plan = tuple(
        PlanLine(payee, key, asset, int(max_minor), count, used + held.plan_used.get(idx, 0))
        for idx, payee, key, asset, max_minor, count, used in conn.execute(
            "SELECT idx, payee, payee_key, asset, max_amount_minor, count, signed_used"
            " FROM plan_lines WHERE session_id = ? ORDER BY idx",
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
        phase=Phase(row[8]),
        pack_id=row[9],
        plan=plan,
        payees=session_facts.session_payees(conn, session_id, row[12], held.payees),
        pack_version=row[10],
        pack_sha256=row[11],
        mandate_id=row[13],
    )


DECISION_COLUMNS = (
    "id, created_at, agent_id, session_id, nonce, request_hash, outcome, reason, message,"
    " key_id, asset, amount_minor, payload, jws, trace, purpose, pack, payee, expires_at"
)


def decision(row: Any) -> DecisionRecord:
    return DecisionRecord(
        id=row[0],
        created_at=row[1],
        agent_id=row[2],
        session_id=row[3],
        nonce=row[4],
        request_hash=row[5],
        outcome=Verdict(row[6]),
        reason=row[7],
        message=row[8],
        key_id=row[9],
        asset=row[10],
        amount_minor=int(row[11]),
        payload=bytes(row[12]) if row[12] is not None else None,
        jws=row[13],
        trace=trace_of(row[14]),
        purpose=row[15],
        pack=pack_of(row[16]),
        payee=row[17],
        expires_at=row[18],
    )


def decision_by_id(conn: Conn, decision_id: str) -> DecisionRecord | None:
    row = conn.execute(
        f"SELECT {DECISION_COLUMNS} FROM decisions WHERE id = ?",  # noqa: S608
        (decision_id,),
    ).fetchone()
    return decision(row) if row is not None else None


def reservation(conn: Conn, decision_id: str) -> Reservation | None:
    row = conn.execute(
        "SELECT decision_id, agent_id, session_id, asset, payee_key, amount_minor, created_at,"
        " expires_at, status, plan_line, mandate_id FROM reservations WHERE decision_id = ?",
        (decision_id,),
    ).fetchone()
    if row is None:
        return None
    return Reservation(
        decision_id=row[0],
        agent_id=row[1],
        session_id=row[2],
        asset=row[3],
        payee_key=row[4],
        amount_minor=int(row[5]),
        created_at=row[6],
        expires_at=row[7],
        status=ReservationStatus(row[8]),
        plan_line=row[9],
        mandate_id=row[10],
    )


def approval(conn: Conn, where: str, key: str) -> ApprovalRecord | None:
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
    denied = [v for v in votes if v[1] == Vote.DENY]
    return ApprovalRecord(
        id=row[0],
        decision_id=row[1],
        required=row[2],
        status=ApprovalStatus(row[3]),
        created_at=row[4],
        expires_at=row[5],
        approved_by=tuple(v[0] for v in votes if v[1] == Vote.APPROVE),
        denied_by=denied[0][0] if denied else None,
        note=denied[0][2] if denied else "",
    )


def audit_state(conn: Conn) -> AuditState:
    size, frontier_json, body = conn.execute(  # with the record at the log's head, by key
        "SELECT size, frontier, (SELECT body FROM audit_log WHERE seq = audit_state.size)"
        " FROM audit_state WHERE id = 1"
    ).fetchone()
    head_time = None
    if size:
        head = _time_of(body)
        if isinstance(head, int) and not isinstance(head, bool):
            head_time = head
    frontier = tuple((int(s), bytes.fromhex(h)) for s, h in json.loads(frontier_json))
    return AuditState(int(size), frontier, head_time)


def _time_of(body: str | None) -> object:
    """The ``time`` member of an audit record's body (None if it has none)."""
    if body is None:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("time") if isinstance(doc, dict) else None


def audit_subtrees(conn: Conn, nodes: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """Stored roots of perfect subtrees of the audit tree, by (level, index): a leaf
    (level 0) from its record's row, the rest from ``audit_nodes``; each by key."""
    out: dict[tuple[int, int], bytes] = {}
    for level, index in nodes:
        if level == 0:
            row = conn.execute("SELECT leaf FROM audit_log WHERE seq = ?", (index + 1,)).fetchone()
        else:
            row = conn.execute(
                "SELECT hash FROM audit_nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
        if row is None:
            raise StoreError(f"the audit tree has no stored node ({level}, {index})")
        out[level, index] = bytes(row[0])
    return out


def freeze_row(row: tuple[Any, ...]) -> Freeze:
    scope, target, reason, actor, source, at = row
    return Freeze(FreezeScope(scope), target, reason, actor, FreezeSource(source), at)


def frozen(conn: Conn, agent_id: str, session_id: str, key_id: str) -> Freeze | None:
    row = conn.execute(
        "SELECT scope, target, reason, actor, source, at FROM freezes WHERE"
        " (scope = 'global') OR (scope = 'agent' AND target = ?) OR"
        " (scope = 'session' AND target = ?) OR (scope = 'key' AND target = ?)"
        " ORDER BY CASE scope WHEN 'global' THEN 0 WHEN 'agent' THEN 1 WHEN 'session' THEN 2"
        " ELSE 3 END LIMIT 1",
        (agent_id, session_id, key_id),
    ).fetchone()
    return freeze_row(row) if row is not None else None


# -- read-only, for offline tools -----------------------------------------------------


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection: no migration, nothing written."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def read_audit_log(
    path: Path,
) -> tuple[list[tuple[int, str, bytes | None]], list[Checkpoint]]:
    """The audit log's raw rows (seq, body, leaf) and its checkpoints, for offline
    checks that trust nothing: read-only, no migration, one read transaction."""
    with _read_only(path) as conn:
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
    return records, checkpoints


@dataclass(frozen=True, slots=True)
class AuditSnapshot:
    """The audit log as one read transaction sees it: its checkpoints, and its rows
    (seq, body as UTF-8 bytes, leaf) in row order, read afresh by each call of ``records``."""

    checkpoints: list[Checkpoint]
    records: Callable[[], Iterator[tuple[int, bytes, bytes | None]]]


@contextmanager
def audit_log_snapshot(path: Path) -> Iterator[AuditSnapshot]:
    """Like :func:`read_audit_log`, but the records stream from the store (no list of
    every body), as often as the caller asks, all within the same read transaction."""
    with _read_only(path) as conn:
        # Read through a memory map: a row costs half as much as through read() calls.
        conn.execute(f"PRAGMA mmap_size = {1 << 31}")
        conn.execute("BEGIN")
        checkpoints = [
            Checkpoint(*r)
            for r in conn.execute(
                "SELECT size, root, at, key_id, body, signature FROM audit_checkpoints"
                " ORDER BY size"
            )
        ]

        def records() -> Iterator[tuple[int, bytes, bytes | None]]:
            # The bytes as stored: hashed as they are, decoded only where parsed.
            cursor = conn.execute(
                "SELECT CAST(seq AS INTEGER), CAST(body AS BLOB), CAST(leaf AS BLOB)"
                " FROM audit_log ORDER BY rowid"
            )
            rows: Iterator[tuple[int, bytes, bytes | None]] = iter(cursor)
            return rows

        yield AuditSnapshot(checkpoints, records)
        conn.execute("COMMIT")


def _table_names(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_names(path: Path) -> list[str]:
    """The store's tables, in the order SQLite lists them."""
    with _read_only(path) as conn:
        return _table_names(conn)


def table_counts(path: Path) -> tuple[int, list[tuple[str, int]]]:
    """The store's schema version and each table's row count, in one read transaction."""
    with _read_only(path) as conn:
        conn.execute("BEGIN")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        counts = [
            (name, int(conn.execute(f"SELECT count(*) FROM {_quoted(name)}").fetchone()[0]))  # noqa: S608 - a name from sqlite_master
            for name in _table_names(conn)
        ]
        conn.execute("COMMIT")
    return version, counts


def table_rows(path: Path, table: str) -> Iterator[dict[str, Any]]:
    """Every row of one table as a dict of column to value; ValueError if no such table."""
    with _read_only(path) as conn:
        if table not in _table_names(conn):
            raise ValueError(f"no table {table!r}")
        cursor = conn.execute(f"SELECT * FROM {_quoted(table)}")  # noqa: S608 - a listed table
        columns = [c[0] for c in cursor.description]
        for row in cursor:
            yield dict(zip(columns, row, strict=True))


def signed_payments(
    path: Path, agent_ids: Iterable[str], since: int
) -> list[tuple[str, str, str, str, int, int]]:
    """The signed payments of these agents created at or after ``since``: (agent, asset,
    key id, payee key, amount in minor units, created_at), read-only, in one read
    transaction, through the agent's reservations index (the window's rows only)."""
    out: list[tuple[str, str, str, str, int, int]] = []
    with _read_only(path) as conn:
        conn.execute("BEGIN")
        for agent_id in sorted(set(agent_ids)):
            for asset, key_id, payee, amount, at in conn.execute(
                "SELECT r.asset, d.key_id, r.payee_key, r.amount_minor, r.created_at"
                " FROM reservations r INDEXED BY reservations_agent"
                " JOIN decisions d ON d.id = r.decision_id"
                " WHERE r.agent_id = ? AND r.created_at >= ? AND r.signed = 1",
                (agent_id, since),
            ):
                out.append((agent_id, asset, key_id, payee, int(amount), int(at)))
        conn.execute("COMMIT")
    return out

"""What the SQLite migrations compute in Python after their SQL (:data:`.schema.BACKFILLS`):
sums of decimal TEXT amounts (7) and hashes (8), which SQLite lacks, and the decisions'
audit records read from their JSON (14), without relying on SQLite's JSON functions."""

from __future__ import annotations

import json

from paywarden.signer.auditlog import merkle
from paywarden.signer.store import sqlite_facts
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sql import Conn


def backfill_facts(conn: Conn) -> None:
    """Version 7's aggregates from the rows already stored, in time order."""
    per_second = conn.execute(
        "SELECT agent_id, created_at, COUNT(*), SUM(outcome = 'deny') FROM decisions"
        " GROUP BY agent_id, created_at ORDER BY agent_id, created_at"
    ).fetchall()
    totals: dict[str, tuple[int, int]] = {}
    for agent_id, at, decided, denied in per_second:
        before = totals.get(agent_id, (0, 0))
        totals[agent_id] = (before[0] + decided, before[1] + denied)
        conn.execute(
            "INSERT INTO agent_decisions (agent_id, at, decisions, denials) VALUES (?, ?, ?, ?)",
            (agent_id, at, *totals[agent_id]),
        )
    signed = conn.execute(
        "SELECT r.decision_id FROM reservations r JOIN decisions d ON d.id = r.decision_id"
        " WHERE r.status = 'spent' AND d.jws IS NOT NULL ORDER BY r.created_at, r.decision_id"
    ).fetchall()
    for (decision_id,) in signed:
        sqlite_facts.settle(conn, decision_id, mandates=False)  # version 7: none


def index_audit_tree(conn: Conn) -> None:
    """Stores every complete perfect subtree of the log as it stands (O(n), once),
    and checks that its leaves still fold to the tree head the store kept."""
    frontier: merkle.Frontier = []
    batch: list[tuple[int, int, bytes]] = []
    size = 0
    for seq, leaf in conn.execute("SELECT seq, leaf FROM audit_log ORDER BY seq"):
        if seq != size + 1:
            raise StoreError(f"the audit log has no record {size + 1}: cannot index its tree")
        frontier, completed = merkle.frontier_push(frontier, bytes(leaf))
        batch.extend((level, size >> level, h) for level, h in enumerate(completed, start=1))
        size = seq
        if len(batch) >= 10_000:
            conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", batch)
            batch.clear()
    conn.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", batch)
    kept_size, kept = conn.execute("SELECT size, frontier FROM audit_state WHERE id = 1").fetchone()
    kept_frontier = [(int(s), bytes.fromhex(h)) for s, h in json.loads(kept)]
    if kept_size != size or kept_frontier != frontier:
        raise StoreError(
            f"the audit log's {size} leaves do not fold to the tree head the store kept "
            f"({kept_size} records): the log was changed outside the signer"
        )


# A sign.decision record as RFC 8785 writes it: the filter that spares parsing the others.
_DECISION_RECORD = '%"action":"sign.decision"%'


def index_decision_audit(conn: Conn) -> None:
    """Version 14's index of the Sign decisions already in the log (O(n), once)."""
    insert = "INSERT INTO decision_audit (decision_id, seq) VALUES (?, ?)"
    batch: list[tuple[str, int]] = []
    for seq, body in conn.execute(
        "SELECT seq, body FROM audit_log WHERE body LIKE ? ORDER BY seq", (_DECISION_RECORD,)
    ):
        record = json.loads(body)
        if record.get("action") == "sign.decision":
            batch.append((str(record["decision"]["id"]), int(seq)))
        if len(batch) >= 10_000:
            conn.executemany(insert, batch)
            batch.clear()
    conn.executemany(insert, batch)

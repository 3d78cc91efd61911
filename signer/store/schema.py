"""The SQLite store's schema: its DDL, one migration per version, and how to apply them.

``PRAGMA user_version`` holds the version a database is at; :func:`migrate` brings it
to :data:`SCHEMA_VERSION` in the caller's transaction. A migration is never edited
once released: a change of schema is a new version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

from paywarden.signer.store import mandate_schema, sqlite_reloads
from paywarden.signer.store.backfills import (
    backfill_facts,
    index_audit_tree,
    index_decision_audit,
)
from paywarden.signer.store.records import StoreError

SCHEMA_VERSION = 15

DECISION_AUDIT = """
    CREATE TABLE decision_audit (
        decision_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    );
    """

MIGRATIONS: dict[int, str] = {
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
    # Policy packs, approvals and plan-bound sessions. Spend moves from a
    # counter to reservations; decisions gain "pending".
    2: """
    ALTER TABLE sessions ADD COLUMN phase TEXT NOT NULL DEFAULT 'normal';
    ALTER TABLE sessions ADD COLUMN pack_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE session_budgets ADD COLUMN decimals INTEGER;
    CREATE TABLE plan_lines (
        session_id TEXT NOT NULL REFERENCES sessions(id),
        idx INTEGER NOT NULL,
        payee TEXT NOT NULL,
        payee_key TEXT NOT NULL,
        asset TEXT NOT NULL,
        max_amount_minor TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (session_id, idx)
    );
    CREATE TABLE decisions_v2 (
        id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        agent_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('allow', 'deny', 'pending')),
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        key_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        amount_minor TEXT NOT NULL,
        payload BLOB,
        jws TEXT,
        trace TEXT NOT NULL,
        purpose TEXT NOT NULL,
        pack TEXT NOT NULL DEFAULT '{}',
        payee TEXT NOT NULL DEFAULT '',
        expires_at INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO decisions_v2 (id, created_at, agent_id, session_id, nonce, request_hash,
        outcome, reason, message, key_id, asset, amount_minor, payload, jws, trace, purpose,
        payee, expires_at)
      SELECT id, created_at, agent_id, session_id, nonce, request_hash, outcome, reason,
        message, key_id, asset, amount_minor, payload, jws, trace, purpose,
        COALESCE(json_extract(CAST(payload AS TEXT), '$.payee'), ''),
        COALESCE(json_extract(CAST(payload AS TEXT), '$.exp'), 0)
      FROM decisions;
    CREATE TABLE reservations (
        decision_id TEXT PRIMARY KEY,
        agent_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        payee_key TEXT NOT NULL,
        amount_minor TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('spent', 'held', 'released')),
        plan_line INTEGER
    );
    INSERT INTO reservations SELECT id, agent_id, session_id, asset, payee, amount_minor,
        created_at, expires_at, 'spent', NULL FROM decisions_v2 WHERE outcome = 'allow';
    DROP TABLE nonces;
    DROP TABLE decisions;
    ALTER TABLE decisions_v2 RENAME TO decisions;
    CREATE INDEX decisions_session ON decisions(session_id);
    CREATE TABLE nonces (
        nonce TEXT PRIMARY KEY,
        decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id)
    );
    INSERT INTO nonces SELECT nonce, id FROM decisions;
    CREATE INDEX reservations_agent ON reservations(agent_id, created_at);
    CREATE INDEX reservations_session ON reservations(session_id);
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id),
        required INTEGER NOT NULL CHECK (required >= 1),
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        decided_at INTEGER
    );
    CREATE INDEX approvals_status ON approvals(status);
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals(id),
        approver_id TEXT NOT NULL,
        vote TEXT NOT NULL CHECK (vote IN ('approve', 'deny')),
        at INTEGER NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (approval_id, approver_id)
    );
    """,
    # The tamper-evident audit log, its signed checkpoints, and freezes.
    3: """
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        body TEXT NOT NULL,
        leaf BLOB NOT NULL
    );
    CREATE TABLE audit_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        size INTEGER NOT NULL,
        frontier TEXT NOT NULL
    );
    INSERT INTO audit_state VALUES (1, 0, '[]');
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
      BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
      BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log
      WHEN EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq)
      BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
    CREATE TABLE audit_checkpoints (
        size INTEGER PRIMARY KEY,
        root TEXT NOT NULL,
        at INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        body TEXT NOT NULL,
        signature TEXT NOT NULL
    );
    CREATE INDEX decisions_agent ON decisions(agent_id, created_at);
    CREATE TABLE breaker_resets (
        agent_id TEXT PRIMARY KEY,
        at INTEGER NOT NULL
    );
    CREATE TABLE freezes (
        scope TEXT NOT NULL CHECK (scope IN ('global', 'agent', 'session', 'key')),
        target TEXT NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('operator', 'breaker')),
        at INTEGER NOT NULL,
        PRIMARY KEY (scope, target)
    );
    """,
    # Nonces are unique per agent: another agent's nonce is a fresh nonce, so that
    # nobody learns whether some other agent used it (the claims carry "sub").
    4: """
    CREATE TABLE nonces_v4 (
        agent_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id),
        PRIMARY KEY (agent_id, nonce)
    );
    INSERT INTO nonces_v4 SELECT d.agent_id, n.nonce, n.decision_id
      FROM nonces n JOIN decisions d ON d.id = n.decision_id;
    DROP TABLE nonces;
    ALTER TABLE nonces_v4 RENAME TO nonces;
    """,
    # The version and SHA-256 of the pack a session was opened under: a session is
    # checked again against a changed pack with the same id.
    5: """
    ALTER TABLE sessions ADD COLUMN pack_version INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN pack_sha256 TEXT NOT NULL DEFAULT '';
    """,
    # The health probe's row: the probe commits a write, as a decision would.
    6: """
    CREATE TABLE health_probe (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        probes INTEGER NOT NULL
    );
    """,
    # Facts in O(log n) of the history (see sqlite_facts.py): a signed reservation
    # ("signed": spent and its decision has a JWS) is summed into aggregates once;
    # the open ones are read through partial indexes that hold only them. The
    # aggregates are filled from the existing rows by _backfill_facts.
    7: """
    ALTER TABLE reservations ADD COLUMN signed INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX reservations_open_agent ON reservations(agent_id, expires_at)
      WHERE signed = 0 AND status != 'released';
    CREATE INDEX reservations_open_agent_made ON reservations(agent_id, created_at)
      WHERE signed = 0 AND status != 'released';
    CREATE INDEX reservations_open_session ON reservations(session_id, expires_at)
      WHERE signed = 0 AND status != 'released';
    CREATE TABLE agent_spend (
        agent_id TEXT NOT NULL,
        asset TEXT NOT NULL,
        at INTEGER NOT NULL,
        total TEXT NOT NULL,
        PRIMARY KEY (agent_id, asset, at)
    ) WITHOUT ROWID;
    CREATE TABLE agent_payments (
        agent_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        total INTEGER NOT NULL,
        PRIMARY KEY (agent_id, at)
    ) WITHOUT ROWID;
    CREATE TABLE agent_decisions (
        agent_id TEXT NOT NULL,
        at INTEGER NOT NULL,
        decisions INTEGER NOT NULL,
        denials INTEGER NOT NULL,
        PRIMARY KEY (agent_id, at)
    ) WITHOUT ROWID;
    CREATE TABLE agent_payees (
        agent_id TEXT NOT NULL,
        payee_key TEXT NOT NULL,
        first_at INTEGER NOT NULL,
        last_at INTEGER NOT NULL,
        PRIMARY KEY (agent_id, payee_key)
    ) WITHOUT ROWID;
    CREATE INDEX agent_payees_recent ON agent_payees(agent_id, last_at);
    CREATE TABLE session_payees (
        session_id TEXT NOT NULL,
        payee_key TEXT NOT NULL,
        PRIMARY KEY (session_id, payee_key)
    ) WITHOUT ROWID;
    ALTER TABLE sessions ADD COLUMN signed_payees INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE plan_lines ADD COLUMN signed_used INTEGER NOT NULL DEFAULT 0;
    UPDATE session_budgets SET spent_minor = '0';
    """,
    # The audit tree's complete perfect subtrees above the leaves (a leaf is
    # audit_log.leaf): node (level, idx) is the root over leaves idx * 2^level to
    # (idx + 1) * 2^level - 1, 0-based. Proofs and tree heads read O(log n) of them.
    # Filled for an existing log by _index_audit_tree.
    8: """
    CREATE TABLE audit_nodes (
        level INTEGER NOT NULL CHECK (level >= 1),
        idx INTEGER NOT NULL CHECK (idx >= 0),
        hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID;
    CREATE TRIGGER audit_nodes_no_update BEFORE UPDATE ON audit_nodes
      BEGIN SELECT RAISE(ABORT, 'audit nodes are append-only'); END;
    CREATE TRIGGER audit_nodes_no_delete BEFORE DELETE ON audit_nodes
      BEGIN SELECT RAISE(ABORT, 'audit nodes are append-only'); END;
    """,
    # Revoked client identities: a principal id (in every role) or a certificate serial
    # (lower-case hex, no leading zeros). Never deleted: a revocation is for good.
    9: """
    CREATE TABLE revocations (
        kind TEXT NOT NULL CHECK (kind IN ('principal', 'serial')),
        value TEXT NOT NULL,
        reason TEXT NOT NULL,
        operator TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (kind, value)
    );
    """,
    # An agent's open sessions, found without reading every session ever opened
    # (``paywarden explain agent``): closed ones leave the index.
    10: """
    CREATE INDEX sessions_open_agent ON sessions(agent_id, expires_at) WHERE closed_at IS NULL;
    """,
    # Live policy reload: the pack set in force (its files, so that a restart cannot put
    # a wider set in force unconfirmed) and reloads waiting for a second operator.
    11: sqlite_reloads.MIGRATION,
    # Payment key versions and their states, with each one's public half so that every
    # replica serves the JWKS from here. Rows are never deleted: a destroyed version
    # keeps its row (and its public key, for the record). The partial index makes the
    # Sign path's "the label's active version" one index probe.
    12: """
    CREATE TABLE payment_keys (
        key_id TEXT PRIMARY KEY,
        label TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        state TEXT NOT NULL CHECK (state IN ('active', 'verify-only', 'revoked', 'destroyed')),
        spki BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        state_changed_at INTEGER NOT NULL,
        retired_at INTEGER,
        revoked_at INTEGER,
        revoked_reason TEXT NOT NULL DEFAULT '',
        UNIQUE (label, version),
        CHECK (state = 'active' OR retired_at IS NOT NULL),
        CHECK ((state = 'revoked') = (revoked_at IS NOT NULL) OR state = 'destroyed')
    );
    CREATE INDEX payment_keys_active ON payment_keys(label, version) WHERE state = 'active';
    CREATE TRIGGER payment_keys_no_delete BEFORE DELETE ON payment_keys
      BEGIN SELECT RAISE(ABORT, 'key versions are never deleted'); END;
    CREATE TRIGGER payment_keys_never_back BEFORE UPDATE OF state ON payment_keys
      WHEN OLD.state = 'destroyed'
        OR (OLD.state != 'active' AND NEW.state = 'active')
        OR (OLD.state = 'revoked' AND NEW.state = 'verify-only')
      BEGIN SELECT RAISE(ABORT, 'a key version never goes back to an earlier state'); END;
    """,
    # The context (groups, time zone, assets) the set in force was built with.
    13: sqlite_reloads.MIGRATION_CONTEXT,
    # The audit record of each Sign decision, by the decision's id: a receipt finds the
    # record in one index probe. Filled for an existing log by index_decision_audit.
    14: DECISION_AUDIT,
    # Sessions opened from a human-signed mandate, and the mandate's shared ledger.
    15: mandate_schema.SQLITE,
}


# What a migration computes in Python after its SQL: sums of decimal TEXT amounts (7),
# hashes, which SQLite lacks (8), the decisions already in the audit log (14).
BACKFILLS: dict[int, Callable[[sqlite3.Connection], None]] = {
    7: backfill_facts,
    8: index_audit_tree,
    14: index_decision_audit,
}


def statements(script: str) -> Iterator[str]:
    """Splits a migration into statements (trigger bodies hold semicolons too)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                yield buf
            buf = ""
    if buf.strip():
        raise StoreError("a migration ends in an incomplete statement")


def migrate(conn: sqlite3.Connection) -> int:
    """Applies the missing migrations in the caller's transaction; returns the version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store's schema version {version} is newer than this signer's ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        for statement in statements(MIGRATIONS[target]):
            conn.execute(statement)
        if target in BACKFILLS:
            BACKFILLS[target](conn)
        conn.execute(f"PRAGMA user_version = {target}")
    return SCHEMA_VERSION

"""The PostgreSQL store's schema: the same versions as the SQLite store's
(:data:`.schema.SCHEMA_VERSION`), from one list.

PostgreSQL came in at version 13: its first migration (the *baseline*) makes the
schema SQLite reached through versions 1 to 13, table for table and column for column
(``tests/test_postgres_store.py`` compares them). Every later version adds its
PostgreSQL script here beside SQLite's in :data:`.schema.MIGRATIONS`. The version a
database is at is kept in ``paywarden_schema``. Times and counters are ``BIGINT``,
hashes and DER ``BYTEA``; amounts stay decimal ``TEXT`` as on SQLite.
"""

from __future__ import annotations

from paywarden.signer.store import mandate_schema

BASELINE = 13

_TABLES = """
CREATE TABLE paywarden_schema (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    planner_id TEXT NOT NULL,
    task_digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    closed_at BIGINT,
    allowed_payees TEXT NOT NULL DEFAULT '[]',
    phase TEXT NOT NULL DEFAULT 'normal',
    pack_id TEXT NOT NULL DEFAULT '',
    pack_version BIGINT NOT NULL DEFAULT 0,
    pack_sha256 TEXT NOT NULL DEFAULT '',
    signed_payees BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_open_agent ON sessions(agent_id, expires_at) WHERE closed_at IS NULL;
CREATE TABLE session_budgets (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    asset TEXT NOT NULL,
    budget_minor TEXT NOT NULL,
    spent_minor TEXT NOT NULL DEFAULT '0',
    decimals INTEGER,
    PRIMARY KEY (session_id, asset)
);
CREATE TABLE plan_lines (
    session_id TEXT NOT NULL REFERENCES sessions(id),
    idx BIGINT NOT NULL,
    payee TEXT NOT NULL,
    payee_key TEXT NOT NULL,
    asset TEXT NOT NULL,
    max_amount_minor TEXT NOT NULL,
    count BIGINT NOT NULL,
    signed_used BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE decisions (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
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
    payload BYTEA,
    jws TEXT,
    trace TEXT NOT NULL,
    purpose TEXT NOT NULL,
    pack TEXT NOT NULL DEFAULT '{}',
    payee TEXT NOT NULL DEFAULT '',
    expires_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX decisions_session ON decisions(session_id);
CREATE INDEX decisions_agent ON decisions(agent_id, created_at);
CREATE TABLE nonces (
    agent_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id),
    PRIMARY KEY (agent_id, nonce)
);
CREATE TABLE reservations (
    decision_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    asset TEXT NOT NULL,
    payee_key TEXT NOT NULL,
    amount_minor TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('spent', 'held', 'released')),
    plan_line BIGINT,
    signed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX reservations_agent ON reservations(agent_id, created_at);
CREATE INDEX reservations_session ON reservations(session_id);
CREATE INDEX reservations_open_agent ON reservations(agent_id, expires_at)
  WHERE signed = 0 AND status != 'released';
CREATE INDEX reservations_open_agent_made ON reservations(agent_id, created_at)
  WHERE signed = 0 AND status != 'released';
CREATE INDEX reservations_open_session ON reservations(session_id, expires_at)
  WHERE signed = 0 AND status != 'released';
CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE REFERENCES decisions(id),
    required BIGINT NOT NULL CHECK (required >= 1),
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    decided_at BIGINT
);
CREATE INDEX approvals_status ON approvals(status);
CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approvals(id),
    approver_id TEXT NOT NULL,
    vote TEXT NOT NULL CHECK (vote IN ('approve', 'deny')),
    at BIGINT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (approval_id, approver_id)
);
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    body TEXT NOT NULL,
    leaf BYTEA NOT NULL
);
CREATE TABLE audit_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    frontier TEXT NOT NULL
);
INSERT INTO audit_state VALUES (1, 0, '[]');
CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY,
    root TEXT NOT NULL,
    at BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL CHECK (level >= 1),
    idx BIGINT NOT NULL CHECK (idx >= 0),
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE breaker_resets (
    agent_id TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
CREATE TABLE freezes (
    scope TEXT NOT NULL CHECK (scope IN ('global', 'agent', 'session', 'key')),
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('operator', 'breaker')),
    at BIGINT NOT NULL,
    PRIMARY KEY (scope, target)
);
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    probes BIGINT NOT NULL
);
CREATE TABLE agent_spend (
    agent_id TEXT NOT NULL,
    asset TEXT NOT NULL,
    at BIGINT NOT NULL,
    total TEXT NOT NULL,
    PRIMARY KEY (agent_id, asset, at)
);
CREATE TABLE agent_payments (
    agent_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    total BIGINT NOT NULL,
    PRIMARY KEY (agent_id, at)
);
CREATE TABLE agent_decisions (
    agent_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    decisions BIGINT NOT NULL,
    denials BIGINT NOT NULL,
    PRIMARY KEY (agent_id, at)
);
CREATE TABLE agent_payees (
    agent_id TEXT NOT NULL,
    payee_key TEXT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, payee_key)
);
CREATE INDEX agent_payees_recent ON agent_payees(agent_id, last_at);
CREATE TABLE session_payees (
    session_id TEXT NOT NULL,
    payee_key TEXT NOT NULL,
    PRIMARY KEY (session_id, payee_key)
);
-- rowid: the position revocations_after reads from. Handed out under the store's
-- write lock, so in commit order, as SQLite's rowid is.
CREATE TABLE revocations (
    rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('principal', 'serial')),
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    operator TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE TABLE policy_in_force (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sha256 TEXT NOT NULL,
    packs TEXT NOT NULL,
    since BIGINT NOT NULL,
    context TEXT
);
CREATE TABLE policy_reloads (
    id TEXT PRIMARY KEY,
    proposed_by TEXT NOT NULL,
    proposed_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    old_sha256 TEXT NOT NULL,
    new_sha256 TEXT NOT NULL,
    packs TEXT NOT NULL,
    widening TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'applied', 'expired', 'superseded')),
    decided_by TEXT,
    decided_at BIGINT
);
CREATE INDEX policy_reloads_pending ON policy_reloads(proposed_at) WHERE state = 'pending';
CREATE TABLE payment_keys (
    key_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    version BIGINT NOT NULL CHECK (version >= 1),
    state TEXT NOT NULL CHECK (state IN ('active', 'verify-only', 'revoked', 'destroyed')),
    spki BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    state_changed_at BIGINT NOT NULL,
    retired_at BIGINT,
    revoked_at BIGINT,
    revoked_reason TEXT NOT NULL DEFAULT '',
    UNIQUE (label, version),
    CHECK (state = 'active' OR retired_at IS NOT NULL),
    CHECK ((state = 'revoked') = (revoked_at IS NOT NULL) OR state = 'destroyed')
);
CREATE INDEX payment_keys_active ON payment_keys(label, version) WHERE state = 'active';
"""

# The append-only and never-back rules, as SQLite's triggers keep them.
_TRIGGERS = """
CREATE FUNCTION paywarden_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '%', TG_ARGV[0];
END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION paywarden_refuse('audit records are append-only');
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION paywarden_refuse('audit records are append-only');
CREATE TRIGGER audit_nodes_no_change BEFORE UPDATE OR DELETE ON audit_nodes
  FOR EACH ROW EXECUTE FUNCTION paywarden_refuse('audit nodes are append-only');
CREATE TRIGGER audit_nodes_no_truncate BEFORE TRUNCATE ON audit_nodes
  FOR EACH STATEMENT EXECUTE FUNCTION paywarden_refuse('audit nodes are append-only');
CREATE TRIGGER payment_keys_no_delete BEFORE DELETE ON payment_keys
  FOR EACH ROW EXECUTE FUNCTION paywarden_refuse('key versions are never deleted');
CREATE TRIGGER payment_keys_no_truncate BEFORE TRUNCATE ON payment_keys
  FOR EACH STATEMENT EXECUTE FUNCTION paywarden_refuse('key versions are never deleted');
CREATE TRIGGER payment_keys_never_back BEFORE UPDATE OF state ON payment_keys
  FOR EACH ROW WHEN (OLD.state = 'destroyed'
    OR (OLD.state != 'active' AND NEW.state = 'active')
    OR (OLD.state = 'revoked' AND NEW.state = 'verify-only'))
  EXECUTE FUNCTION paywarden_refuse('a key version never goes back to an earlier state');
"""

# Version to its script; each is run whole, in the migrating transaction.
MIGRATIONS: dict[int, str] = {
    BASELINE: _TABLES + _TRIGGERS,
    # A Sign decision's audit record, by the decision's id (receipts), filled for the
    # decisions already in the log.
    14: """
    CREATE TABLE decision_audit (
        decision_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL
    );
    INSERT INTO decision_audit (decision_id, seq)
    SELECT (body::jsonb) #>> '{decision,id}', seq FROM audit_log
     WHERE body LIKE '%"action":"sign.decision"%'
       AND (body::jsonb) ->> 'action' = 'sign.decision';
    """,
    # Sessions opened from a human-signed mandate, and the mandate's shared ledger.
    15: mandate_schema.POSTGRES,
}

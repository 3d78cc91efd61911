"""Migration 15, mandates, on both backends side by side (:mod:`.schema` and
:mod:`.postgres_schema` each take theirs from here).

A ``mandates`` row is written by the first session opened from the mandate and shared
by every later one: its bounds, and its ledger of *settled* use (signed payments:
``spent_minor``, ``uses``, ``last_use_at``), kept by :func:`.mandate_facts.settle` in
the transaction that signs. The *open* use (reservations neither signed nor released)
is read through the partial index ``reservations_open_mandate``, as a session's is
through ``reservations_open_session``. ``mandate_revocations`` holds the operators'
revocations, by mandate id or by agent key thumbprint; a revoked mandate row also
carries ``revoked_at``. ``mandate_presentations`` holds the hash of every closed agent
hop a session was opened with: each opens one session only. Rows are never deleted and
a revocation is never lifted: the triggers refuse it. Amounts are decimal TEXT, as
everywhere in the store.
"""

from __future__ import annotations

_COMMON = """
ALTER TABLE sessions ADD COLUMN mandate_id TEXT;
ALTER TABLE reservations ADD COLUMN mandate_id TEXT;
CREATE INDEX reservations_open_mandate ON reservations(mandate_id, expires_at)
  WHERE signed = 0 AND status != 'released';
CREATE INDEX mandates_holder ON mandates(holder_jkt);
"""


def _tables(integer: str) -> str:
    return f"""
CREATE TABLE mandates (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    holder_jkt TEXT NOT NULL,
    issuer TEXT NOT NULL,
    asset TEXT NOT NULL,
    terms_sha256 TEXT NOT NULL,
    terms TEXT NOT NULL,
    min_minor TEXT,
    max_minor TEXT,
    budget_minor TEXT NOT NULL,
    max_uses {integer},
    spacing_seconds {integer},
    not_before {integer},
    reference TEXT,
    expires_at {integer} NOT NULL,
    created_at {integer} NOT NULL,
    revoked_at {integer},
    revoked_reason TEXT NOT NULL DEFAULT '',
    spent_minor TEXT NOT NULL DEFAULT '0',
    uses {integer} NOT NULL DEFAULT 0,
    last_use_at {integer}
);
CREATE TABLE mandate_revocations (
    kind TEXT NOT NULL CHECK (kind IN ('mandate', 'holder')),
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    operator TEXT NOT NULL,
    created_at {integer} NOT NULL,
    PRIMARY KEY (kind, value)
);
CREATE TABLE mandate_presentations (
    sha256 TEXT PRIMARY KEY,
    mandate_id TEXT NOT NULL,
    created_at {integer} NOT NULL
);
"""


SQLITE = (
    _tables("INTEGER")
    + _COMMON
    + """
CREATE TRIGGER mandates_no_delete BEFORE DELETE ON mandates
  BEGIN SELECT RAISE(ABORT, 'mandates are never deleted'); END;
CREATE TRIGGER mandates_stay_revoked BEFORE UPDATE OF revoked_at ON mandates
  WHEN OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS NOT OLD.revoked_at
  BEGIN SELECT RAISE(ABORT, 'a revoked mandate stays revoked'); END;
CREATE TRIGGER mandate_revocations_no_update BEFORE UPDATE ON mandate_revocations
  BEGIN SELECT RAISE(ABORT, 'mandate revocations are never lifted'); END;
CREATE TRIGGER mandate_revocations_no_delete BEFORE DELETE ON mandate_revocations
  BEGIN SELECT RAISE(ABORT, 'mandate revocations are never lifted'); END;
"""
)

POSTGRES = (
    _tables("BIGINT")
    + _COMMON
    + """
CREATE TRIGGER mandates_no_delete BEFORE DELETE ON mandates
  FOR EACH ROW EXECUTE FUNCTION paywarden_refuse('mandates are never deleted');
CREATE TRIGGER mandates_no_truncate BEFORE TRUNCATE ON mandates
  FOR EACH STATEMENT EXECUTE FUNCTION paywarden_refuse('mandates are never deleted');
CREATE TRIGGER mandates_stay_revoked BEFORE UPDATE OF revoked_at ON mandates
  FOR EACH ROW WHEN (OLD.revoked_at IS NOT NULL
    AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
  EXECUTE FUNCTION paywarden_refuse('a revoked mandate stays revoked');
CREATE TRIGGER mandate_revocations_no_change BEFORE UPDATE OR DELETE ON mandate_revocations
  FOR EACH ROW EXECUTE FUNCTION paywarden_refuse('mandate revocations are never lifted');
CREATE TRIGGER mandate_revocations_no_truncate BEFORE TRUNCATE ON mandate_revocations
  FOR EACH STATEMENT EXECUTE FUNCTION paywarden_refuse('mandate revocations are never lifted');
"""
)

"""Policy reloads on SQLite (:class:`~.protocols.PolicyReloadStore`): the pack set in
force, with its files, and the reloads waiting for a second operator. Each change is
written with its audit record in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from paywarden.policy.vocabulary import ReloadState
from paywarden.signer.store.connection import Connection
from paywarden.signer.store.records import PolicyReload, StoreError
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite_tx import append_audit

MIGRATION = """
CREATE TABLE policy_in_force (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sha256 TEXT NOT NULL,
    packs TEXT NOT NULL,
    since INTEGER NOT NULL
);
CREATE TABLE policy_reloads (
    id TEXT PRIMARY KEY,
    proposed_by TEXT NOT NULL,
    proposed_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    old_sha256 TEXT NOT NULL,
    new_sha256 TEXT NOT NULL,
    packs TEXT NOT NULL,
    widening TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'applied', 'expired', 'superseded')),
    decided_by TEXT,
    decided_at INTEGER
);
CREATE INDEX policy_reloads_pending ON policy_reloads(proposed_at) WHERE state = 'pending';
"""

# The context the set in force was built with (groups resolved, time zone, assets), as
# JSON: a restart rebuilds the recorded set with it. NULL for a set recorded before.
MIGRATION_CONTEXT = """
ALTER TABLE policy_in_force ADD COLUMN context TEXT;
"""

_SELECT = (
    "SELECT id, proposed_by, proposed_at, expires_at, old_sha256, new_sha256, packs, widening,"
    " state, decided_by, decided_at FROM policy_reloads"
)


def _row(row: tuple[Any, ...]) -> PolicyReload:
    packs = tuple((str(name), str(text)) for name, text in json.loads(row[6]))
    widening = tuple(dict(c) for c in json.loads(row[7]))
    rid, by, at, expires, old, new = row[:6]
    state, decided_by, decided_at = ReloadState(row[8]), row[9], row[10]
    return PolicyReload(
        rid, by, at, expires, old, new, packs, widening, state, decided_by, decided_at
    )


class SqlitePolicyReloads(Connection):
    def propose_reload(self, reload: PolicyReload, audit: Mapping[str, Any]) -> None:
        r = reload
        try:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO policy_reloads (id, proposed_by, proposed_at, expires_at,"
                    " old_sha256, new_sha256, packs, widening, state)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.id, r.proposed_by, r.proposed_at, r.expires_at, r.old_sha256,
                        r.new_sha256, json.dumps(r.packs), json.dumps(r.widening), r.state,
                    ),
                )  # fmt: skip
                append_audit(conn, audit)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the reload: {exc}") from None

    def policy_reload(self, reload_id: str) -> PolicyReload | None:
        row = self._read(lambda c: c.execute(_SELECT + " WHERE id = ?", (reload_id,)).fetchone())
        return None if row is None else _row(row)

    def pending_reloads(self) -> list[PolicyReload]:
        rows = self._read(
            lambda c: c.execute(
                _SELECT + " WHERE state = 'pending' ORDER BY proposed_at, id"
            ).fetchall()
        )
        return [_row(r) for r in rows]

    def settle_reload(
        self, reload_id: str, state: ReloadState, at: int, audit: Mapping[str, Any]
    ) -> bool:
        try:
            with self._write() as conn:
                if not self._settle(conn, reload_id, state, None, at):
                    return False
                append_audit(conn, audit)
                return True
        except sqlite3.Error as exc:
            raise StoreError(f"cannot settle the reload: {exc}") from None

    def put_policy_in_force(
        self,
        sha256: str,
        packs: Sequence[tuple[str, str]],
        at: int,
        audit: Mapping[str, Any],
        confirm: tuple[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        ctx = None if context is None else json.dumps(context, sort_keys=True)
        try:
            with self._write() as conn:
                if confirm is not None:
                    reload_id, operator = confirm
                    if not self._settle(conn, reload_id, ReloadState.APPLIED, operator, at):
                        return False
                conn.execute(
                    "INSERT INTO policy_in_force (id, sha256, packs, since, context)"
                    " VALUES (1, ?, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET sha256 = excluded.sha256,"
                    " packs = excluded.packs, since = excluded.since, context = excluded.context",
                    (sha256, json.dumps([list(p) for p in packs]), at, ctx),
                )
                append_audit(conn, audit)
                return True
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record the packs in force: {exc}") from None

    def policy_in_force(self) -> tuple[str, list[tuple[str, str]]] | None:
        row = self._read(
            lambda c: c.execute("SELECT sha256, packs FROM policy_in_force WHERE id = 1").fetchone()
        )
        if row is None:
            return None
        return str(row[0]), [(str(n), str(t)) for n, t in json.loads(row[1])]

    def policy_context_in_force(self) -> dict[str, Any] | None:
        """The context recorded with the set in force (None: none, or recorded before)."""
        row = self._read(
            lambda c: c.execute("SELECT context FROM policy_in_force WHERE id = 1").fetchone()
        )
        if row is None or row[0] is None:
            return None
        doc = json.loads(row[0])
        if not isinstance(doc, dict):
            raise StoreError("the policy context in force is not a JSON object")
        return doc

    @staticmethod
    def _settle(conn: Conn, reload_id: str, state: ReloadState, by: str | None, at: int) -> bool:
        return bool(
            conn.execute(
                "UPDATE policy_reloads SET state = ?, decided_by = ?, decided_at = ?"
                " WHERE id = ? AND state = 'pending'",
                (state, by, at, reload_id),
            ).rowcount
        )

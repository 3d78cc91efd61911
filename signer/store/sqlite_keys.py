"""The SQLite store's payment key versions (migration 12): the Sign path's one-row reads,
the custody transaction (:class:`~paywarden.signer.store.protocols.KeyTx`) and the list
every replica serves its JWKS from.

The store keeps primitives only: which version is active, conditional state changes that
never go back (a trigger refuses them too), and the audit record in the same transaction.
What may change and when (a grace period, refusing an active key's destruction) is decided
by the core (:mod:`paywarden.signer.core.key_custody`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from paywarden.policy.vocabulary import KeyState
from paywarden.signer.store.connection import Connection
from paywarden.signer.store.records import KeyVersion, StoreError
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite_key_rows import (
    all_versions,
    insert,
    key_version,
    to_version,
)
from paywarden.signer.store.sqlite_tx import append_audit


class SqliteKeyTx:
    """One custody transaction (``BEGIN IMMEDIATE``): read, change, audit, together."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    def version(self, key_id: str) -> KeyVersion | None:
        return key_version(self._conn, key_id)

    def versions(self, label: str) -> list[KeyVersion]:
        rows = self._conn.execute(
            "SELECT key_id, label, version, state, spki, created_at, state_changed_at,"
            " retired_at, revoked_at, revoked_reason"
            " FROM payment_keys WHERE label = ? ORDER BY version",
            (label,),
        ).fetchall()
        return [to_version(r) for r in rows]

    def add(self, key: KeyVersion) -> bool:
        return insert(self._conn, key)

    def set_state(
        self,
        key_id: str,
        allowed_from: Collection[KeyState],
        state: KeyState,
        now: int,
        reason: str = "",
    ) -> bool:
        """Moves one version to ``state`` if it is in one of ``allowed_from``; True if it
        did. Leaving ``active`` starts the grace period (``retired_at``); ``revoked``
        records the time and reason."""
        current = key_version(self._conn, key_id)
        if current is None or current.state not in allowed_from:
            return False
        retired = current.retired_at if current.retired_at is not None else now
        revoked = state is KeyState.REVOKED
        cur = self._conn.execute(
            "UPDATE payment_keys SET state = ?, state_changed_at = ?, retired_at = ?,"
            " revoked_at = ?, revoked_reason = ? WHERE key_id = ? AND state = ?",
            (
                str(state),
                now,
                retired,
                now if revoked else current.revoked_at,
                reason if revoked else current.revoked_reason,
                key_id,
                str(current.state),
            ),
        )
        return cur.rowcount == 1

    def audit(self, event: Mapping[str, Any]) -> int:
        return append_audit(self._conn, event)


class SqliteKeyStore(Connection):
    """:class:`~paywarden.signer.store.protocols.KeyStore` on either backend's connection."""

    @contextmanager
    def key_tx(self) -> Iterator[SqliteKeyTx]:
        try:
            with self._write() as conn:
                yield SqliteKeyTx(conn)
                self._key_generation += 1  # under the lock, before the commit
        except sqlite3.Error as exc:
            raise StoreError(f"cannot change the payment keys: {exc}") from None

    def key_versions(self) -> list[KeyVersion]:
        result: list[KeyVersion] = self._read(all_versions)
        return result

    def key_generation(self) -> int:
        return self._key_generation

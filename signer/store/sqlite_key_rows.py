"""The payment key versions' rows (migration 12): the reads and the insert that both the
Sign path's transaction (:mod:`.sqlite_tx`) and the custody transaction
(:mod:`.sqlite_keys`) use."""

from __future__ import annotations

from typing import Any

from paywarden.policy.vocabulary import KeyState
from paywarden.signer.store.records import KeyVersion
from paywarden.signer.store.sql import Conn


def to_version(row: tuple[Any, ...]) -> KeyVersion:
    key_id, label, version, state, spki, created, changed, retired, revoked, why = row
    return KeyVersion(
        key_id=key_id,
        label=label,
        version=int(version),
        state=KeyState(state),
        spki_der=bytes(spki),
        created_at=int(created),
        state_changed_at=int(changed),
        retired_at=retired,
        revoked_at=revoked,
        revoked_reason=why,
    )


def key_version(conn: Conn, key_id: str) -> KeyVersion | None:
    """One version by its id (the primary key: one index probe)."""
    row = conn.execute(
        "SELECT key_id, label, version, state, spki, created_at, state_changed_at,"
        " retired_at, revoked_at, revoked_reason"
        " FROM payment_keys WHERE key_id = ?",
        (key_id,),
    ).fetchone()
    return to_version(row) if row is not None else None


def active_key(conn: Conn, label: str) -> KeyVersion | None:
    """The label's active version (the newest if a configuration named several): one
    probe of the partial index ``payment_keys_active``."""
    row = conn.execute(
        "SELECT key_id, label, version, state, spki, created_at, state_changed_at,"
        " retired_at, revoked_at, revoked_reason"
        " FROM payment_keys WHERE label = ? AND state = 'active'"
        " ORDER BY version DESC LIMIT 1",
        (label,),
    ).fetchone()
    return to_version(row) if row is not None else None


def all_versions(conn: Conn) -> list[KeyVersion]:
    rows = conn.execute(
        "SELECT key_id, label, version, state, spki, created_at, state_changed_at,"
        " retired_at, revoked_at, revoked_reason"
        " FROM payment_keys ORDER BY label, version"
    ).fetchall()
    return [to_version(r) for r in rows]


def insert(conn: Conn, k: KeyVersion) -> bool:
    """Adds a version unless its id is stored already (never replaces one)."""
    return (
        conn.execute(
            "INSERT INTO payment_keys (key_id, label, version, state, spki,"
            " created_at, state_changed_at, retired_at, revoked_at, revoked_reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                k.key_id,
                k.label,
                k.version,
                str(k.state),
                k.spki_der,
                k.created_at,
                k.state_changed_at,
                k.retired_at,
                k.revoked_at,
                k.revoked_reason,
            ),
        ).rowcount
        == 1
    )

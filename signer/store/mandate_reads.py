"""Mandates in the SQL both backends run, on a connection the caller holds: a mandate
with its use (the deciding transaction's read, and GetSession's), its opening in a
session's transaction, and its revocations (migration 15, :mod:`.mandate_schema`).

A mandate's use is split as a session's spend is (:mod:`.sqlite_facts`): the settled
part in its row (:mod:`.mandate_facts`), the open part read row by row through the
partial index ``reservations_open_mandate``, which holds only unsigned reservations
not released, limited to ``expires_at > now``: young rows only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from paywarden.signer.store.records import (
    InvariantBroken,
    MandateMismatch,
    MandateRecord,
    MandateReplayed,
    MandateRevocation,
    MandateRevocationKind,
    MandateRevoked,
    MandateUse,
)
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite_facts import OPEN

_COLUMNS = (
    "id, agent_id, holder_jkt, issuer, asset, terms_sha256, terms, min_minor, max_minor,"
    " budget_minor, max_uses, spacing_seconds, not_before, reference, expires_at, created_at"
)
_HOLDER = "FROM mandate_revocations WHERE kind = 'holder' AND value = mandates.holder_jkt"
_REVOCATION = "SELECT kind, value, reason, operator, created_at FROM mandate_revocations"


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _record(row: tuple[Any, ...]) -> MandateRecord:
    return MandateRecord(
        id=row[0],
        agent_id=row[1],
        holder_jkt=row[2],
        issuer=row[3],
        asset=row[4],
        terms_sha256=row[5],
        terms=row[6],
        min_minor=_int(row[7]),
        max_minor=_int(row[8]),
        budget_minor=int(row[9]),
        max_uses=_int(row[10]),
        spacing_seconds=_int(row[11]),
        not_before=_int(row[12]),
        reference=row[13],
        expires_at=int(row[14]),
        created_at=int(row[15]),
        revoked_at=_int(row[16]),
        revoked_reason=str(row[17]),
    )


def revocation(row: tuple[Any, ...]) -> MandateRevocation:
    kind, value, reason, operator, at = row
    return MandateRevocation(MandateRevocationKind(kind), value, reason, operator, int(at))


def mandate(conn: Conn, mandate_id: str, now: int) -> tuple[MandateRecord, MandateUse] | None:
    """The mandate, revoked if it or its holder key is (the earlier time), and its use
    at ``now``: two statements, each index probes only."""
    row = conn.execute(
        f"SELECT {_COLUMNS}, revoked_at, revoked_reason, spent_minor, uses, last_use_at,"  # noqa: S608 - constant text
        f" (SELECT created_at {_HOLDER}), (SELECT reason {_HOLDER}) FROM mandates WHERE id = ?",
        (mandate_id,),
    ).fetchone()
    if row is None:
        return None
    record = _record(row[:18])
    holder_at = _int(row[21])
    if holder_at is not None and (record.revoked_at is None or holder_at < record.revoked_at):
        record = replace(record, revoked_at=holder_at, revoked_reason=str(row[22]))
    spent, uses, last = int(row[18]), int(row[19]), _int(row[20])
    for asset, amount, at in conn.execute(
        "SELECT asset, amount_minor, created_at FROM reservations"  # noqa: S608 - constant text
        f" INDEXED BY reservations_open_mandate WHERE mandate_id = ? AND expires_at > ?"
        f" AND {OPEN}",
        (mandate_id, now),
    ):
        if asset != record.asset:
            raise InvariantBroken(f"a payment in {asset} against mandate {mandate_id}")
        spent += int(amount)
        uses += 1
        last = int(at) if last is None else max(last, int(at))
    return record, MandateUse(spent, uses, last)


def open_mandate(conn: Conn, m: MandateRecord) -> None:
    """In a session's transaction, before it writes anything: refuses a revoked holder
    key or a mandate revoked by its id (also before it was first seen), stores the
    mandate if it is new, then refuses a revoked mandate or one stored with other terms,
    agent or holder."""
    held = conn.execute(
        "SELECT 1 FROM mandate_revocations WHERE (kind = 'holder' AND value = ?)"
        " OR (kind = 'mandate' AND value = ?)",
        (m.holder_jkt, m.id),
    ).fetchone()
    if held is not None:
        raise MandateRevoked(f"mandate {m.id}, or the key {m.holder_jkt} holding it, is revoked")
    conn.execute(
        f"INSERT INTO mandates ({_COLUMNS})"  # noqa: S608 - constant column list
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            m.id, m.agent_id, m.holder_jkt, m.issuer, m.asset, m.terms_sha256, m.terms,
            _text(m.min_minor), _text(m.max_minor), str(m.budget_minor), m.max_uses,
            m.spacing_seconds, m.not_before, m.reference, m.expires_at, m.created_at,
        ),
    )  # fmt: skip
    agent_id, holder_jkt, terms_sha256, revoked_at = conn.execute(
        "SELECT agent_id, holder_jkt, terms_sha256, revoked_at FROM mandates WHERE id = ?",
        (m.id,),
    ).fetchone()
    if revoked_at is not None:
        raise MandateRevoked(f"mandate {m.id} is revoked")
    if (agent_id, holder_jkt, terms_sha256) != (m.agent_id, m.holder_jkt, m.terms_sha256):
        raise MandateMismatch(f"mandate {m.id} is stored with other terms, agent or holder")


def present(conn: Conn, presentation: str, mandate_id: str, now: int) -> None:
    """Records the closed agent hop a session is opened with; :class:`MandateReplayed`
    if one was opened with it before (in the session's transaction: undone with it)."""
    added = conn.execute(
        "INSERT INTO mandate_presentations (sha256, mandate_id, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (sha256) DO NOTHING",
        (presentation, mandate_id, now),
    ).rowcount
    if added != 1:
        raise MandateReplayed(f"the closed hop {presentation} opened a session before")


def _text(amount: int | None) -> str | None:
    return None if amount is None else str(amount)


def revoke_one(conn: Conn, r: MandateRevocation) -> tuple[MandateRevocation, bool, int]:
    """Revokes one mandate by its id, unless it is revoked. A mandate no session was
    opened from yet is revoked too: the revocation refuses it when it is first presented."""
    row = conn.execute(
        "SELECT holder_jkt, revoked_at FROM mandates WHERE id = ?", (r.value,)
    ).fetchone()
    if row is None:
        if _insert(conn, r, if_new=True):
            return r, True, 0
        kept = conn.execute(
            f"{_REVOCATION} WHERE kind = 'mandate' AND value = ?", (r.value,)
        ).fetchone()
        return revocation(kept), False, 0
    if row[1] is None:
        _insert(conn, r)
        conn.execute(
            "UPDATE mandates SET revoked_at = ?, revoked_reason = ? WHERE id = ?",
            (r.created_at, r.reason, r.value),
        )
        return r, True, 0
    earliest = conn.execute(
        f"{_REVOCATION} WHERE (kind = 'mandate' AND value = ?)"
        " OR (kind = 'holder' AND value = ?) ORDER BY created_at, kind LIMIT 1",
        (r.value, row[0]),
    ).fetchone()
    if earliest is None:
        raise InvariantBroken(f"mandate {r.value} is revoked, and no revocation says so")
    return revocation(earliest), False, 0


def revoke_holder(conn: Conn, r: MandateRevocation) -> tuple[MandateRevocation, bool, int]:
    """Revokes an agent key: every stored mandate it holds, and any first seen later."""
    if not _insert(conn, r, if_new=True):
        row = conn.execute(
            f"{_REVOCATION} WHERE kind = 'holder' AND value = ?",
            (r.value,),
        ).fetchone()
        return revocation(row), False, 0
    revoked = conn.execute(
        "UPDATE mandates SET revoked_at = ?, revoked_reason = ?"
        " WHERE holder_jkt = ? AND revoked_at IS NULL",
        (r.created_at, r.reason, r.value),
    ).rowcount
    return r, True, int(revoked)


def _insert(conn: Conn, r: MandateRevocation, *, if_new: bool = False) -> bool:
    conflict = " ON CONFLICT DO NOTHING" if if_new else ""
    added = conn.execute(
        "INSERT INTO mandate_revocations (kind, value, reason, operator, created_at)"  # noqa: S608 - constant text
        f" VALUES (?, ?, ?, ?, ?){conflict}",
        (r.kind, r.value, r.reason, r.operator, r.created_at),
    ).rowcount
    return bool(added)


def revocations(conn: Conn) -> list[MandateRevocation]:
    rows = conn.execute(f"{_REVOCATION} ORDER BY created_at, kind, value").fetchall()
    return [revocation(r) for r in rows]

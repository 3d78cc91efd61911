"""An agent's overview (``paywarden explain agent``): the facts a decision reads,
its open sessions, its pending approvals, the freezes that stop it and whether its
principal id is revoked, in one read transaction.

Each part costs what the deciding path's reads cost, never the agent's history:
spend and counts come from :mod:`.sqlite_facts` (aggregates and young open rows),
open sessions from the partial index ``sessions_open_agent`` (closed sessions are
not in it), pending approvals from the agent's open reservations.
"""

from __future__ import annotations

from collections.abc import Collection

from paywarden.policy.vocabulary import FreezeScope
from paywarden.signer.store import sqlite_facts as facts
from paywarden.signer.store import sqlite_reads as reads
from paywarden.signer.store.records import (
    AgentOverview,
    Freeze,
    Revocation,
    RevocationKind,
    SessionRecord,
    WindowStats,
)
from paywarden.signer.store.sql import Conn


def breaker_window(conn: Conn, agent_id: str, since: int, payee_key: str) -> WindowStats:
    """The breaker's window: after ``since`` or the agent's last reset by an operator's
    unfreeze, whichever is later."""
    return facts.window_stats(conn, agent_id, since, payee_key, after_reset=True)


def _open_sessions(
    conn: Conn, agent_id: str, now: int, limit: int
) -> tuple[tuple[SessionRecord, ...], int]:
    where = "FROM sessions INDEXED BY sessions_open_agent WHERE agent_id = ? AND expires_at > ?"
    where += " AND closed_at IS NULL"
    (count,) = conn.execute(f"SELECT COUNT(*) {where}", (agent_id, now)).fetchone()
    ids = [
        r[0]
        for r in conn.execute(
            f"SELECT id {where} ORDER BY expires_at LIMIT ?",
            (agent_id, now, limit),
        )
    ]
    found = (reads.session(conn, i, now) for i in ids)
    return tuple(s for s in found if s is not None), int(count)


def _pending_approvals(conn: Conn, agent_id: str, now: int) -> int:
    """The agent's held (unsigned, unreleased, unexpired) reservations whose approval
    is still pending: an approval expires with its payment."""
    held = conn.execute(
        "SELECT decision_id FROM reservations"  # noqa: S608
        f" INDEXED BY reservations_open_agent WHERE agent_id = ? AND expires_at > ?"
        f" AND {facts.OPEN} AND status = 'held'",
        (agent_id, now),
    ).fetchall()
    pending = 0
    for (decision_id,) in held:
        row = conn.execute(
            "SELECT 1 FROM approvals WHERE decision_id = ? AND status = 'pending'"
            " AND expires_at > ?",
            (decision_id, now),
        ).fetchone()
        pending += row is not None
    return pending


def _freezes(
    conn: Conn, agent_id: str, session_ids: Collection[str], keys: Collection[str]
) -> tuple[Freeze, ...]:
    """The freezes that stop this agent: by primary key, one lookup each."""
    wanted = [(FreezeScope.GLOBAL, ""), (FreezeScope.AGENT, agent_id)]
    wanted += [(FreezeScope.SESSION, s) for s in session_ids]
    wanted += [(FreezeScope.KEY, k) for k in sorted(keys)]
    found = []
    for scope, target in wanted:
        row = conn.execute(
            "SELECT scope, target, reason, actor, source, at FROM freezes"
            " WHERE scope = ? AND target = ?",
            (scope, target),
        ).fetchone()
        if row is not None:
            found.append(reads.freeze_row(row))
    return tuple(found)


def _revoked(conn: Conn, agent_id: str) -> Revocation | None:
    """The revocation of the agent's principal id, by primary key. A certificate
    serial's revocation stops one certificate, not the agent: it is not the agent's."""
    row = conn.execute(
        "SELECT reason, operator, created_at FROM revocations WHERE kind = ? AND value = ?",
        (RevocationKind.PRINCIPAL.value, agent_id),
    ).fetchone()
    if row is None:
        return None
    return Revocation(RevocationKind.PRINCIPAL, agent_id, row[0], row[1], row[2])


def agent_overview(
    conn: Conn,
    agent_id: str,
    *,
    assets: Collection[str],
    keys: Collection[str],
    now: int,
    day_start: int,
    velocity_seconds: int,
    breaker_seconds: int | None,
    max_sessions: int,
) -> AgentOverview:
    """See :class:`AgentOverview`; the caller holds a read transaction."""
    usage = {
        a: facts.agent_usage(conn, agent_id, a, "", now, day_start, velocity_seconds)
        for a in sorted(assets)
    }
    sessions, count = _open_sessions(conn, agent_id, now, max_sessions)
    window = None
    if breaker_seconds is not None:
        window = breaker_window(conn, agent_id, now - breaker_seconds, "")
    return AgentOverview(
        usage=usage,
        sessions=sessions,
        open_sessions=count,
        pending_approvals=_pending_approvals(conn, agent_id, now),
        freezes=_freezes(conn, agent_id, [s.id for s in sessions], keys),
        window=window,
        revoked=_revoked(conn, agent_id),
    )

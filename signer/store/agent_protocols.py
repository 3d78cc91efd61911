"""The store's interface for what an operator reads about one agent (see
:mod:`.protocols`, which :class:`~paywarden.signer.store.protocols.Store` gathers it into)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from paywarden.signer.store.records import AgentOverview


class AgentReadStore(Protocol):
    """What an operator reads about one agent (``paywarden explain agent``)."""

    def agent_overview(
        self,
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
        """In one read transaction, with the deciding path's own fact reads: the agent's
        usage in each of ``assets`` (today since ``day_start``, the rolling 24 hours,
        payments in the last ``velocity_seconds``, payees today), its open sessions (at
        most ``max_sessions``, soonest expiry first, and their count), its pending
        approvals, the freezes that stop it (global, the agent, those sessions, ``keys``)
        and, when ``breaker_seconds`` is given, the breaker's window. Costs what a
        decision's reads cost plus the agent's open sessions, never its history."""


__all__ = ["AgentReadStore"]

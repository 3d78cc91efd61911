"""Requests that the blocking and the asyncio planner clients both build (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NotRequired, TypedDict, Unpack

from paywarden.v1 import sessions_pb2


@dataclass(frozen=True)
class PlanItem:
    """One planned payment: to ``payee``, in ``asset``, at most ``max_amount`` each time,
    at most ``count`` times."""

    payee: str
    asset: str
    max_amount: str
    count: int = 1


class SessionOptions(TypedDict):
    """What a planner says when it opens a session for an agent."""

    task: str
    """What the agent is to do (its digest is bound into every payment of the session)."""
    budgets: NotRequired[Mapping[str, str]]
    """Asset code -> the most the session may spend in it (a decimal string); required
    unless ``mandate`` is given."""
    ttl_seconds: NotRequired[int]
    """Lifetime in seconds (default 900; with a ``mandate``, 0: up to the mandate's end)."""
    allowed_payees: NotRequired[Iterable[str]]
    """When given, the only payees the agent may pay."""
    plan_bound: NotRequired[bool]
    """Nothing is signed until a plan is committed (:class:`PlanItem`)."""
    mandate: NotRequired[str]
    """A human-signed mandate chain (SD-JWT hops joined by ``~~``): the session's budget,
    payees and expiry come from it (then no ``budgets`` or ``allowed_payees``)."""


def open_request(
    agent_id: str, **options: Unpack[SessionOptions]
) -> sessions_pb2.OpenSessionRequest:
    """The OpenSession request for ``agent_id``."""
    mandate = options.get("mandate", "")
    return sessions_pb2.OpenSessionRequest(
        agent_id=agent_id,
        task_description=options["task"],
        budgets=[
            sessions_pb2.AssetBudget(asset=a, amount=v)
            for a, v in options.get("budgets", {}).items()
        ],
        ttl_seconds=options.get("ttl_seconds", 0 if mandate else 900),
        allowed_payees=list(options.get("allowed_payees", ())),
        plan_bound=options.get("plan_bound", False),
        mandate=mandate,
    )


def plan_request(session_id: str, items: Iterable[PlanItem]) -> sessions_pb2.CommitPlanRequest:
    """The CommitPlan request for ``items``."""
    return sessions_pb2.CommitPlanRequest(
        session_id=session_id,
        lines=[
            sessions_pb2.PlanLine(
                payee=i.payee, asset=i.asset, max_amount=i.max_amount, count=i.count
            )
            for i in items
        ],
    )


def session_id_request(session_id: str) -> sessions_pb2.GetSessionRequest:
    """A GetSession request."""
    return sessions_pb2.GetSessionRequest(session_id=session_id)


def close_request(session_id: str) -> sessions_pb2.CloseSessionRequest:
    """A CloseSession request."""
    return sessions_pb2.CloseSessionRequest(session_id=session_id)


def note_close_failure(error: BaseException, close_error: BaseException, session_id: str) -> None:
    """Records on ``error`` (the one the block raised, which stands) that closing the
    session failed too."""
    error.add_note(f"closing session {session_id} failed as well: {close_error}")

"""One way to open and read a session over gRPC, for every test module.

Budgets are given at the call site: one amount (in ``asset``, USD unless told) or a
mapping of asset to amount for a session with several budgets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from paywarden.v1 import sessions_pb2, sessions_pb2_grpc

Budget = str | Mapping[str, str]
"""One amount (in the ``asset`` given beside it) or {asset: amount}."""


def open_request(
    agent: str,
    budget: Budget,
    *,
    task: str = "buy things",
    ttl: int = 900,
    asset: str = "USD",
    allowed_payees: Sequence[str] = (),
    plan_bound: bool = False,
) -> sessions_pb2.OpenSessionRequest:
    """The request a planner sends to open a session for ``agent``."""
    budgets = {asset: budget} if isinstance(budget, str) else budget
    return sessions_pb2.OpenSessionRequest(
        agent_id=agent,
        task_description=task,
        budgets=[sessions_pb2.AssetBudget(asset=a, amount=v) for a, v in budgets.items()],
        ttl_seconds=ttl,
        allowed_payees=list(allowed_payees),
        plan_bound=plan_bound,
    )


def opened_session(
    planner: sessions_pb2_grpc.SessionsStub,
    agent: str,
    budget: Budget,
    *,
    task: str = "buy things",
    ttl: int = 900,
    asset: str = "USD",
    allowed_payees: Sequence[str] = (),
    plan_bound: bool = False,
    timeout: float | None = None,
) -> sessions_pb2.Session:
    """Opens a session for ``agent``; returns the session as the planner sees it."""
    request = open_request(
        agent,
        budget,
        task=task,
        ttl=ttl,
        asset=asset,
        allowed_payees=allowed_payees,
        plan_bound=plan_bound,
    )
    session: sessions_pb2.Session = planner.OpenSession(request, timeout=timeout).session
    return session


def open_session(
    planner: sessions_pb2_grpc.SessionsStub,
    agent: str,
    budget: Budget,
    *,
    task: str = "buy things",
    ttl: int = 900,
    asset: str = "USD",
    allowed_payees: Sequence[str] = (),
    plan_bound: bool = False,
    timeout: float | None = None,
) -> str:
    """Opens a session for ``agent``; returns its id."""
    session = opened_session(
        planner,
        agent,
        budget,
        task=task,
        ttl=ttl,
        asset=asset,
        allowed_payees=allowed_payees,
        plan_bound=plan_bound,
        timeout=timeout,
    )
    return str(session.session_id)


def get_session(
    stub: sessions_pb2_grpc.SessionsStub, session_id: str, *, timeout: float | None = None
) -> sessions_pb2.Session:
    """The session as ``stub``'s caller sees it."""
    session: sessions_pb2.Session = stub.GetSession(
        sessions_pb2.GetSessionRequest(session_id=session_id), timeout=timeout
    ).session
    return session


def spent(
    stub: sessions_pb2_grpc.SessionsStub, session_id: str, *, timeout: float | None = None
) -> dict[str, str]:
    """{asset: amount spent} of the session, as ``stub``'s caller sees it."""
    return {s.asset: s.spent for s in get_session(stub, session_id, timeout=timeout).spend}

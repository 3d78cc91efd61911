"""One way to open a session over gRPC, for every test module."""

from __future__ import annotations

from collections.abc import Sequence

from paywarden.v1 import sessions_pb2, sessions_pb2_grpc


def open_session(
    planner: sessions_pb2_grpc.SessionsStub,
    agent: str,
    budget: str,
    *,
    task: str = "buy things",
    ttl: int = 900,
    asset: str = "USD",
    allowed_payees: Sequence[str] = (),
    timeout: float | None = None,
) -> str:
    """Opens a session for ``agent`` with one budget; returns its id."""
    request = sessions_pb2.OpenSessionRequest(
        agent_id=agent,
        task_description=task,
        budgets=[sessions_pb2.AssetBudget(asset=asset, amount=budget)],
        ttl_seconds=ttl,
        allowed_payees=list(allowed_payees),
    )
    return str(planner.OpenSession(request, timeout=timeout).session.session_id)

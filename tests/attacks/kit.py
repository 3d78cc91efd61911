"""What the attack tests share, written once instead of once per module.

The values a test cares about (budget, payee, amount, expiry) stay at the call site.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2_grpc

Dial = Callable[[str, str], grpc.Channel]
"""(role, principal) -> a channel that presents that principal's certificate."""


@dataclass
class Api:
    """planner-1's Sessions stub and agent-1's Signer stub."""

    planner: sessions_pb2_grpc.SessionsStub
    signer: signer_pb2_grpc.SignerStub


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

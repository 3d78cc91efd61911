"""What the attack tests share, written once instead of once per module.

The values a test cares about (budget, payee, amount, expiry) stay at the call site.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paywarden.signer.identity import Principal, Role
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc

# The callers a test names when it calls the service in process, not over gRPC.
AGENT = Principal(Role.AGENT, "agent-1")
PLANNER = Principal(Role.PLANNER, "planner-1")
OPERATOR = Principal(Role.OPERATOR, "operator-1")


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


def audit_log(db: Path) -> list[dict[str, Any]]:
    """Every audit record in the SQLite file, in order (opened read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit_log ORDER BY seq")]
    finally:
        conn.close()


def stored_records(store: Any, after: int = 0) -> list[dict[str, Any]]:
    """The audit records an open store holds past the first ``after``, in order."""
    size, _root = store.audit_head()
    return [json.loads(store.audit_record(seq)) for seq in range(after + 1, size + 1)]

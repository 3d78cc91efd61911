"""Attack: refused approval votes left no trace.

A self-approval attempt (the agent's own approver certificate), a vote by the
session's planner, a vote on a finished, unknown or malformed approval: each
was refused, and none of them left an audit record. Every refused vote must
leave exactly one record, naming who tried what and why it was refused.
Real SoftHSM2 token, real SQLite store, a real gRPC server over mutual TLS.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from paywarden.v1 import (
    approvals_pb2,
    approvals_pb2_grpc,
    sessions_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
)

from tests.attacks.kit import stored_records
from tests.helpers import Stack, reason_of, trailing_metadata
from tests.support.clients import Dial
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

PACK = """
id = "votes"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "1000.00"
approval_above = "10.00"

[payees]
allow = ["acme-data"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "5000.00" }
"""

PACKS = {"votes.toml": PACK}
pytestmark = pytest.mark.stack(packs=PACKS)


def _pending(dial: Dial, stack: Stack) -> str:
    planner = sessions_pb2_grpc.SessionsStub(dial("planner", "planner-1"))
    sid = open_session(planner, "agent-1", "500.00", task="buy a dataset")
    intent = payment_intent(
        sid,
        payee="acme-data",
        amount="50.00",
        purpose="dataset",
        expires_at=int(stack.clock.now()) + 120,
    )
    resp = signer_pb2_grpc.SignerStub(dial("agent", "agent-1")).Sign(
        signer_pb2.SignRequest(intent=intent)
    )
    assert resp.status == signer_pb2.PENDING_APPROVAL
    return str(resp.approval_id)


def _refused_vote(
    dial: Dial, stack: Stack, who: str, method: str, approval_id: str, reason: str, note: str = ""
) -> dict[str, Any]:
    """Casts the vote, expects ``reason``; returns the one record the call added."""
    stub = approvals_pb2_grpc.ApprovalsStub(dial("approver", who))
    request = (approvals_pb2.ApproveRequest if method == "Approve" else approvals_pb2.DenyRequest)(
        approval_id=approval_id, note=note
    )
    before = len(stored_records(stack.store))
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request)
    assert reason_of(info.value) == reason
    added = stored_records(stack.store)[before:]
    assert len(added) == 1, added
    record = added[0]
    assert record["action"] == "approval.refused"
    assert record["actor"] == {"role": "approver", "id": who}
    assert record["reason"] == reason
    assert record["vote"] == ("approve" if method == "Approve" else "deny")
    metadata = trailing_metadata(info.value)
    assert int(metadata["paywarden-audit-seq"]) == record["seq"]
    return record


@pytest.mark.parametrize("method", ["Approve", "Deny"])
def test_self_approval_attempt_is_audited(dial: Dial, stack: Stack, method: str) -> None:
    approval_id = _pending(dial, stack)
    record = _refused_vote(
        dial, stack, "agent-1", method, approval_id, "APPROVER_IS_REQUESTER", note="self-service"
    )
    assert record["untrusted"] == {"approval_id": approval_id, "note": "self-service"}


@pytest.mark.parametrize("method", ["Approve", "Deny"])
def test_session_planner_voting_is_audited(dial: Dial, stack: Stack, method: str) -> None:
    approval_id = _pending(dial, stack)
    _refused_vote(dial, stack, "planner-1", method, approval_id, "APPROVER_IS_PLANNER")


def test_vote_on_a_finished_approval_is_audited(dial: Dial, stack: Stack) -> None:
    approval_id = _pending(dial, stack)
    approvals_pb2_grpc.ApprovalsStub(dial("approver", "approver-1")).Deny(
        approvals_pb2.DenyRequest(approval_id=approval_id, note="no")
    )
    _refused_vote(dial, stack, "approver-2", "Approve", approval_id, "APPROVAL_NOT_PENDING")


def test_vote_on_an_unknown_approval_is_audited(dial: Dial, stack: Stack) -> None:
    _refused_vote(dial, stack, "approver-1", "Approve", "apr_" + "0" * 26, "APPROVAL_NOT_FOUND")


@pytest.mark.parametrize(
    ("approval_id", "note", "reason"),
    [
        ("not-an-approval", "", "STRING_INVALID"),
        ("apr_" + "x" * 100, "", "STRING_INVALID"),
        (None, "\x1b[31mapproved", "STRING_CONTROL_CHAR"),
    ],
    ids=["malformed-id", "overlong-id", "control-char-note"],
)
def test_malformed_vote_is_audited(
    dial: Dial, stack: Stack, approval_id: str | None, note: str, reason: str
) -> None:
    target = approval_id if approval_id is not None else _pending(dial, stack)
    record = _refused_vote(dial, stack, "approver-1", "Approve", target, reason, note=note)
    assert len(record["untrusted"]["approval_id"]) <= 100

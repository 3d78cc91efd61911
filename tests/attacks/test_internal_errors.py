"""Every call leaves exactly one audit record, a call that hit a bug included.

The attack: an RPC that failed with an internal error (anything that is not a
PaywardenError) was answered INTERNAL with no audit record, so the log could
not show that the call happened. The rpc wrapper now writes one ``rpc.error``
record naming the method and the caller, and nothing of the exception's text,
which could carry secrets. The fault is injected: the real service has no bug
to trigger on demand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import grpc
import pytest
from paywarden.signer.errors import Reason
from paywarden.v1 import control_pb2, control_pb2_grpc, signer_pb2, signer_pb2_grpc

from tests.helpers import Stack, reason_of

SECRET = "pin=918273-not-for-logs"
TIMEOUT = 10


def _boom(*_args: object, **_kwargs: object) -> object:
    raise RuntimeError(f"the HSM said {SECRET}")


def _records_after(stack: Stack, size: int) -> list[dict[str, object]]:
    head, _root = stack.store.audit_head()
    return [json.loads(stack.store.audit_record(seq)) for seq in range(size + 1, head + 1)]


@pytest.fixture
def audit_size(stack: Stack) -> Iterator[int]:
    size, _root = stack.store.audit_head()
    yield size


def _audit_seq(err: grpc.RpcError) -> int | None:
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "paywarden-audit-seq":
            return int(value)
    return None


def _call_get_public_keys(channel: grpc.Channel) -> object:
    return signer_pb2_grpc.SignerStub(channel).GetPublicKeys(
        signer_pb2.GetPublicKeysRequest(), timeout=TIMEOUT
    )


def _call_list_freezes(channel: grpc.Channel) -> object:
    return control_pb2_grpc.ControlStub(channel).ListFreezes(
        control_pb2.ListFreezesRequest(), timeout=TIMEOUT
    )


Case = tuple[str, str, str, str, str, Callable[[grpc.Channel], object]]
CASES: dict[str, Case] = {
    # name: (stack attribute, its method to break, role, principal, rpc, call)
    "signer": (
        "service",
        "public_keys",
        "agent",
        "agent-2",
        "/paywarden.v1.Signer/GetPublicKeys",
        _call_get_public_keys,
    ),
    "control": (
        "control",
        "freezes",
        "operator",
        "operator-1",
        "/paywarden.v1.Control/ListFreezes",
        _call_list_freezes,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_a_bug_in_any_rpc_is_answered_internal_and_audited_once(
    stack: Stack,
    grpc_create_channel: Callable[[str, str], grpc.Channel],
    monkeypatch: pytest.MonkeyPatch,
    audit_size: int,
    case: Case,
) -> None:
    owner, attr, role, principal, rpc, call = case
    monkeypatch.setattr(getattr(stack, owner), attr, _boom)
    with grpc_create_channel(role, principal) as channel, pytest.raises(grpc.RpcError) as info:
        call(channel)
    err = info.value
    assert err.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert reason_of(err) == Reason.INTERNAL
    assert SECRET not in (err.details() or "")  # type: ignore[attr-defined]

    records = _records_after(stack, audit_size)
    assert len(records) == 1, records
    (record,) = records
    assert record["action"] == "rpc.error"
    assert record["actor"] == {"role": role, "id": principal}
    assert record["rpc"] == rpc
    assert SECRET not in json.dumps(record)
    assert "RuntimeError" not in json.dumps(record)
    # The answer names its record, as every other refusal does.
    assert _audit_seq(err) == audit_size + 1


def test_the_call_after_the_bug_is_served_normally(
    stack: Stack, grpc_create_channel: Callable[[str, str], grpc.Channel], audit_size: int
) -> None:
    with grpc_create_channel("agent", "agent-2") as channel:
        keys = _call_get_public_keys(channel)
    assert isinstance(keys, signer_pb2.GetPublicKeysResponse)
    assert _records_after(stack, audit_size) == []

"""Every call leaves exactly one audit record, a call that hit a bug included.

The attack: an RPC that failed with an internal error (anything that is not a
PaywardenError) was answered INTERNAL with no audit record, so the log could
not show that the call happened. The rpc wrapper now writes one ``rpc.error``
record naming the method and the caller, and nothing of the exception's text,
which could carry secrets. The fault is injected: the real service has no bug
to trigger on demand.

That record keeps the services' time too: after the system clock steps back,
its time is not below the time of the record before it (the server's wrapper
once read the raw clock while the services read the high-water one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from operator import attrgetter
from pathlib import Path

import grpc
import pytest
from paywarden.signer.api import server
from paywarden.signer.config_file import load_config
from paywarden.signer.errors import Reason
from paywarden.v1 import control_pb2, control_pb2_grpc, signer_pb2, signer_pb2_grpc

from tests.attacks.kit import stored_records
from tests.helpers import Pki, Stack, TestToken, reason_of, trailing_metadata, write_config

SECRET = "pin=918273-not-for-logs"
TIMEOUT = 10


def _boom(*_args: object, **_kwargs: object) -> object:
    raise RuntimeError(f"the HSM said {SECRET}")


@pytest.fixture
def audit_size(stack: Stack) -> Iterator[int]:
    size, _root = stack.store.audit_head()
    yield size


def _audit_seq(err: grpc.RpcError) -> int | None:
    seq = trailing_metadata(err).get("paywarden-audit-seq")
    return None if seq is None else int(seq)


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
        "service.keys",
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
    monkeypatch.setattr(attrgetter(owner)(stack), attr, _boom)
    with grpc_create_channel(role, principal) as channel, pytest.raises(grpc.RpcError) as info:
        call(channel)
    err = info.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert reason_of(err) == Reason.INTERNAL
    assert SECRET not in (err.details() or "")

    records = stored_records(stack.store, audit_size)
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
    assert stored_records(stack.store, audit_size) == []


class _SteppedClock:
    """The ``time`` module as ``server.start`` sees it, with ``time()`` moved by ``offset``
    seconds: the system clock stepping back is a fault the test cannot cause for real."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_an_internal_error_after_the_clock_steps_back_is_not_recorded_back_in_time(
    tmp_path: Path, token: TestToken, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _SteppedClock(offset=600.0)  # ten minutes ahead; then the step back to now
    monkeypatch.setattr(server, "time", clock)
    running = server.start(load_config(write_config(tmp_path, token, pki), environ={}))
    try:
        size, _root = running.store.audit_head()
        before = json.loads(running.store.audit_record(size))  # keys.load, at start-up
        clock.offset = 0.0
        monkeypatch.setattr(running.service.keys, "public_keys", _boom)
        with pki.channel(f"127.0.0.1:{running.port}", "agent", "agent-2") as channel:
            with pytest.raises(grpc.RpcError) as info:
                _call_get_public_keys(channel)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert running.store.audit_head()[0] == size + 1  # the call's one record
        record = json.loads(running.store.audit_record(size + 1))
    finally:
        running.stop(0)
        assert not running.hsm.available  # stop logged the token out
    assert record["action"] == "rpc.error"
    assert before["time"] >= time.time() + 500  # written while the clock was ahead
    assert record["time"] >= before["time"]

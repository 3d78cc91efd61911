"""One way to say "this call is refused", for every test module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from paywarden.v1 import signer_pb2

from tests.helpers import reason_of, trailing_metadata


def refused(call: Callable[..., Any], /, *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error ``call(*args, **kwargs)`` raises; fails the test if it does not raise one."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def assert_refused(
    call: Callable[[Any], Any], request: Any, code: grpc.StatusCode, reason: str
) -> grpc.RpcError:
    """``call(request)`` fails with ``code`` and reason code ``reason``; returns the error."""
    err = refused(call, request)
    assert (err.code(), reason_of(err)) == (code, reason), err.details()
    return err


def decision_id_of(err: grpc.RpcError) -> str:
    """The decision id a refusal carries in its trailing metadata; fails the test
    if there is none."""
    decision_id = trailing_metadata(err).get("paywarden-decision-id")
    if decision_id is None:
        raise AssertionError("no paywarden-decision-id in the trailing metadata")
    return decision_id


def refusal(answer: object, reason: str) -> grpc.RpcError:
    """``answer`` (a response or the error a call raised) is a refusal with reason code
    ``reason``; returns the error."""
    assert isinstance(answer, grpc.RpcError), f"expected {reason}, got an answer"
    assert reason_of(answer) == reason, answer.details()
    return answer


def outcome(
    call: Callable[..., Any], request: Any, *, timeout: float | None = None, detail: bool = False
) -> str:
    """The answer to ``call(request)`` as one comparable string: ``CODE/REASON`` for a
    refusal, the SignStatus name for a response (``detail``: with its decision id, JWS
    and whether it was replayed, ``STATUS/decision/jws/replayed``)."""
    try:
        resp = call(request, timeout=timeout)
    except grpc.RpcError as err:
        return f"{err.code().name}/{reason_of(err)}"
    status = str(signer_pb2.SignStatus.Name(resp.status))
    if detail:
        return f"{status}/{resp.decision_id}/{resp.jws}/{resp.replayed_result}"
    return status

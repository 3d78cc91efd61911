"""One way to say "this call is refused", for every test module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.helpers import reason_of


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
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "paywarden-decision-id":
            return str(value)
    raise AssertionError("no paywarden-decision-id in the trailing metadata")


def refusal(answer: object, reason: str) -> grpc.RpcError:
    """``answer`` (a response or the error a call raised) is a refusal with reason code
    ``reason``; returns the error."""
    assert isinstance(answer, grpc.RpcError), f"expected {reason}, got an answer"
    assert reason_of(answer) == reason, answer.details()  # type: ignore[attr-defined]
    return answer

"""One way to say "this call is refused", for every test module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.helpers import reason_of


def refused(call: Callable[[Any], Any], request: Any) -> grpc.RpcError:
    """The error ``call(request)`` raises; fails the test if it does not raise one."""
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value


def assert_refused(
    call: Callable[[Any], Any], request: Any, code: grpc.StatusCode, reason: str
) -> grpc.RpcError:
    """``call(request)`` fails with ``code`` and reason code ``reason``; returns the error."""
    err = refused(call, request)
    assert (err.code(), reason_of(err)) == (code, reason), err.details()
    return err

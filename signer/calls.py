"""How long a caller still waits: each call's deadline, seen by the service.

A caller that gave up must not be paid anyway. The gRPC layer records each
call's deadline and cancellation (a server interceptor, which sees the call's
context), and the service asks before it waits for the store, before it commits
a decision, before the HSM signs and before it answers.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from paywarden.signer.errors import DeadlineExceeded, Reason


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Deadline:
    """``at``: when the caller stops waiting (``time.monotonic``), None for never;
    ``active``: whether the caller is still there (False once it cancelled)."""

    at: float | None = None
    active: Callable[[], bool] = field(default=_always)
    margin: float = 0.0  # left for signing and answering after a commit

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def lock_wait(self) -> float | None:
        """How long the store may wait for its lock (None: its own bound)."""
        left = self.remaining()
        return None if left is None else max(0.0, left - self.margin)

    def check(self, margin: float | None = None) -> None:
        """Raises :class:`DeadlineExceeded` when the caller is gone or has less than
        ``margin`` seconds left (the deadline's own margin by default)."""
        if not self.active():
            raise DeadlineExceeded(
                Reason.CALL_CANCELLED, "the caller cancelled the call; nothing was signed"
            )
        left = self.remaining()
        if left is not None and left <= (self.margin if margin is None else margin):
            raise DeadlineExceeded(
                Reason.DEADLINE_EXCEEDED, "the call's deadline passed; nothing was signed"
            )


NO_DEADLINE = Deadline()
_CURRENT: contextvars.ContextVar[Deadline] = contextvars.ContextVar(
    "paywarden_deadline", default=NO_DEADLINE
)


def current() -> Deadline:
    """The deadline of the call this thread is serving (none outside a call)."""
    return _CURRENT.get()


@contextmanager
def serving(deadline: Deadline) -> Iterator[None]:
    token = _CURRENT.set(deadline)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def from_context(context: grpc.ServicerContext, margin: float) -> Deadline:
    left = context.time_remaining()
    at = None if left is None else time.monotonic() + left
    return Deadline(at, context.is_active, margin)


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # not generic at run time
    _Interceptor = grpc.ServerInterceptor


class CallInterceptor(_Interceptor):
    """Records the deadline of every unary call to our services for the service."""

    def __init__(self, prefix: str, margin: float) -> None:
        self._prefix = prefix
        self._margin = margin

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        method = str(getattr(details, "method", ""))
        if handler is None or handler.unary_unary is None or not method.startswith(self._prefix):
            return handler
        behavior = handler.unary_unary
        margin = self._margin

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with serving(from_context(context, margin)):
                return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            run,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

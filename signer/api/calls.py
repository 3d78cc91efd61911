"""How long a caller still waits: each call's deadline, seen by the service.

A caller that gave up must not be paid anyway. The gRPC layer records each
call's deadline and cancellation (a server interceptor, which sees the call's
context), and the service asks before it waits for the store, before it commits
a decision, before the HSM signs and before it answers.

Stopping is the same question: once the server stops (:class:`Gate`), new calls
are refused and every call in flight sees the end of the grace period as its
deadline, if that comes first.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from paywarden.signer.api.status import to_grpc_status
from paywarden.signer.errors import Cancelled, DeadlineExceeded, Reason, Unavailable

# grpc/_server.py (_select_thread_pool_for_behavior) runs a call on the executor named
# by this attribute of the handler's behaviour, if it has one, instead of the server's.
# An interceptor that wraps a behaviour must carry it over (:func:`keep_executor`).
EXECUTOR_ATTRIBUTE = "experimental_thread_pool"

_F = TypeVar("_F", bound=Callable[..., Any])


def executor_of(behaviour: object) -> futures.ThreadPoolExecutor | None:
    """The executor gRPC will run ``behaviour`` on (None: the server's own)."""
    pool = getattr(behaviour, EXECUTOR_ATTRIBUTE, None)
    return pool if isinstance(pool, futures.ThreadPoolExecutor) else None


def run_on(behaviour: _F, pool: futures.ThreadPoolExecutor | None) -> _F:
    """Makes gRPC run ``behaviour`` on ``pool`` (nothing changes for None)."""
    if pool is not None:
        setattr(behaviour, EXECUTOR_ATTRIBUTE, pool)
    return behaviour


def keep_executor(inner: object, outer: _F) -> _F:
    """``outer`` wraps ``inner``: it runs on the executor ``inner`` was given."""
    return run_on(outer, executor_of(inner))


def _always() -> bool:
    return True


def _never() -> float | None:
    return None


@dataclass(frozen=True)
class Deadline:
    """``at``: when the caller stops waiting (``time.monotonic``), None for never;
    ``active``: whether the caller is still there (False once it cancelled)."""

    at: float | None = None
    active: Callable[[], bool] = field(default=_always)
    margin: float = 0.0  # left for signing and answering after a commit
    stop_at: Callable[[], float | None] = field(default=_never)  # the server's grace end

    def _ends(self) -> tuple[float | None, bool]:
        """(when the call must be over, whether the server's stop decides it)."""
        stop = self.stop_at()
        if stop is not None and (self.at is None or stop < self.at):
            return stop, True
        return self.at, False

    def remaining(self) -> float | None:
        ends, _ = self._ends()
        return None if ends is None else ends - time.monotonic()

    def lock_wait(self) -> float | None:
        """How long the store may wait for its lock (None: its own bound)."""
        left = self.remaining()
        return None if left is None else max(0.0, left - self.margin)

    def check(self, margin: float | None = None) -> None:
        """Raises when the caller is gone or has ``margin`` seconds left or less (the
        deadline's own margin by default): :class:`DeadlineExceeded` (:class:`Cancelled`
        once the caller cancelled), or
        :class:`Unavailable` (SHUTTING_DOWN) when the server's stop came first."""
        if not self.active():
            raise Cancelled(
                Reason.CALL_CANCELLED, "the caller cancelled the call; nothing was signed"
            )
        ends, stopping = self._ends()
        if ends is None or ends - time.monotonic() > (self.margin if margin is None else margin):
            return
        if stopping:
            raise Unavailable(Reason.SHUTTING_DOWN, "the signer is stopping; nothing was signed")
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


class Gate:
    """The calls in flight, and the server's stop: once :meth:`close` is called new
    calls are refused (UNAVAILABLE, SHUTTING_DOWN) and those in flight must be over
    by the end of the grace period."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stop_at: float | None = None
        self._on_change = on_change

    def stop_at(self) -> float | None:
        return self._stop_at

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._in_flight)

    def enter(self) -> None:
        with self._cond:
            if self._stop_at is not None:
                raise Unavailable(
                    Reason.SHUTTING_DOWN, "the signer is stopping; retry on another replica"
                )
            self._in_flight += 1
            self._changed()

    def leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._changed()
            self._cond.notify_all()

    def close(self, stop_at: float) -> None:
        """Refuses new calls from now on; calls in flight must end by ``stop_at``
        (``time.monotonic``)."""
        with self._cond:
            self._stop_at = stop_at if self._stop_at is None else min(self._stop_at, stop_at)

    def wait_idle(self, until: float) -> int:
        """Waits until no call is in flight, or ``until``; returns how many still are."""
        with self._cond:
            while self._in_flight and (left := until - time.monotonic()) > 0:
                self._cond.wait(left)
            return self._in_flight


def from_context(context: grpc.ServicerContext, margin: float, gate: Gate) -> Deadline:
    left = context.time_remaining()
    at = None if left is None else time.monotonic() + left
    return Deadline(at, context.is_active, margin, gate.stop_at)


if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:  # not generic at run time
    _Interceptor = grpc.ServerInterceptor


class CallInterceptor(_Interceptor):
    """Counts every unary call to our services through the gate and records its
    deadline for the service. Health and reflection are left alone: health must
    answer NOT_SERVING while the server drains. The wrapped call keeps the executor
    its handler was given (:func:`keep_executor`)."""

    def __init__(self, prefix: str, margin: float, gate: Gate) -> None:
        self._prefix = prefix
        self._margin = margin
        self._gate = gate

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
        margin, gate = self._margin, self._gate

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                gate.enter()
            except Unavailable as exc:
                context.abort_with_status(to_grpc_status(exc))
                raise
            try:
                with serving(from_context(context, margin, gate)):
                    return behavior(request, context)
            finally:
                gate.leave()

        return grpc.unary_unary_rpc_method_handler(
            keep_executor(behavior, run),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

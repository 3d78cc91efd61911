"""Each call's deadline, recorded at the gRPC edge for the service.

The server interceptor (:class:`CallInterceptor`) counts every call through the
:class:`~paywarden.signer.deadlines.Gate` and serves it under the deadline read
from its context (:func:`from_context`); :mod:`paywarden.signer.deadlines` holds
the deadline and the gate themselves, which the service uses without gRPC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from paywarden.signer.api.status import to_grpc_status
from paywarden.signer.deadlines import Deadline, Gate, serving
from paywarden.signer.errors import Unavailable

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

"""Admission: which calls may hold one of the server's worker threads.

The sync gRPC server runs every call on one thread of a fixed pool, and a
stream (health ``Watch``, reflection) holds its thread for as long as the
client keeps it open. Without a bound, sixteen idle streams from any
certificate stalled every RPC, the kill switch included. Here every handler,
ours and the health and reflection ones, is wrapped by one interceptor that,
on the worker thread and before the handler runs:

- authenticates the caller (the client profile and identity of
  :class:`~paywarden.signer.identity.Authenticator`) and checks its role
  (:func:`~paywarden.signer.api.authz.authorize`; reflection is for operators);
- keeps ``server.reserved_workers`` threads for operators' unary calls: every
  other call, and every stream, shares the rest of ``server.max_workers`` and
  is refused RESOURCE_EXHAUSTED (``SERVER_BUSY``) when that share is in use;
- bounds open streams in all and per principal (``TOO_MANY_STREAMS``) and a
  principal's unary calls in flight (``TOO_MANY_CALLS``).

A refusal costs the thread only for the check, and is not audited: a caller
must not be able to fill the log by knocking.

gRPC reads a unary call's request message on the worker thread, before any
interceptor's code runs: a call that sends its headers and never its message
held a thread that admission never saw, and sixteen of them stalled the kill
switch again. So every handler is served as a request-streaming one here: the
caller is authenticated and admitted first, and only an admitted call waits for
its message (:func:`_one_request`), on its share of the threads. The wire does
not change: a unary call is one message on a stream either way.

Some services run on an executor of their own (``executors``: the operator's
``Control``, so that it never queues behind the signing path's calls); gRPC
picks it from the wrapper's ``experimental_thread_pool`` attribute
(:func:`~paywarden.signer.api.calls.run_on`). A caller without the role is refused on
that executor before its message is read. gRPC's own ``maximum_concurrent_rpcs``
counts every call and refuses operators too: see ``server.max_concurrent_rpcs``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from paywarden.signer.api.authz import authorize
from paywarden.signer.api.calls import executor_of, run_on
from paywarden.signer.api.status import to_grpc_status
from paywarden.signer.config import ServerConfig
from paywarden.signer.deadlines import Gate
from paywarden.signer.errors import InvalidInput, Overloaded, PaywardenError, Reason, Unavailable
from paywarden.signer.identity import Authenticator, Principal, Role

# The health service's methods: answered while the store (and the revocations) is down.
HEALTH = "/grpc.health.v1.Health/"

log = logging.getLogger("paywarden.signer.api.admission")


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted call; :meth:`Admission.leave` gives its place back."""

    principal: Principal
    streaming: bool
    shared: bool


class Admission:
    """Counts the calls in flight and refuses those beyond their share (thread-safe)."""

    def __init__(
        self,
        *,
        workers: int,
        reserved: int,
        max_streams: int,
        max_streams_per_principal: int,
        max_calls_per_principal: int,
    ) -> None:
        if not 0 < reserved < workers:
            raise ValueError("reserved workers must be at least one and below the workers")
        self._shared_capacity = workers - reserved
        self._max_streams = max_streams
        self._max_streams_per_principal = max_streams_per_principal
        self._max_calls_per_principal = max_calls_per_principal
        self._lock = threading.Lock()
        self._shared = 0
        self._streams = 0
        self._streams_of: Counter[Principal] = Counter()
        self._calls_of: Counter[Principal] = Counter()

    @classmethod
    def from_config(cls, server: ServerConfig) -> Admission:
        return cls(
            workers=server.max_workers,
            reserved=server.reserved_workers,
            max_streams=server.max_streams,
            max_streams_per_principal=server.max_streams_per_principal,
            max_calls_per_principal=server.max_calls_per_principal,
        )

    def enter(self, principal: Principal, *, streaming: bool) -> Ticket:
        """Admits the call or raises :class:`Overloaded` with the reason."""
        # Only an operator's unary call may use the reserved threads.
        shared = streaming or principal.role is not Role.OPERATOR
        with self._lock:
            if streaming:
                if self._streams_of[principal] >= self._max_streams_per_principal:
                    raise Overloaded(
                        Reason.TOO_MANY_STREAMS, "this caller has as many open streams as allowed"
                    )
                if self._streams >= self._max_streams:
                    raise Overloaded(
                        Reason.TOO_MANY_STREAMS, "the server has as many open streams as allowed"
                    )
            elif self._calls_of[principal] >= self._max_calls_per_principal:
                raise Overloaded(
                    Reason.TOO_MANY_CALLS, "this caller has as many calls in flight as allowed"
                )
            if shared and self._shared >= self._shared_capacity:
                raise Overloaded(Reason.SERVER_BUSY, "the server is busy; retry later")
            if shared:
                self._shared += 1
            if streaming:
                self._streams += 1
                self._streams_of[principal] += 1
            else:
                self._calls_of[principal] += 1
        return Ticket(principal, streaming, shared)

    def leave(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.shared:
                self._shared -= 1
            counts = self._streams_of if ticket.streaming else self._calls_of
            if ticket.streaming:
                self._streams -= 1
            counts[ticket.principal] -= 1
            if counts[ticket.principal] <= 0:
                del counts[ticket.principal]  # no entry kept per principal ever seen


Behaviour = Callable[[Any, grpc.ServicerContext], Any]
if TYPE_CHECKING:  # generic only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.ServerInterceptor


def _one_request(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
    """The one request message of an admitted unary call; raises ``grpc.RpcError`` if
    the caller cancels while it is awaited, and ends the call (INVALID_ARGUMENT) if the
    caller closes its side without one."""
    for request in requests:
        return request  # a second message, if any, is never read (as gRPC does)
    missing = InvalidInput(Reason.MALFORMED_REQUEST, "the call carries no request message")
    context.abort_with_status(to_grpc_status(missing))


class AdmissionInterceptor(_Interceptor):
    """Serves every handler as a request-streaming one, its behaviour wrapped by
    :meth:`admit` and the matching leave, on the executor of its service
    (``executors``: method prefix -> executor; the server's own for the rest)."""

    def __init__(
        self,
        admission: Admission,
        auth: Authenticator,
        executors: Mapping[str, futures.ThreadPoolExecutor] | None = None,
        gate: tuple[str, Gate] | None = None,
    ) -> None:
        self._admission = admission
        self._auth = auth
        self._executors = dict(executors or {})
        # (method prefix, gate): once the gate is closed, a call under the prefix is
        # refused SHUTTING_DOWN before anything else, the authenticator's store reads
        # included: whoever saw health NOT_SERVING is told the signer is stopping.
        self._gate = gate

    def admit(self, method: str, context: grpc.ServicerContext, *, streaming: bool) -> Ticket:
        try:
            if self._gate is not None and method.startswith(self._gate[0]):
                if self._gate[1].stop_at() is not None:
                    raise Unavailable(
                        Reason.SHUTTING_DOWN, "the signer is stopping; retry on another replica"
                    )
            principal = self._auth.principal(
                context.auth_context(), status_only=method.startswith(HEALTH)
            )
            authorize(method, principal)
            return self._admission.enter(principal, streaming=streaming)
        except PaywardenError as exc:
            level = logging.DEBUG if isinstance(exc, Overloaded) else logging.INFO
            log.log(level, "call refused at admission", extra={"rpc": method, "reason": exc.reason})
            context.abort_with_status(to_grpc_status(exc))
            raise  # abort_with_status raises; this line is never reached

    def _unary_unary(self, method: str, behaviour: Behaviour) -> Behaviour:
        def wrapped(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            ticket = self.admit(method, context, streaming=False)
            try:
                return behaviour(_one_request(requests, context), context)
            finally:
                self._admission.leave(ticket)

        return wrapped

    def _unary_stream(self, method: str, behaviour: Behaviour) -> Behaviour:
        def wrapped(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            ticket = self.admit(method, context, streaming=True)
            try:
                yield from behaviour(_one_request(requests, context), context)
            finally:  # runs when the stream ends, fails or is cancelled
                self._admission.leave(ticket)

        return wrapped

    def _stream_unary(self, method: str, behaviour: Behaviour) -> Behaviour:
        def wrapped(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            ticket = self.admit(method, context, streaming=True)
            try:
                return behaviour(requests, context)
            finally:
                self._admission.leave(ticket)

        return wrapped

    def _stream_stream(self, method: str, behaviour: Behaviour) -> Behaviour:
        def wrapped(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            ticket = self.admit(method, context, streaming=True)
            try:
                yield from behaviour(requests, context)
            finally:  # runs when the stream ends, fails or is cancelled
                self._admission.leave(ticket)

        return wrapped

    def _executor(self, method: str, behaviour: Behaviour) -> futures.ThreadPoolExecutor | None:
        for prefix, pool in self._executors.items():
            if method.startswith(prefix):
                return pool
        return executor_of(behaviour)  # one an inner layer gave it, or the server's

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED, from gRPC
        method: str = handler_call_details.method
        h: Any = handler  # a namedtuple: one behaviour is set, by the kind of call
        options = {
            "request_deserializer": h.request_deserializer,
            "response_serializer": h.response_serializer,
        }
        if h.unary_unary is not None:
            inner = h.unary_unary
            wrapped = self._unary_unary(method, inner)
            make = grpc.stream_unary_rpc_method_handler
        elif h.unary_stream is not None:
            inner = h.unary_stream
            wrapped = self._unary_stream(method, inner)
            make = grpc.stream_stream_rpc_method_handler
        elif h.stream_unary is not None:
            inner = h.stream_unary
            wrapped = self._stream_unary(method, inner)
            make = grpc.stream_unary_rpc_method_handler
        else:
            inner = h.stream_stream
            wrapped = self._stream_stream(method, inner)
            make = grpc.stream_stream_rpc_method_handler
        result: Handler = make(run_on(wrapped, self._executor(method, inner)), **options)
        return result

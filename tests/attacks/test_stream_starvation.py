"""Streams and slow callers must not starve the operator's kill switch.

The attack: every call holds one of the server's worker threads while it
runs, and a stream holds its thread for as long as the client keeps it open.
Sixteen idle reflection streams from an agent's certificate (a frozen
agent's too) made ``Control.Freeze`` and ``Control.ListFreezes`` hit their
deadline. Now reflection is off by default and for operators only, streams
are bounded in all and per principal, a principal's unary calls in flight are
bounded, and threads are reserved for operators' unary calls.

Each test runs a real ``paywarden serve`` with 16 workers (the default) and
saturates it; the slow unary callers are real: ``Sign`` and ``OpenSession``
calls waiting for the store's write lock, which the test holds from another
connection (``BEGIN IMMEDIATE`` on the database file).

The slowest callers of all send a call's headers and never its message. gRPC
read a unary request on the worker thread before any of our code ran, so such
calls held threads that admission never saw: sixteen of them from an agent's
certificate stalled the kill switch again. Now every call is admitted before its
message is awaited, and ``Control`` runs on threads of its own.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from paywarden.signer.api.admission import Admission, AdmissionInterceptor
from paywarden.signer.api.calls import CallInterceptor, executor_of, run_on
from paywarden.signer.config import ServerConfig
from paywarden.signer.config_file import ConfigError, load_config
from paywarden.signer.deadlines import Gate
from paywarden.signer.errors import Reason
from paywarden.signer.identity import Authenticator
from paywarden.v1 import (
    control_pb2,
    control_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
)

from tests.helpers import Pki, ServeProcess, TestToken, reason_of, serve, write_config
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

# The operator's calls must answer within this. It is far below how long the attack
# holds its threads (streams 120 s, the slow callers' store wait HOLD), so a starved
# operator still fails, and far above a loaded 2-core machine's worst answer time.
OPERATOR_DEADLINE = 10.0
HOLD = 120  # seconds a slow caller waits for the store's lock (and its call's deadline)
SATURATION_WAIT = 120.0  # longest wait for the attack to be in place (returns once it is)
STREAMS_PER_KIND = 16
SLOW_CALLS = 12  # per slow principal
WORKERS = {"PAYWARDEN_SERVER__MAX_WORKERS": "16"}
LONG_LOCK_WAIT = {"PAYWARDEN_STORE__LOCK_TIMEOUT_SECONDS": str(HOLD)}
REFLECTION_ON = {"PAYWARDEN_SERVER__REFLECTION": "true"}

OPEN = "open"


class Streams:
    """Streams opened by the attacker; each is settled once it answers or fails."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._settled: dict[int, object] = {}  # index -> OPEN or the RpcError
        self._calls: list[grpc.RpcContext] = []
        self._stop = threading.Event()

    def _settle(self, index: int, outcome: object) -> None:
        with self._cond:
            self._settled.setdefault(index, outcome)
            self._cond.notify_all()

    def _read(self, index: int, call: Iterator[object]) -> None:
        try:
            for _ in call:
                self._settle(index, OPEN)
        except grpc.RpcError as err:
            self._settle(index, err)

    def _start(self, call: Iterator[object]) -> None:
        assert isinstance(call, grpc.RpcContext)
        index = len(self._calls)
        self._calls.append(call)
        threading.Thread(target=self._read, args=(index, call), daemon=True).start()

    def watch(self, channel: grpc.Channel) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        self._start(stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120))

    def reflect(self, channel: grpc.Channel) -> None:
        def requests() -> Iterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")
            self._stop.wait()  # then stay open, idle

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self._start(stub.ServerReflectionInfo(requests(), timeout=120))

    def wait_settled(self, deadline: float) -> list[object]:
        with self._cond:
            while len(self._settled) < len(self._calls) and time.monotonic() < deadline:
                self._cond.wait(0.5)
            return list(self._settled.values())

    def close(self) -> None:
        self._stop.set()
        for call in self._calls:
            call.cancel()


@contextmanager
def _streams() -> Iterator[Streams]:
    s = Streams()
    try:
        yield s
    finally:
        s.close()


@contextmanager
def _channels(srv: ServeProcess, pki: Pki) -> Iterator[Callable[[str, str], grpc.Channel]]:
    opened: dict[tuple[str, str], grpc.Channel] = {}

    def channel(role: str, principal: str) -> grpc.Channel:
        if (role, principal) not in opened:
            opened[(role, principal)] = pki.channel(srv.addr, role, principal)
        return opened[(role, principal)]

    try:
        yield channel
    finally:
        for ch in opened.values():
            ch.close()


def _status(outcome: object) -> tuple[grpc.StatusCode, str | None] | str:
    if isinstance(outcome, grpc.RpcError):
        return (outcome.code(), reason_of(outcome))
    return str(outcome)


def _freeze(channel: grpc.Channel, agent: str) -> control_pb2.FreezeResponse:
    return control_pb2_grpc.ControlStub(channel).Freeze(
        control_pb2.FreezeRequest(scope=control_pb2.AGENT, target=agent, reason="attack test"),
        timeout=OPERATOR_DEADLINE,
    )


def _list_freezes(channel: grpc.Channel) -> control_pb2.ListFreezesResponse:
    return control_pb2_grpc.ControlStub(channel).ListFreezes(
        control_pb2.ListFreezesRequest(), timeout=OPERATOR_DEADLINE
    )


def _saturate_with_streams(streams: Streams, channel: Callable[[str, str], grpc.Channel]) -> None:
    """16 reflection streams from the frozen agent-2, 16 health watches from agent-1 and -2."""
    for i in range(STREAMS_PER_KIND):
        streams.reflect(channel("agent", "agent-2"))
        streams.watch(channel("agent", ("agent-1", "agent-2")[i % 2]))


def _saturated(channel: Callable[[str, str], grpc.Channel], deadline: float) -> bool:
    """True once a caller with nothing in flight is refused or left waiting (a probe)."""
    probe = signer_pb2_grpc.SignerStub(channel("approver", "approver-2"))
    while time.monotonic() < deadline:
        try:
            probe.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=1.0)
        except grpc.RpcError as err:
            if err.code() in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ):
                return True
            raise
        threading.Event().wait(0.05)  # the attack's calls are still arriving
    return False


def test_reflection_is_off_by_default(tmp_path: Path, token: TestToken, pki: Pki) -> None:
    config = write_config(tmp_path, token, pki)
    with serve(config) as srv, pki.channel(srv.addr, "operator", "operator-1") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            list(
                stub.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_sixteen_reflection_and_watch_streams_do_not_stall_freeze(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki)
    with (
        serve(config, env={**WORKERS, **REFLECTION_ON}) as srv,
        _channels(srv, pki) as channel,
        _streams() as streams,
    ):
        operator = channel("operator", "operator-1")
        assert _freeze(operator, "agent-2").created  # a frozen agent attacks too
        _saturate_with_streams(streams, channel)
        outcomes = streams.wait_settled(time.monotonic() + SATURATION_WAIT)

        assert _freeze(operator, "agent-1").created
        listed = _list_freezes(operator)
        assert {(f.scope, f.target) for f in listed.freezes} == {
            (control_pb2.AGENT, "agent-1"),
            (control_pb2.AGENT, "agent-2"),
        }
        # What the attacker got: reflection refused to agents, watches bounded.
        statuses = [_status(o) for o in outcomes]
        assert len(statuses) == 2 * STREAMS_PER_KIND
        assert statuses.count((grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED)) == 16
        assert statuses.count(OPEN) == 4  # server.max_streams_per_principal 2, two agents
        assert statuses.count((grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.TOO_MANY_STREAMS)) == 12


def test_streams_and_slow_callers_on_a_locked_store_do_not_stall_the_operator(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki)
    with (
        serve(config, env={**WORKERS, **REFLECTION_ON, **LONG_LOCK_WAIT}) as srv,
        _channels(srv, pki) as channel,
        _streams() as streams,
    ):
        operator = channel("operator", "operator-1")
        assert _list_freezes(operator).freezes == []  # connected, before the attack
        session_id = open_session(
            sessions_pb2_grpc.SessionsStub(channel("planner", "planner-1")),
            "agent-1",
            "100.00",
            task="buy weather data",
            ttl=600,
            timeout=30,
        )
        _saturate_with_streams(streams, channel)
        streams.wait_settled(time.monotonic() + SATURATION_WAIT)

        lock = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # every write of the signer now waits
        slow: list[grpc.Future[Any]] = []
        try:
            signer = signer_pb2_grpc.SignerStub(channel("agent", "agent-1"))
            for _ in range(SLOW_CALLS):
                intent = payment_intent(
                    session_id,
                    payee="weather-data-inc",
                    amount="0.01",
                    reference="slow",
                    purpose="hold a worker thread",
                    expires_at=int(time.time()) + 120,
                )
                slow.append(signer.Sign.future(signer_pb2.SignRequest(intent=intent), timeout=HOLD))
            for planner in ("planner-1", "planner-2"):
                sessions = sessions_pb2_grpc.SessionsStub(channel("planner", planner))
                for _ in range(SLOW_CALLS):
                    request = sessions_pb2.OpenSessionRequest(
                        agent_id="agent-2",
                        task_description="hold a worker thread",
                        budgets=[sessions_pb2.AssetBudget(asset="USD", amount="1.00")],
                        ttl_seconds=600,
                    )
                    slow.append(sessions.OpenSession.future(request, timeout=HOLD))
            assert _saturated(channel, time.monotonic() + SATURATION_WAIT)
            # Every shared thread is held; the operator still gets one. (Control
            # calls read the store, which this test has locked: a call that needs
            # no store shows the thread, Freeze follows once the store is free.)
            keys = signer_pb2_grpc.SignerStub(operator).GetPublicKeys(
                signer_pb2.GetPublicKeysRequest(), timeout=OPERATOR_DEADLINE
            )
            assert len(keys.keys) == 2
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        refused = []
        for future in slow:
            try:
                future.result()
            except grpc.RpcError as err:
                refused.append(_status(err))
        # Calls beyond a principal's share were refused at once, with a reason:
        # agent-1 sent 12 Sign calls and may have 8 in flight.
        assert refused.count((grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.TOO_MANY_CALLS)) >= 4
        assert set(refused) <= {
            (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.TOO_MANY_CALLS),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SERVER_BUSY),
            # the store's own bounded wait for its lock, on a slow machine
            (grpc.StatusCode.UNAVAILABLE, Reason.STORE_UNAVAILABLE),
        }
        # The streams still hold their share: the kill switch answers in time.
        assert _freeze(operator, "agent-1").created
        assert len(_list_freezes(operator).freezes) == 1


def _environ(settings: dict[str, int]) -> dict[str, str]:
    return {f"PAYWARDEN_SERVER__{k.upper()}": str(v) for k, v in settings.items()}


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        ({"max_workers": 16, "reserved_workers": 16}, "server.reserved_workers"),
        ({"max_workers": 16, "max_concurrent_rpcs": 16}, "server.max_concurrent_rpcs"),
        (  # calls queued for a thread, up to what the connections may hold, count too
            {"max_connections": 100, "max_concurrent_streams": 16, "max_concurrent_rpcs": 1600},
            "server.max_concurrent_rpcs",
        ),
    ],
    ids=["no-worker-left-to-share", "grpc-would-refuse-operators", "queued-calls-would-too"],
)
def test_settings_that_would_cancel_the_operators_reserve_are_refused(
    settings: dict[str, int], names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config(
            None, environ={f"PAYWARDEN_SERVER__{k.upper()}": str(v) for k, v in settings.items()}
        )


def _open_watch_until_admitted(channel: grpc.Channel, deadline: float) -> bool:
    """Opens a Watch, reads its first answer and cancels it; retries while refused for streams."""
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        try:
            next(call)
            return True
        except grpc.RpcError as err:
            if reason_of(err) != Reason.TOO_MANY_STREAMS:
                raise
            threading.Event().wait(0.05)  # a cancelled stream gives its place back shortly
        finally:
            call.cancel()
    return False


def test_cancelled_and_finished_streams_give_their_place_back(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki)
    with (
        serve(config, env=REFLECTION_ON) as srv,
        pki.channel(srv.addr, "operator", "operator-1") as ch,
    ):
        deadline = time.monotonic() + SATURATION_WAIT
        # Three times the per-principal bound (2), one after the other.
        for _ in range(6):
            assert _open_watch_until_admitted(ch, deadline)
            answers = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            assert len(list(answers)) == 1  # the client half-closes: the stream ends


# -- calls that never send their request message ------------------------------------------

# (method, how the server serves it) for one attacker connection: 12 calls, 40+ in all.
STALLED_CALLS = (
    *[("/paywarden.v1.Signer/GetPublicKeys", "unary")] * 4,
    *[("/paywarden.v1.Signer/Sign", "unary")] * 3,
    ("/grpc.health.v1.Health/Check", "unary"),
    *[("/paywarden.v1.Control/Freeze", "unary")] * 2,  # not an agent's: refused, not held
    ("/paywarden.v1.Control/ListFreezes", "unary"),
    ("/grpc.health.v1.Health/Watch", "stream"),
)
ATTACKER_CONNECTIONS = (("agent-1", 0), ("agent-1", 1), ("agent-2", 0), ("agent-2", 1))
SHARED_WORKERS = 14  # 16 workers, 2 reserved for operators (the defaults)


def _raw(data: bytes) -> bytes:
    return data


class Stalled:
    """Calls whose request iterator blocks: the client sends the headers, never a message."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self._cond = threading.Condition()
        self.calls: list[tuple[str, grpc.Future[Any]]] = []

    def _requests(self) -> Iterator[bytes]:
        self._release.wait()  # then end without a message: the client half-closes
        yield from ()

    def _ended(self, _call: grpc.Future[Any]) -> None:
        with self._cond:
            self._cond.notify_all()

    def open(self, channel: grpc.Channel, method: str, kind: str) -> None:
        call: grpc.Future[Any]
        if kind == "unary":
            stub = channel.stream_unary(method, request_serializer=_raw, response_deserializer=_raw)
            call = stub.future(self._requests(), timeout=120)
        else:
            streams = channel.stream_stream(
                method, request_serializer=_raw, response_deserializer=_raw
            )
            call = streams(self._requests(), timeout=120)  # type: ignore[assignment]
        call.add_done_callback(self._ended)
        self.calls.append((method, call))

    def wait_ended(self, count: int, deadline: float) -> list[tuple[str, grpc.Future[Any]]]:
        """Waits until ``count`` calls have ended (or the deadline); returns those that have."""
        with self._cond:
            while sum(c.done() for _, c in self.calls) < count and time.monotonic() < deadline:
                self._cond.wait(0.5)
            return [(m, c) for m, c in self.calls if c.done()]

    def release(self) -> None:
        self._release.set()

    def cancel(self) -> None:
        self._release.set()
        for _, call in self.calls:
            call.cancel()


def _ended_status(call: grpc.Future[Any]) -> tuple[grpc.StatusCode, str | None]:
    err: grpc.RpcError = call  # type: ignore[assignment]  # an ended call is its own error
    return call.code(), reason_of(err)  # type: ignore[attr-defined]


def _attacker_channel(srv: ServeProcess, pki: Pki, agent: str, index: int) -> grpc.Channel:
    """A connection of its own (a distinct channel argument keeps gRPC from sharing one)."""
    key, cert = pki.cert("agent", agent)
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(
        srv.addr,
        creds,
        options=[
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.primary_user_agent", f"stalling-{agent}-{index}"),
        ],
    )


def test_calls_that_never_send_their_body_do_not_stall_freeze(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki)
    stalled = Stalled()
    with (
        serve(config, env=WORKERS) as srv,
        _channels(srv, pki) as channel,
        ExitStack() as attackers,
    ):
        operator = channel("operator", "operator-1")
        assert _list_freezes(operator).freezes == []  # connected, before the attack
        attackers.callback(stalled.cancel)
        for agent, index in ATTACKER_CONNECTIONS:
            conn = attackers.enter_context(_attacker_channel(srv, pki, agent, index))
            for method, kind in STALLED_CALLS:
                stalled.open(conn, method, kind)
        assert len(stalled.calls) >= 40
        assert _saturated(channel, time.monotonic() + SATURATION_WAIT)

        # The kill switch answers while every shared thread is held.
        assert _freeze(operator, "agent-1").created
        listed = _list_freezes(operator)
        assert [(f.scope, f.target) for f in listed.freezes] == [(control_pb2.AGENT, "agent-1")]

        # What the attacker got: its Control calls were refused before their message,
        # its other calls held no more than the shared threads and were refused beyond.
        total = len(stalled.calls)
        ended = stalled.wait_ended(total - SHARED_WORKERS, time.monotonic() + SATURATION_WAIT)
        assert len(ended) >= total - SHARED_WORKERS
        control = [c for m, c in stalled.calls if m.startswith("/paywarden.v1.Control/")]
        assert all(c.done() for c in control)
        assert {_ended_status(c) for c in control} == {
            (grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED)
        }
        assert {
            _ended_status(c) for m, c in ended if not m.startswith("/paywarden.v1.Control/")
        } <= {
            (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.TOO_MANY_CALLS),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.TOO_MANY_STREAMS),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.SERVER_BUSY),
        }

        # Calls that end without their message are refused, and give their place back.
        stalled.release()
        rest = stalled.wait_ended(total, time.monotonic() + SATURATION_WAIT)
        assert len(rest) == total
        assert (grpc.StatusCode.INVALID_ARGUMENT, Reason.MALFORMED_REQUEST) in {
            _ended_status(c) for _, c in rest
        }
        keys = signer_pb2_grpc.SignerStub(channel("agent", "agent-2")).GetPublicKeys(
            signer_pb2.GetPublicKeysRequest(), timeout=OPERATOR_DEADLINE
        )
        assert len(keys.keys) == 2


def _handler(behaviour: Callable[[object, grpc.ServicerContext], object]) -> object:
    return grpc.unary_unary_rpc_method_handler(behaviour)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_the_control_executor_survives_every_interceptor(pki: Pki) -> None:
    """gRPC picks a call's executor from the outermost behaviour: each layer keeps it."""
    control_pool = futures.ThreadPoolExecutor(max_workers=1)
    other_pool = futures.ThreadPoolExecutor(max_workers=1)
    try:
        admission = AdmissionInterceptor(
            Admission.from_config(ServerConfig()),
            Authenticator.from_pem(pki.trust_domain, pki.ca),
            {"/paywarden.v1.Control/": control_pool},
        )
        inner = CallInterceptor("/paywarden.v1.", 0.25, Gate())

        def behaviour(request: object, context: grpc.ServicerContext) -> object:
            return request

        def chain(method: str, handler: object) -> object:
            details = _Details(method)
            return admission.intercept_service(
                lambda d: inner.intercept_service(lambda _d: handler, d),  # type: ignore[arg-type,return-value]
                details,
            )

        freeze: object = chain("/paywarden.v1.Control/Freeze", _handler(behaviour))
        keys: object = chain("/paywarden.v1.Signer/GetPublicKeys", _handler(behaviour))
        given: object = chain(
            "/paywarden.v1.Signer/Sign", _handler(run_on(lambda r, c: r, other_pool))
        )
        for handler in (freeze, keys, given):  # read before the request: admitted first
            assert handler.request_streaming and handler.unary_unary is None  # type: ignore[attr-defined]
        assert executor_of(freeze.stream_unary) is control_pool  # type: ignore[attr-defined]
        assert executor_of(keys.stream_unary) is None  # type: ignore[attr-defined]
        assert executor_of(given.stream_unary) is other_pool  # type: ignore[attr-defined]
    finally:
        control_pool.shutdown()
        other_pool.shutdown()

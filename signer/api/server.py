"""Builds and runs the gRPC server: mutual TLS, admission, health, reflection (if on)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from paywarden.hsm import Hsm, HsmError, HsmUnavailable, PublicKeyInfo
from paywarden.policy import PackError, PackSet
from paywarden.policy.context import PolicyContext, policy_context, policy_set_sha256
from paywarden.policy.vocabulary import KeyState
from paywarden.signer.api.admission import Admission, AdmissionInterceptor
from paywarden.signer.api.authz import Edge
from paywarden.signer.api.calls import CallInterceptor
from paywarden.signer.api.registry import SERVICES, add_servicer
from paywarden.signer.api.servicers import ApprovalsServicer, ControlServicer, SessionsServicer
from paywarden.signer.api.signer_servicer import SignerServicer
from paywarden.signer.api.startup import (
    StartupError,
    authenticator,
    check_descriptor_limit,
    load_packs,
    open_hsm,
    revocation_list,
    server_credentials,
)
from paywarden.signer.api.tls import with_crl
from paywarden.signer.config import Config
from paywarden.signer.core import audit_events
from paywarden.signer.core.checkpoints import Checkpointer, Checkpoints
from paywarden.signer.core.key_records import keys_load
from paywarden.signer.core.policy_start import (
    StartingPacks,
    StartRefused,
    starting_packs,
)
from paywarden.signer.core.service import SigningService
from paywarden.signer.deadlines import Gate
from paywarden.signer.errors import PaywardenError
from paywarden.signer.metrics import Metrics
from paywarden.signer.store.opening import open_store, setting
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sqlite import SqlStore
from paywarden.signer.timekeeping import HighWater
from prometheus_client import Gauge

log = logging.getLogger("paywarden.signer.api.server")

SERVICE_NAMES = tuple(s.full_name for s in SERVICES)
# After the grace period, how long a call past its deadline may take to answer, and
# how long the answers of ended calls get to reach their callers before the server stops.
_ANSWER_SECONDS = 1.0


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def server_options(config: Config) -> list[tuple[str, int]]:
    """Channel arguments that bound what sockets can hold: unauthenticated ones, the
    calls of each connection, and how long a connection lives between handshakes."""
    s = config.server
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", _ms(s.handshake_timeout_seconds)),
        ("grpc.max_allowed_incoming_connections", s.max_connections),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
        ("grpc.max_connection_age_ms", _ms(s.max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", _ms(s.max_connection_age_grace_seconds)),
    ]


@dataclass
class Running:
    server: grpc.Server
    port: int
    service: SigningService
    hsm: Hsm
    store: SqlStore
    health: health.HealthServicer
    _stop: threading.Event
    checkpoints: Checkpoints
    checkpointer: Checkpointer
    metrics: Metrics
    metrics_port: int | None
    gate: Gate
    control_pool: futures.ThreadPoolExecutor

    def stop(self, grace: float | None) -> None:
        """Stops taking work, drains, seals, closes, in that order.

        New calls are refused at once (UNAVAILABLE, SHUTTING_DOWN) and health turns
        NOT_SERVING for good; calls in flight finish or fail closed by the end of the
        grace period (their deadline is the earlier of theirs and that end, and the
        store's lock waits end there too); then refusal summaries are written and the
        final checkpoint seals the audit log, and only then are the store and the
        HSM session closed."""
        self._stop.set()  # the health watcher
        ends = time.monotonic() + (grace or 0.0)
        # The gate first: whoever sees NOT_SERVING is refused SHUTTING_DOWN from then on.
        self.gate.close(ends)
        self.health.enter_graceful_shutdown()
        self.store.wait_until(ends)
        left = self.gate.wait_idle(ends + _ANSWER_SECONDS)
        if left:
            log.error("%d calls still running after the grace period", left)
        # Answers of calls that just ended may still be on their way: a short grace to
        # send them; streams (health watch, reflection) are cancelled after it.
        self.server.stop(_ANSWER_SECONDS).wait()
        self.checkpointer.stop()
        self.store.wait_until(None)  # the seal gets the store's own lock timeout
        self.service.refusals.flush_all()  # counted refusals are recorded before the seal
        try:  # seal what was appended since the last checkpoint
            self.checkpoints.checkpoint()
        except PaywardenError as exc:
            log.error("final checkpoint failed: %s", exc)
        self.store.close()
        self.control_pool.shutdown(wait=False)
        self.hsm.close()  # logs the token session out: nothing signs after the seal


def _watch_health(running: Running, interval: float) -> None:
    while not running._stop.wait(interval):
        ok = True
        try:
            running.hsm.check()
        except HsmError:
            ok = False
        try:
            running.store.check()
        except StoreError:
            ok = False
        running.metrics.hsm_up.set(1 if running.hsm.available else 0)
        if ok:  # never wait on a store the probe just found unusable
            try:
                pending = running.store.pending_approvals(int(time.time()))
                running.metrics.pending.set(len(pending))
            except StoreError:
                ok = False
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            running.health.set(name, status)


def _starting_packs(store: SqlStore, packs: PackSet, config: Config) -> StartingPacks:
    """The directory's packs, or the set in force before when they widen what a second
    operator must confirm (:mod:`paywarden.signer.core.policy_start`)."""
    try:
        return starting_packs(
            store,
            packs,
            config.asset_table(),
            config.policy.dir,
            config.groups,
            config.policy.timezone,
        )
    except PackError as exc:
        raise StartupError(f"policy.dir: {exc}") from None
    except StartRefused as exc:
        raise StartupError(f"policy.dir: {exc}") from None
    except StoreError as exc:
        raise StartupError(f"{setting(config.store)}: {exc}") from None


def _context(packs: PackSet, config: Config) -> PolicyContext:
    """The context the signer reads ``packs`` with (as :class:`PolicySet` does)."""
    return policy_context(packs, config.asset_table(), config.policy.timezone)


def _policy_load(starting: StartingPacks, config: Config, sha256: str) -> dict[str, Any]:
    """The ``policy.load`` record's fields: the packs run (their set hash ``sha256``), and
    what changed since the set recorded in force (a restart is a reload)."""
    packs = starting.packs
    fields: dict[str, Any] = {
        "packs": [p.ref() for p in packs.packs],
        "dir": str(config.policy.dir),
        "sha256": sha256,
        "old_sha256": starting.recorded_sha256,
    }
    # The directory's set: the one run, or (held) the one waiting for a second operator.
    read = starting.read if starting.read is not None else packs
    fields["new_sha256"] = (
        sha256 if read is packs else policy_set_sha256(read, _context(read, config))
    )
    fields["new_packs"] = [p.ref() for p in read.packs]
    if starting.diff is not None:
        fields["widens"] = starting.diff.widens
        fields["widening"] = [c.as_json() for c in starting.diff.widening()]
        fields["held"] = starting.held
    if starting.unjudged is not None:
        # The set before no longer builds: the directory's was taken without a diff.
        fields["old_set_judged"] = False
        fields["old_set_error"] = starting.unjudged
    return fields


def _audit_start(
    store: SqlStore, hsm: Hsm, starting: StartingPacks, config: Config, clock: Callable[[], int]
) -> None:
    """Records which policy packs (recorded in force too) and keys this start-up runs
    with, and the keys again whenever the token reopens (it may come up, or come back,
    later)."""
    now = clock()
    packs = starting.packs
    context = _context(packs, config)
    sha256 = policy_set_sha256(packs, context)
    try:
        store.put_policy_in_force(
            sha256,
            sorted((Path(p.path).name, p.text.decode("utf-8")) for p in packs.packs),
            now,
            audit_events.event("policy.load", None, now, **_policy_load(starting, config, sha256)),
            context=context.as_json(),
        )
        store.audit_event(
            keys_load(
                now,
                hsm.public_keys(),
                hsm.evm_public_keys(),
                config.audit.key,
                available=hsm.available,
            )
        )
    except StoreError as exc:
        raise StartupError(f"{setting(config.store)}: cannot write the audit log: {exc}") from None

    def reopened(keys: list[PublicKeyInfo]) -> None:
        # Runs before the first signature of the new session: no payment is
        # signed with a key whose fingerprint the log does not hold.
        event = keys_load(
            clock(),
            keys,
            hsm.evm_public_keys(),  # PKCS11_LOCK is re-entrant: the callback holds it
            config.audit.key,
            available=True,
            reopened=True,
        )
        try:
            store.audit_event(event)
        except StoreError as exc:
            raise HsmUnavailable(
                f"cannot record the token's keys in the audit log: {exc}"
            ) from None

    hsm.on_open(reopened)


def start(config: Config, *, health_interval: float = 2.0) -> Running:
    where = setting(config.store)
    try:
        store = open_store(config.store)
        store.migrate()
        changed = store.adopt_decimals({c: a.decimals for c, a in config.assets.items()})
    except StoreError as exc:
        raise StartupError(f"{where}: {exc}") from None
    if changed:
        store.close()
        names = ", ".join(f"assets.{a}.decimals" for a in changed)
        raise StartupError(f"{names}: differs from the decimals the store's amounts were kept in")
    try:
        versions = store.key_versions()
    except StoreError as exc:
        raise StartupError(f"{where}: {exc}") from None
    starting = _starting_packs(store, load_packs(config, versions), config)
    check_descriptor_limit(config)
    # A configured version that stopped signing may be gone from the token.
    retired = {k.key_id for k in versions if k.state is not KeyState.ACTIVE}
    hsm = open_hsm(
        config,
        [ref for ref in config.key_refs() if ref.key_id not in retired],
        [ref for ref in config.evm_key_refs() if ref.key_id not in retired],
    )
    metrics = Metrics(config.metrics.max_tracked_sessions)
    try:  # one decision time for every service: never below what is recorded
        clock = HighWater(time.time, store.latest_audit_time())
    except StoreError as exc:
        raise StartupError(f"{where}: {exc}") from None
    _audit_start(store, hsm, starting, config, clock.now)
    # After the start-up records: the service registers the configured keys it finds.
    service = SigningService(config, store, hsm, starting.packs, clock=clock.now, metrics=metrics)
    auth = authenticator(config)
    auth.check_revocations(with_crl(service.revocations.check, revocation_list(config)))
    in_flight = Gauge(
        "paywarden_calls_in_flight",
        "Calls to the signer's services being served now",
        registry=metrics.registry,
    )
    gate = Gate(in_flight.set)
    margin = config.server.deadline_margin_seconds
    # The operators' Control service runs on threads of its own (admission refuses
    # every other role there before reading a request): the kill switch answers
    # however many calls hold or wait for the other threads.
    control_pool = futures.ThreadPoolExecutor(
        max_workers=config.server.control_workers, thread_name_prefix="control"
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.server.max_workers, thread_name_prefix="rpc"),
        interceptors=[  # admission first: it sees every call before its request is read
            AdmissionInterceptor(
                Admission.from_config(config.server),
                auth,
                {"/paywarden.v1.Control/": control_pool},
                ("/paywarden.v1.", gate),
            ),
            CallInterceptor("/paywarden.v1.", margin, gate),
        ],
        options=server_options(config),
        maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
    )
    edge = Edge(auth, store, clock.now)  # rpc.error records keep the services' time
    signer = SignerServicer(service.signing, service.keys, edge, service.receipts, service.payments)
    add_servicer(server, signer, "paywarden.v1.Signer")
    add_servicer(server, SessionsServicer(service.sessions, edge), "paywarden.v1.Sessions")
    add_servicer(server, ApprovalsServicer(service.approvals, edge), "paywarden.v1.Approvals")
    add_servicer(
        server,
        ControlServicer(
            service.freezes,
            service.checkpoints,
            edge,
            service.revocations,
            service.explain,
            service.reloads,
            service.mandates,
        ),
        "paywarden.v1.Control",
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.server.reflection:  # operators only: see authz.EXTERNAL_RPC_ROLES
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    try:
        port = server.add_secure_port(config.server.listen, server_credentials(config, auth))
    except RuntimeError as exc:
        raise StartupError(f"server.listen: cannot bind {config.server.listen}: {exc}") from None
    metrics_port = None
    if config.metrics.listen:
        try:
            metrics_port = metrics.serve(config.metrics.listen)
        except OSError as exc:
            raise StartupError(
                f"metrics.listen: cannot bind {config.metrics.listen}: {exc}"
            ) from None
    server.start()
    checkpointer = Checkpointer(
        service.checkpoints, service.deps, before=service.refusals.flush_due
    )
    checkpointer.start()
    metrics.hsm_up.set(1 if hsm.available else 0)
    service.freezes.freezes()  # the frozen-scopes gauge starts from what is persisted
    running = Running(
        server,
        port,
        service,
        hsm,
        store,
        health_servicer,
        threading.Event(),
        service.checkpoints,
        checkpointer,
        metrics,
        metrics_port,
        gate,
        control_pool,
    )
    initial = (
        health_pb2.HealthCheckResponse.SERVING
        if hsm.available
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, initial)
    threading.Thread(
        target=_watch_health, args=(running, health_interval), name="health", daemon=True
    ).start()
    return running

"""Builds and runs the gRPC server: mutual TLS, admission, health, reflection (if on)."""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from paywarden.hsm import Hsm, HsmError, HsmPinRejected, HsmUnavailable, PublicKeyInfo, read_pin
from paywarden.policy import AssetInfo, PackError, PackSet, compile_all, load_pack_dir
from paywarden.signer.api.admission import Admission, AdmissionInterceptor
from paywarden.signer.api.authz import Edge
from paywarden.signer.api.calls import CallInterceptor, Gate
from paywarden.signer.api.registry import SERVICES, add_servicer
from paywarden.signer.api.servicers import (
    ApprovalsServicer,
    ControlServicer,
    SessionsServicer,
    SignerServicer,
)
from paywarden.signer.config import Config
from paywarden.signer.core import audit_events
from paywarden.signer.core.checkpoints import Checkpointer, Checkpoints
from paywarden.signer.core.service import SigningService
from paywarden.signer.errors import PaywardenError
from paywarden.signer.identity import Authenticator
from paywarden.signer.metrics import Metrics
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sqlite import SqliteStore
from paywarden.signer.timekeeping import HighWater
from prometheus_client import Gauge

log = logging.getLogger("paywarden.signer.api.server")

SERVICE_NAMES = tuple(s.full_name for s in SERVICES)
# After the grace period, how long a call past its deadline may take to answer, and
# how long the answers of ended calls get to reach their callers before the server stops.
_ANSWER_SECONDS = 1.0


class StartupError(Exception):
    """The signer cannot start; the message says which setting or file."""


def _read(path: os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise StartupError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(config: Config) -> grpc.ServerCredentials:
    """mTLS credentials; each file is parsed first so that an error names its setting."""
    s = config.server
    key_pem = _read(s.tls_key, "server.tls_key")
    cert_pem = _read(s.tls_cert, "server.tls_cert")
    ca_pem = _read(s.client_ca, "server.client_ca")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise StartupError(f"server.tls_cert: {s.tls_cert} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise StartupError(f"server.tls_key: {s.tls_key} is not an unencrypted PEM key") from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise StartupError(f"server.client_ca: {s.client_ca} holds no PEM certificate") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise StartupError("server.tls_key: the key does not match server.tls_cert")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )


# Descriptors the process needs besides client connections: the store, the
# HSM library, the metrics listener, gRPC's own pipes and epoll.
DESCRIPTOR_RESERVE = 128


def server_options(config: Config) -> list[tuple[str, int]]:
    """Channel arguments that bound what sockets can hold: unauthenticated ones, and the
    calls of each connection."""
    s = config.server
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", max(1, round(s.handshake_timeout_seconds * 1000))),
        ("grpc.max_allowed_incoming_connections", s.max_connections),
        ("grpc.max_concurrent_streams", s.max_concurrent_streams),
    ]


def check_descriptor_limit(config: Config) -> None:
    """Raises the soft ``RLIMIT_NOFILE`` to fit ``server.max_connections`` if it may."""
    need = config.server.max_connections + DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "the descriptor limit (%d) is below server.max_connections + %d (%d): raise"
            " `ulimit -n` or lower server.max_connections, or idle connections can"
            " exhaust descriptors",
            soft,
            DESCRIPTOR_RESERVE,
            need,
        )


def authenticator(config: Config) -> Authenticator:
    """Holds client certificates to the client profile of ``server.client_ca``."""
    s = config.server
    try:
        return Authenticator.from_pem(s.trust_domain, _read(s.client_ca, "server.client_ca"))
    except ValueError:
        raise StartupError(f"server.client_ca: {s.client_ca} holds no PEM certificate") from None


def load_packs(config: Config) -> PackSet:
    """Loads and compiles the policy packs; any error stops start-up (fail closed)."""
    try:
        packs = load_pack_dir(config.policy.dir, config.groups)
        assets = {
            c: AssetInfo(a.decimals, a.case_insensitive_payees) for c, a in config.assets.items()
        }
        compile_all(packs.packs, assets)
    except PackError as exc:
        raise StartupError(f"policy.dir: {exc}") from None
    if not packs.packs:
        log.warning("no policy packs in %s: every payment will be denied", config.policy.dir)
    return packs


def open_hsm(config: Config) -> Hsm:
    """Builds the HSM client and tries to open it; an unusable HSM is not fatal."""
    if config.hsm.softhsm_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(config.hsm.softhsm_conf)
    try:
        pin = read_pin(config.hsm.pin_file, config.hsm.pin_env, config.hsm.pin_fd)
    except HsmError as exc:
        raise StartupError(str(exc)) from None
    if config.hsm.pin_env is not None:
        log.warning(
            "hsm.pin_env: the HSM PIN stays readable in /proc/%d/environ for as long as "
            "this process runs; prefer hsm.pin_file or hsm.pin_fd",
            os.getpid(),
        )
    hsm = Hsm(
        config.hsm.module,
        config.hsm.token_label,
        pin,
        config.key_refs(),
        audit_key=config.audit.ref(),
        retry_interval=config.hsm.retry_interval_seconds,
    )
    try:
        hsm.open()
    except HsmPinRejected as exc:
        source = (
            "hsm.pin_file"
            if config.hsm.pin_file is not None
            else "hsm.pin_fd"
            if config.hsm.pin_fd is not None
            else "hsm.pin_env"
        )
        raise StartupError(f"{source}: {exc}") from None
    except HsmError as exc:
        # Keep serving: Sign answers UNAVAILABLE until the token comes back.
        log.error("HSM not usable at start-up: %s", exc)
    return hsm


@dataclass
class Running:
    server: grpc.Server
    port: int
    service: SigningService
    hsm: Hsm
    store: SqliteStore
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
        self.health.enter_graceful_shutdown()
        ends = time.monotonic() + (grace or 0.0)
        self.gate.close(ends)
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


def _key_fingerprints(keys: list[PublicKeyInfo]) -> list[dict[str, str]]:
    return [
        {"key_id": k.key_id, "spki_sha256": hashlib.sha256(k.spki_der).hexdigest()} for k in keys
    ]


def _audit_start(
    store: SqliteStore, hsm: Hsm, packs: PackSet, config: Config, clock: Callable[[], int]
) -> None:
    """Records which policy packs and keys this start-up runs with, and the keys
    again whenever the token reopens (it may come up, or come back, later)."""
    now = clock()
    try:
        store.audit_event(
            audit_events.event(
                "policy.load",
                None,
                now,
                packs=[p.ref() for p in packs.packs],
                dir=str(config.policy.dir),
            )
        )
        store.audit_event(
            audit_events.event(
                "keys.load",
                None,
                now,
                keys=_key_fingerprints(hsm.public_keys()),
                audit_key=config.audit.key,
                hsm_available=hsm.available,
            )
        )
    except StoreError as exc:
        raise StartupError(f"store.path: cannot write the audit log: {exc}") from None

    def reopened(keys: list[PublicKeyInfo]) -> None:
        # Runs before the first signature of the new session: no payment is
        # signed with a key whose fingerprint the log does not hold.
        event = audit_events.event(
            "keys.load",
            None,
            clock(),
            keys=_key_fingerprints(keys),
            audit_key=config.audit.key,
            hsm_available=True,
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
    try:
        store = SqliteStore(config.store.path, lock_timeout=config.store.lock_timeout_seconds)
        store.migrate()
        changed = store.adopt_decimals({c: a.decimals for c, a in config.assets.items()})
    except StoreError as exc:
        raise StartupError(f"store.path: {exc}") from None
    if changed:
        store.close()
        names = ", ".join(f"assets.{a}.decimals" for a in changed)
        raise StartupError(f"{names}: differs from the decimals the store's amounts were kept in")
    packs = load_packs(config)
    check_descriptor_limit(config)
    hsm = open_hsm(config)
    metrics = Metrics(config.metrics.max_tracked_sessions)
    try:  # one decision time for every service: never below what is recorded
        clock = HighWater(time.time, store.latest_audit_time())
    except StoreError as exc:
        raise StartupError(f"store.path: {exc}") from None
    service = SigningService(config, store, hsm, packs, clock=clock.now, metrics=metrics)
    _audit_start(store, hsm, packs, config, clock.now)
    auth = authenticator(config)
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
            ),
            CallInterceptor("/paywarden.v1.", margin, gate),
        ],
        options=server_options(config),
        maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
    )
    edge = Edge(auth, store, clock.now)  # rpc.error records keep the services' time
    add_servicer(server, SignerServicer(service.signing, service.keys, edge), "paywarden.v1.Signer")
    add_servicer(server, SessionsServicer(service.sessions, edge), "paywarden.v1.Sessions")
    add_servicer(server, ApprovalsServicer(service.approvals, edge), "paywarden.v1.Approvals")
    add_servicer(
        server,
        ControlServicer(service.freezes, service.checkpoints, edge),
        "paywarden.v1.Control",
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.server.reflection:  # operators only: see authz.EXTERNAL_RPC_ROLES
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    try:
        port = server.add_secure_port(config.server.listen, server_credentials(config))
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

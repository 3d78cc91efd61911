#!/usr/bin/env python3
"""Benchmarks Sign against a bare unary mutual-TLS echo server in the same run.

    .venv/bin/python scripts/bench.py [--concurrency 32] [--duration 10] [--rounds 2]
                                      [--agents 8] [--processes 2] [--preload N]
                                      [--store sqlite|postgresql] [--replicas N]
                                      [--pg-url URL [--pg-password-file FILE]]
                                      [--pg-statements]
                                      [--sign-only] [--json FILE] [--keep DIR]
                                      [--rpc sign|sign-x402] [--mandate]

Makes a fresh data directory in a temporary directory (a SoftHSM2 token with
the payment and audit keys, a PKI, a config and a full policy pack), starts
``paywarden serve`` as its own process and, in another process, a bare gRPC
echo server with the same server certificate, client CA and worker pool.
``--store postgresql`` puts the store on PostgreSQL: a throwaway cluster
(tests/support/postgres.py's ``PgCluster``, in a temporary directory, stopped
and removed at the end), or the empty database ``--pg-url`` names; with
``--replicas N``, N ``paywarden serve`` processes share that database (and the
token) and the callers are dealt out across them in turn, the total
concurrency unchanged. ``--pg-statements`` (the throwaway cluster) loads
``pg_stat_statements`` and prints the statements and transactions per Sign and
the statements that took the server the most time. A
planner opens the sessions first; then client processes (grpc.aio, requests
serialised before the clock starts) call both at the same concurrency, in
alternating phases (echo, Sign, echo, Sign, ...), each target ``--duration``
seconds in all. Prints throughput and p50/p99/p99.9 latency for both and their
ratio, as a table and (``--json``) as JSON; then verifies every returned JWS
against the served JWKS and runs ``paywarden audit verify`` on the store.
``--sign-only`` skips the echo phases (a long run that watches the signer's
memory: its RSS is printed after every phase). Exits 1 if any call failed or
anything did not verify. The figures depend on
the machine: run it by hand, never as an assertion in the test suite.

``--rpc sign-x402`` benchmarks ``Signer.SignX402`` the same way instead of ``Sign``
(scripts/bench_x402.py): the data directory also holds a secp256k1 key
(``x402-exact-evm``), the configuration an x402 asset (USDC on Base) and the pack grants
that key on it with address payees; the callers send ``SignX402Request``s (x402 version
2, scheme ``exact``, 0.01 USDC, a fresh nonce each), and after the run every returned
authorisation is checked with eth-account's EIP-712 recovery against the key's address
(instead of the JWKS), and ``paywarden audit verify`` runs as for ``Sign``.

``--mandate`` opens every session from a human-signed mandate instead of a planner's budget
(scripts/bench_mandate.py): the configuration gains a ``[mandates]`` section (an issuer key
made for the run, each agent's key registered) and each session a user-credential chain of
its own (an AP2 open payment mandate: ``payment.amount_range`` and a ``payment.budget`` a
run never reaches, bound to its agent's key), so every call is also held to its mandate's
ledger; the figures are labelled ``Sign (mandate)``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from paywarden.v1 import sessions_pb2, signer_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mandate  # scripts/bench_mandate.py: the parts of --mandate
import bench_x402  # scripts/bench_x402.py: the parts of --rpc sign-x402

if TYPE_CHECKING:
    from tests.support.postgres import PgCluster

ROOT = Path(__file__).resolve().parent.parent
MODULE = os.environ.get("PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")
TRUST_DOMAIN = "paywarden.bench"
PLANNER = "bench-planner"
TOKEN_LABEL = "paywarden-bench"
SIGN_METHOD = "/paywarden.v1.Signer/Sign"
ECHO_METHOD = "/bench.Echo/Echo"
OPEN_SESSION_METHOD = "/paywarden.v1.Sessions/OpenSession"
GET_KEYS_METHOD = "/paywarden.v1.Signer/GetPublicKeys"
PAYEES = ("api.example", "weather-data-inc", "search.example.com", "llm.example.com")
AMOUNT = "0.01"
# The channel options every client uses: the server certificate names localhost.
CHANNEL_OPTIONS = (("grpc.ssl_target_name_override", "localhost"),)
PRELOADED_TOKEN = "preloaded-by-scripts-bench"  # not a JWS: never verified, never answered
EXPIRY_SECONDS = 300  # = limits.max_expiry_seconds in the config below

# A pack that exercises every rule family on each Sign (asset limits, rolling and
# daily limits, approval thresholds, payee lists and patterns, velocity, diversity,
# the breaker and session limits) with bounds that a benchmark run never reaches.
PACK = """
id = "bench"
version = 1
description = "Benchmark agents: every rule family, limits a run does not reach"
agents = [{agents}]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "100.00"
daily_limit = "100000000.00"
rolling_24h_limit = "100000000.00"
approval_above = "50.00"

[[assets.USD.approval_tiers]]
above = "80.00"
approvers = 2

[payees]
allow = ["api.example", "weather-data-inc"]
allow_patterns = ["[a-z0-9-]+\\\\.example\\\\.com"]
deny = ["evil.example.com"]
deny_patterns = ["[a-z0-9-]+\\\\.evil\\\\.example"]
first_payment = "allow"

[velocity]
max_payments = 100000000
window_seconds = 3600

[diversity]
max_payees_per_session = 10
max_payees_per_day = 100

[breaker]
window_seconds = 600
max_rejections = 1000
max_rejection_rate = 0.5
min_decisions = 100
max_spend = {{ USD = "100000000.00" }}
max_payees = 100

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "100000000.00" }}
"""

CONFIG = """
[server]
listen = "127.0.0.1:0"
trust_domain = "{trust_domain}"
tls_cert = "{pki}/server.crt"
tls_key = "{pki}/server.key"
client_ca = "{pki}/ca.crt"
max_workers = {workers}
# Enough calls in flight per agent for --concurrency over --agents: the benchmark
# measures signing, not admission refusals.
max_calls_per_principal = {per_principal}

[hsm]
module = "{module}"
token_label = "{label}"
pin_file = "{pin_file}"
softhsm_conf = "{softhsm_conf}"

[store]
{store}

[metrics]
listen = ""

[limits]
max_expiry_seconds = {expiry}
max_session_ttl_seconds = 3600

[policy]
dir = "{data}/policy"
timezone = "UTC"

[assets.USD]
decimals = 2

[[keys]]
label = "payments"
version = 1
"""


# -- the data directory -----------------------------------------------------------------------


@dataclass(frozen=True)
class DataDir:
    root: Path
    pki: Path
    config: Path
    softhsm_conf: Path
    audit_key: Path
    agents: tuple[str, ...]
    rpc: str = "sign"  # the RPC benchmarked: "sign" or "sign-x402"
    x402_address: str = ""  # sign-x402: the x402 key's address, as scripts/keys.py made it
    mandate: bool = False  # sessions opened from mandates (keys in root/mandates)

    def cert(self, role: str, principal: str) -> tuple[bytes, bytes]:
        """(private key, certificate) PEM of a client certificate."""
        stem = self.pki / f"{role}-{principal}"
        return stem.with_suffix(".key").read_bytes(), stem.with_suffix(".crt").read_bytes()

    @property
    def ca(self) -> bytes:
        return (self.pki / "ca.crt").read_bytes()


def _run(args: Sequence[str], env: dict[str, str] | None = None) -> str:
    """``python ARGS`` from the project root; its stdout, or SystemExit with its output."""
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


@dataclass(frozen=True)
class PgTarget:
    """The PostgreSQL database the signers share: its URL (no password) and password file."""

    url: str
    password_file: Path | None


def store_settings(data: Path, pg: PgTarget | None) -> str:
    """The config's ``[store]`` lines: the SQLite file in ``data``, or the database."""
    if pg is None:
        return f'path = "{data}/paywarden.db"'
    lines = [f'url = "{pg.url}"']
    if pg.password_file is not None:
        lines.append(f'password_file = "{pg.password_file}"')
    return "\n".join(lines)


def make_data_dir(
    root: Path,
    agents: int,
    workers: int,
    concurrency: int,
    pg: PgTarget | None = None,
    rpc: str = "sign",
    mandate: bool = False,
) -> DataDir:
    """Token, keys, PKI, pack and config under ``root`` (scripts/keys.py and scripts/pki.py);
    the store in ``root``/data, or on the database ``pg``. ``rpc`` "sign-x402": also the
    x402 key and asset, and the x402 pack instead of the JWS one (scripts/bench_x402.py).
    ``mandate``: also the mandate keys and ``[mandates]`` (scripts/bench_mandate.py)."""
    hsm = root / "hsm"
    (hsm / "tokens").mkdir(parents=True)
    softhsm_conf = hsm / "softhsm2.conf"
    softhsm_conf.write_text(
        f"directories.tokendir = {hsm / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    so_pin, pin = hsm / "so.pin", hsm / "user.pin"
    for f in (so_pin, pin):
        f.write_text(secrets.token_urlsafe(18) + "\n", encoding="utf-8")
        f.chmod(0o600)
    env = {"SOFTHSM2_CONF": str(softhsm_conf)}
    keys = ["scripts/keys.py", "--label", TOKEN_LABEL]
    _run([*keys, "init-token", "--so-pin-file", str(so_pin), "--pin-file", str(pin)], env)
    for key in ("payments.v1", "audit.v1"):
        _run([*keys, "generate", "--pin-file", str(pin), "--key", key], env)
    audit_key = root / "audit.v1.pem"
    _run(
        [*keys, "export", "--pin-file", str(pin), "--key", "audit.v1", "--out", str(audit_key)],
        env,
    )
    x402_address = ""
    if rpc == "sign-x402":
        x402_address = bench_x402.provision(functools.partial(_run, env=env), keys, str(pin))
    pki = root / "pki"
    _run(["scripts/pki.py", "init-ca", "--dir", str(pki), "--trust-domain", TRUST_DOMAIN])
    _run(["scripts/pki.py", "server", "--dir", str(pki)])
    names = tuple(f"bench-agent-{i}" for i in range(1, agents + 1))
    for role, principal in [("planner", PLANNER)] + [("agent", a) for a in names]:
        _run(["scripts/pki.py", "issue", "--dir", str(pki), "--role", role, "--id", principal])
    data = root / "data"
    (data / "policy").mkdir(parents=True)
    template = bench_x402.PACK if rpc == "sign-x402" else PACK
    pack = template.format(agents=", ".join(f'"{a}"' for a in names))
    (data / "policy" / "bench.toml").write_text(pack, encoding="utf-8")
    config = data / "paywarden.toml"
    config.write_text(
        CONFIG.format(
            trust_domain=TRUST_DOMAIN,
            pki=pki,
            workers=workers,
            per_principal=max(8, math.ceil(concurrency / agents)),
            module=MODULE,
            label=TOKEN_LABEL,
            pin_file=pin,
            softhsm_conf=softhsm_conf,
            data=data,
            store=store_settings(data, pg),
            expiry=EXPIRY_SECONDS,
        )
        + (bench_x402.CONFIG if rpc == "sign-x402" else "")
        + (bench_mandate.provision(root / "mandates", names) if mandate else ""),
        encoding="utf-8",
    )
    check = ["-m", "paywarden.signer.cli", "policy", "check", str(data / "policy" / "bench.toml")]
    # An x402 asset is known from the configuration only.
    _run([*check, "--config", str(config)] if rpc == "sign-x402" else check)
    return DataDir(root, pki, config, softhsm_conf, audit_key, names, rpc, x402_address, mandate)


# -- the two servers ----------------------------------------------------------------------------


@dataclass
class Signer:
    proc: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_signer(data: DataDir) -> Signer:
    """``paywarden serve`` in its own process; returns once it prints its readiness line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "paywarden.signer.cli", "serve", "--config", str(data.config)],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(data.softhsm_conf)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = proc.stdout
    assert out is not None
    lines: list[str] = []
    port = None
    for line in out:
        lines.append(line)
        if line.startswith("paywarden: serving on "):
            port = int(line.split()[3].rpartition(":")[2])
            break
    if port is None:
        proc.kill()
        raise SystemExit("bench: paywarden serve did not start:\n" + "".join(lines))
    signer = Signer(proc, port, lines)
    # Drain its output so that a chatty server never blocks on a full pipe.
    threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
    return signer


def rss_kib(pid: int) -> int | None:
    """A process's resident set size in KiB (Linux /proc; None elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds (Linux /proc; 0 elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _echo(request: bytes, _context: grpc.ServicerContext) -> bytes:
    return request


def echo_server_main(pki: Path, workers: int, conn: multiprocessing.connection.Connection) -> None:
    """A bare unary echo over mutual TLS: the signer's certificate, client CA and pool size."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    conn.send(port)
    conn.recv()  # any message (or the pipe closing) stops the server
    server.stop(grace=None)


# -- sessions and requests ----------------------------------------------------------------------


def channel(data: DataDir, addr: str, role: str, principal: str) -> grpc.Channel:
    key, cert = data.cert(role, principal)
    creds = grpc.ssl_channel_credentials(data.ca, key, cert)
    return grpc.secure_channel(addr, creds, options=CHANNEL_OPTIONS)


def open_sessions(data: DataDir, addr: str, count: int) -> list[tuple[str, str]]:
    """``count`` sessions as the planner, spread over the agents: (agent, session id)."""
    asset = bench_x402.ASSET if data.rpc == "sign-x402" else "USD"
    opened: list[tuple[str, str]] = []
    with channel(data, addr, "planner", PLANNER) as ch:
        call = ch.unary_unary(
            OPEN_SESSION_METHOD,
            request_serializer=sessions_pb2.OpenSessionRequest.SerializeToString,
            response_deserializer=sessions_pb2.OpenSessionResponse.FromString,
        )
        for i in range(count):
            agent = data.agents[i % len(data.agents)]
            request = sessions_pb2.OpenSessionRequest(
                agent_id=agent,
                task_description=f"benchmark session {i}: many small API payments",
                ttl_seconds=3600,
            )
            if data.mandate:
                decimals = 6 if data.rpc == "sign-x402" else 2  # as the configuration has them
                now = int(time.time())
                dirname = data.root / "mandates"
                request.mandate = bench_mandate.chain_for(dirname, agent, i, asset, decimals, now)
            else:
                request.budgets.append(sessions_pb2.AssetBudget(asset=asset, amount="1000000.00"))
            response: sessions_pb2.OpenSessionResponse = call(request, timeout=30)
            opened.append((agent, response.session.session_id))
    return opened


def sign_request(session_id: str, serial: int, expires_at: int) -> bytes:
    nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")
    intent = signer_pb2.PaymentIntent(
        session_id=session_id,
        key_id="payments.v1",
        payee=PAYEES[serial % len(PAYEES)],
        amount=AMOUNT,
        asset="USD",
        reference=f"bench-{serial}",
        purpose="one API call",
        nonce=nonce,
        expires_at=expires_at,
    )
    return signer_pb2.SignRequest(intent=intent).SerializeToString()


# What each --rpc calls: its method, how a request is made, and its name in the figures.
RPCS: dict[str, tuple[str, Callable[[str, int, int], bytes], str]] = {
    "sign": (SIGN_METHOD, sign_request, "Sign"),
    "sign-x402": (bench_x402.SIGN_X402_METHOD, bench_x402.sign_x402_request, "SignX402"),
}


def preload(data: DataDir, sessions: list[tuple[str, str]], count: int) -> None:
    """``count`` earlier signed payments, spread over the agents' sessions and the last
    23 hours, each with its spent reservation, written through the store's own API in
    transactions of 10,000: the history that the signer's limits read (signed spend
    counts for ever, so every one of them is in the agents' rolling 24 hours). Their
    token is a placeholder, not a JWS, and they have no audit record: what the run
    verifies is what the run itself signs. Under ``--rpc sign-x402`` they are payments of
    the x402 asset by the x402 key to its payees (0.01 USDC each)."""
    from paywarden.policy.vocabulary import Reason, ReservationStatus, Verdict
    from paywarden.signer.config_file import load_config
    from paywarden.signer.store.opening import open_store
    from paywarden.signer.store.records import DecisionRecord, Reservation

    store = open_store(load_config(data.config).store)
    now = int(time.time())
    span = 23 * 3600
    if data.rpc == "sign-x402":
        asset, key_id, payees = bench_x402.ASSET, bench_x402.KEY_ID, bench_x402.PAYEES
        amount = int(bench_x402.AMOUNT)  # 6 decimals: atomic units are the minor units
    else:
        asset, key_id, payees = "USD", "payments.v1", PAYEES
        amount = int(AMOUNT.replace(".", ""))
    written = 0
    try:
        while written < count:
            with store.payment_tx(wait=60) as tx:
                for i in range(written, min(count, written + 10_000)):
                    agent, session_id = sessions[i % len(sessions)]
                    at = now - span + span * i // count
                    decision_id = f"preload-{i}"
                    payee = payees[i % len(payees)]
                    record = DecisionRecord(
                        id=decision_id,
                        created_at=at,
                        agent_id=agent,
                        session_id=session_id,
                        nonce=f"preload-{i}",
                        request_hash=f"{i:064x}",
                        outcome=Verdict.ALLOW,
                        reason=Reason.ALLOWED,
                        message="preloaded by scripts/bench.py",
                        key_id=key_id,
                        asset=asset,
                        amount_minor=amount,
                        payee=payee,
                        expires_at=at + 60,
                        jws=PRELOADED_TOKEN,
                    )
                    hold = Reservation(
                        decision_id, agent, session_id, asset, payee, amount, at, at + 60,
                        ReservationStatus.SPENT,
                    )  # fmt: skip
                    tx.record_decision(record, consume_nonce=True, reservation=hold)
            written = min(count, written + 10_000)
            if written % 100_000 == 0 or written == count:
                print(f"bench: preloaded {written} decisions", flush=True)
    finally:
        store.close()


# -- client processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One concurrent caller: its agent's identity, its session and the signer it calls."""

    agent: str
    session_id: str
    signer_addr: str


@dataclass(frozen=True)
class Phase:
    kind: str  # "echo" or "sign"
    seconds: float


@dataclass
class PhaseResult:
    kind: str
    latencies: list[float]  # seconds, one per successful call
    errors: list[str]
    responses: list[bytes]  # Sign: the serialised responses, parsed after the run
    elapsed: float = 0.0  # from the common start to this client's last answer
    by_signer: dict[str, int] = field(default_factory=dict)  # Sign: answers per replica


def _raw(ch: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return ch.unary_unary(method, request_serializer=None, response_deserializer=None)


async def _caller(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    queue: list[bytes],
    end: float,
    kind: str,
    result: PhaseResult,
    extra: Callable[[], bytes],
    target: str,
) -> None:
    """Calls back to back until ``end``; records each latency or error."""
    while time.time() < end:
        request = queue.pop() if queue else extra()
        t0 = time.perf_counter()
        try:
            response = await call(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            result.errors.append(f"{exc.code().name}: {exc.details()}")
            continue
        result.latencies.append(time.perf_counter() - t0)
        if kind == "sign":
            result.responses.append(response)
            result.by_signer[target] = result.by_signer.get(target, 0) + 1
        elif response != request:
            result.errors.append("the echo answered other bytes")


async def _client(
    data: DataDir,
    echo_addr: str,
    slots: list[Slot],
    serial0: int,
    commands: multiprocessing.connection.Connection,
) -> None:
    agents = sorted({s.agent for s in slots})
    signer_addrs = sorted({s.signer_addr for s in slots})
    method, make_request, _ = RPCS[data.rpc]
    chans: dict[tuple[str, str], grpc.aio.Channel] = {}
    for agent in agents:
        key, cert = data.cert("agent", agent)
        creds = grpc.ssl_channel_credentials(data.ca, key, cert)
        for addr in sorted({*signer_addrs, echo_addr}):
            chans[addr, agent] = grpc.aio.secure_channel(addr, creds, options=CHANNEL_OPTIONS)
    # No (de)serialisers: requests go as prepared bytes and responses come back as bytes.
    sign = {(s.signer_addr, s.agent): _raw(chans[s.signer_addr, s.agent], method) for s in slots}
    echo = {a: _raw(chans[echo_addr, a], ECHO_METHOD) for a in agents}
    serials = itertools.count(serial0)
    loop = asyncio.get_running_loop()
    # Connect (TLS handshakes) before any phase: one call per channel.
    payload = make_request(slots[0].session_id, 0, int(time.time()) + EXPIRY_SECONDS)
    await asyncio.gather(*(echo[a](payload, timeout=30) for a in agents))
    await asyncio.gather(*(chans[s.signer_addr, s.agent].channel_ready() for s in slots))
    commands.send("ready")
    while True:
        phase: Phase | None = await loop.run_in_executor(None, commands.recv)
        if phase is None:
            break
        # Within the signer's expiry window from the first call to the last: a phase is
        # shorter than EXPIRY_SECONDS - 60 (see parse_args).
        expires = int(time.time()) + EXPIRY_SECONDS - 10
        queues: list[list[bytes]] = []
        extras: list[Callable[[], bytes]] = []
        for slot in slots:
            fresh = functools.partial(
                _fresh_request, make_request, slot.session_id, serials, expires
            )
            if phase.kind == "sign":
                # Each Sign needs its own nonce: enough prepared requests for a fast
                # signer; a caller that runs out makes more (~20 us each).
                queues.append([fresh() for _ in range(max(16, int(phase.seconds * 50)))])
                extras.append(fresh)
            else:
                # The echo answers any bytes: one prepared request of the same size.
                same = fresh()
                queues.append([])
                extras.append(functools.partial(_same, same))
        commands.send("prepared")
        start: float = await loop.run_in_executor(None, commands.recv)
        result = PhaseResult(phase.kind, [], [], [])
        await asyncio.sleep(max(0.0, start - time.time()))
        await asyncio.gather(
            *(
                _caller(
                    sign[slot.signer_addr, slot.agent]
                    if phase.kind == "sign"
                    else echo[slot.agent],
                    queue,
                    start + phase.seconds,
                    phase.kind,
                    result,
                    extra,
                    slot.signer_addr,
                )
                for slot, queue, extra in zip(slots, queues, extras, strict=True)
            )
        )
        result.elapsed = time.time() - start
        commands.send(result)
    for ch in chans.values():
        await ch.close(None)


def _fresh_request(
    make: Callable[[str, int, int], bytes], session_id: str, serials: Iterator[int], expires_at: int
) -> bytes:
    return make(session_id, next(serials), expires_at)


def _same(request: bytes) -> bytes:
    return request


def client_main(
    data: DataDir,
    echo_addr: str,
    slots: list[Slot],
    serial0: int,
    commands: multiprocessing.connection.Connection,
) -> None:
    asyncio.run(_client(data, echo_addr, slots, serial0, commands))


# -- figures ------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when it is empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class Figures:
    calls: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float


def figures(latencies: list[float], errors: int, seconds: float) -> Figures:
    ordered = sorted(latencies)
    return Figures(
        calls=len(ordered),
        errors=errors,
        seconds=round(seconds, 3),
        rps=round(len(ordered) / seconds, 1) if seconds else 0.0,
        p50_ms=round(percentile(ordered, 50) * 1000, 2),
        p99_ms=round(percentile(ordered, 99) * 1000, 2),
        p999_ms=round(percentile(ordered, 99.9) * 1000, 2),
    )


def _ms(f: Figures) -> tuple[str, str, str]:
    return f"{f.p50_ms:.2f}", f"{f.p99_ms:.2f}", f"{f.p999_ms:.2f}"


def table(echo: Figures, sign: Figures, name: str = "Sign") -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.3f}" if b else "-"

    rows = [
        ("", "calls", "errors", "rps", "p50 ms", "p99 ms", "p99.9 ms"),
        *(
            (label, str(f.calls), str(f.errors), f"{f.rps:.1f}", *_ms(f))
            for label, f in (("bare mTLS echo", echo), (name, sign))
        ),
        (
            f"{name} / echo",
            "",
            "",
            ratio(sign.rps, echo.rps),
            ratio(sign.p50_ms, echo.p50_ms),
            ratio(sign.p99_ms, echo.p99_ms),
            ratio(sign.p999_ms, echo.p999_ms),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


# -- verification -------------------------------------------------------------------------------


def verify_signatures(data: DataDir, addr: str, responses: list[bytes]) -> tuple[int, int]:
    """(verified, failed): each response must be SIGNED with a JWS that the served JWKS verifies."""
    with channel(data, addr, "agent", data.agents[0]) as ch:
        get_keys = ch.unary_unary(
            GET_KEYS_METHOD,
            request_serializer=signer_pb2.GetPublicKeysRequest.SerializeToString,
            response_deserializer=signer_pb2.GetPublicKeysResponse.FromString,
        )
        keys: signer_pb2.GetPublicKeysResponse = get_keys(
            signer_pb2.GetPublicKeysRequest(), timeout=30
        )
    key_set = KeySet.import_key_set(json.loads(keys.jwks_json))
    verified = failed = 0
    for raw in responses:
        response = signer_pb2.SignResponse.FromString(raw)
        try:
            if response.status != signer_pb2.SIGNED:
                raise ValueError(f"status {response.status}")
            token = jws.deserialize_compact(response.jws, key_set, algorithms=["ES256"])
            if json.loads(token.payload)["payee"] not in PAYEES:
                raise ValueError("payload names another payee")
        except (JoseError, ValueError, KeyError) as exc:
            failed += 1
            if failed <= 3:
                print(f"bench: a signature does not verify: {exc}", file=sys.stderr)
            continue
        verified += 1
    return verified, failed


def verify_audit(data: DataDir) -> tuple[bool, str]:
    """``paywarden audit verify`` on the stopped signer's store."""
    command = ["-m", "paywarden.signer.cli", "audit", "verify", "--config", str(data.config)]
    proc = subprocess.run(
        [sys.executable, *command, "--public-key", str(data.audit_key)],
        cwd=ROOT,
        env={**os.environ, "SOFTHSM2_CONF": str(data.softhsm_conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


# -- the run ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (32)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target (10)")
    parser.add_argument("--rounds", type=int, default=2, help="echo/Sign phase pairs (2)")
    parser.add_argument("--agents", type=int, default=8, help="agent identities (8)")
    parser.add_argument("--sessions", type=int, help="sessions (default: --concurrency)")
    parser.add_argument("--processes", type=int, default=2, help="client processes (2)")
    parser.add_argument("--workers", type=int, default=64, help="server thread pools (64)")
    parser.add_argument(
        "--preload", type=int, default=0, metavar="N", help="earlier decisions to store first (0)"
    )
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the signers' store (sqlite)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="signer processes on one PostgreSQL store (1)"
    )
    parser.add_argument(
        "--pg-url",
        metavar="URL",
        help="an empty PostgreSQL database for --store postgresql (default: a throwaway cluster)",
    )
    parser.add_argument(
        "--pg-password-file", type=Path, metavar="FILE", help="the password for --pg-url"
    )
    parser.add_argument(
        "--pg-statements",
        action="store_true",
        help="count the statements per Sign (pg_stat_statements; the throwaway cluster only)",
    )
    parser.add_argument(
        "--sign-only", action="store_true", help="no echo phases (a long run for memory)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="make the data directory here")
    parser.add_argument(
        "--rpc",
        choices=tuple(RPCS),
        default="sign",
        help="the RPC benchmarked: Sign, or SignX402 with an x402 key (sign)",
    )
    parser.add_argument(
        "--mandate",
        action="store_true",
        help="open the sessions from mandates, not budgets (scripts/bench_mandate.py)",
    )
    args = parser.parse_args(argv)
    for name in ("concurrency", "rounds", "agents", "processes", "workers", "replicas"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.preload < 0:
        parser.error("--preload must not be negative")
    if args.store != "postgresql" and (args.replicas > 1 or args.pg_url or args.pg_password_file):
        parser.error("--replicas, --pg-url and --pg-password-file need --store postgresql")
    if args.pg_statements and (args.store != "postgresql" or args.pg_url):
        parser.error("--pg-statements needs --store postgresql without --pg-url")
    if args.pg_password_file is not None and args.pg_url is None:
        parser.error("--pg-password-file needs --pg-url")
    if args.replicas > args.concurrency:
        parser.error("--replicas must not exceed --concurrency")
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.duration / args.rounds > EXPIRY_SECONDS - 60:
        parser.error("a phase must be shorter than the requests' expiry: raise --rounds")
    args.sessions = args.sessions or args.concurrency
    args.processes = min(args.processes, args.concurrency)
    return args


def run(
    args: argparse.Namespace, root: Path, pg: PgTarget | None, watch: ClusterWatch | None
) -> int:
    """The run; ``pg``: the database the signers share (None: SQLite); ``watch``: its
    server, when this run started it (its CPU and statements are counted)."""
    print(f"bench: data directory {root}", flush=True)
    data = make_data_dir(
        root, args.agents, args.workers, args.concurrency, pg, args.rpc, args.mandate
    )
    rpc_name = RPCS[args.rpc][2] + (" (mandate)" if args.mandate else "")
    ctx = multiprocessing.get_context("spawn")
    # One after another: the first migrates an empty database, the others find it done.
    signers: list[Signer] = []
    try:
        for _ in range(args.replicas):
            signers.append(start_signer(data))
    except BaseException:
        for started in signers:
            started.stop()
        raise
    echo_parent, echo_child = ctx.Pipe()
    echo_proc = ctx.Process(
        target=echo_server_main, args=(data.pki, args.workers, echo_child), daemon=True
    )
    echo_proc.start()
    clients: list[tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]]
    clients = []
    try:
        echo_port: int = echo_parent.recv()
        signer_addrs = [f"127.0.0.1:{s.port}" for s in signers]
        echo_addr = f"127.0.0.1:{echo_port}"
        print(f"bench: signers on {', '.join(signer_addrs)}, echo on {echo_addr}", flush=True)
        sessions = open_sessions(data, signer_addrs[0], args.sessions)
        if args.preload:
            preload(data, sessions, args.preload)
        # Caller i goes to client process i % processes; within each process the callers
        # are dealt out across the replicas in turn, so every process calls every replica.
        slots = [
            Slot(*sessions[i % len(sessions)], signer_addrs[(i // args.processes) % len(signers)])
            for i in range(args.concurrency)
        ]
        for p in range(args.processes):
            mine = slots[p :: args.processes]
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=client_main,
                args=(data, echo_addr, mine, p * 1_000_000_000, child),
                daemon=True,
            )
            proc.start()
            clients.append((proc, parent))
        for _, conn in clients:
            if conn.recv() != "ready":
                raise SystemExit("bench: a client process did not start")
        rss_start = [rss_kib(s.proc.pid) for s in signers]
        if watch is not None:
            watch.reset()
        seconds = args.duration / args.rounds
        kinds = ("sign",) * args.rounds if args.sign_only else ("echo", "sign") * args.rounds
        latencies: dict[str, list[float]] = {"echo": [], "sign": []}
        # Each phase lasts until its last answer (calls in flight at the end count).
        elapsed: dict[str, float] = {"echo": 0.0, "sign": 0.0}
        errors: dict[str, list[str]] = {"echo": [], "sign": []}
        responses: list[bytes] = []
        by_signer: dict[str, int] = dict.fromkeys(signer_addrs, 0)
        # CPU seconds used during the phases, by the server(s) under test, by the clients
        # and by the database's processes (PostgreSQL).
        cpu: dict[str, dict[str, float]] = {
            k: {"server": 0.0, "clients": 0.0, "database": 0.0} for k in elapsed
        }
        servers = {"echo": [echo_proc.pid or 0], "sign": [s.proc.pid for s in signers]}
        for number, kind in enumerate(kinds, 1):
            for _, conn in clients:
                conn.send(Phase(kind, seconds))
            for _, conn in clients:
                if conn.recv() != "prepared":
                    raise SystemExit("bench: a client process failed")
            start = time.time() + 0.2  # every client starts at the same moment
            server_cpu = sum(cpu_seconds(pid) for pid in servers[kind])
            clients_cpu = sum(cpu_seconds(proc.pid or 0) for proc, _ in clients)
            db_cpu = watch.cpu_seconds() if watch else 0.0
            for _, conn in clients:
                conn.send(start)
            results: list[PhaseResult] = [conn.recv() for _, conn in clients]
            cpu[kind]["server"] += sum(cpu_seconds(pid) for pid in servers[kind]) - server_cpu
            cpu[kind]["clients"] += sum(cpu_seconds(p.pid or 0) for p, _ in clients) - clients_cpu
            cpu[kind]["database"] += (watch.cpu_seconds() if watch else 0.0) - db_cpu
            done = sum(len(r.latencies) for r in results)
            rss = ", ".join(str(rss_kib(s.proc.pid)) for s in signers)
            print(
                f"bench: phase {number}/{len(kinds)} {kind}: {done} calls in {seconds:g} s,"
                f" signer RSS {rss} KiB",
                flush=True,
            )
            elapsed[kind] += max(r.elapsed for r in results)
            for r in results:
                latencies[kind].extend(r.latencies)
                errors[kind].extend(r.errors)
                responses.extend(r.responses)
                for addr, count in r.by_signer.items():
                    by_signer[addr] += count
        for _, conn in clients:
            conn.send(None)
        rss_end = [rss_kib(s.proc.pid) for s in signers]
        echo = figures(latencies["echo"], len(errors["echo"]), elapsed["echo"])
        sign = figures(latencies["sign"], len(errors["sign"]), elapsed["sign"])
        print()
        print(table(echo, sign, rpc_name))
        print()
        for kind, errs in errors.items():
            for err in sorted(set(errs))[:5]:
                print(f"bench: {kind} error ({errs.count(err)}x): {err}", file=sys.stderr)
        if args.rpc == "sign-x402":
            verify_started = time.perf_counter()
            verified, bad = bench_x402.verify_authorisations(responses, data.x402_address)
            checked = (
                f"authorisations verified by eth-account's EIP-712 recovery against"
                f" {data.x402_address} (in {time.perf_counter() - verify_started:.1f} s)"
            )
        else:
            verified, bad = verify_signatures(data, signer_addrs[0], responses)
            checked = "signatures verified against the JWKS"
        store = "SQLite" if pg is None else f"PostgreSQL, {len(signers)} replica(s)"
        print(f"bench: store {store}; {rpc_name} answers per signer: {by_signer}")
        print(f"bench: signer RSS {rss_start} KiB before the first phase, {rss_end} KiB after")
        for kind, figs in (("echo", echo), ("sign", sign)):
            if figs.calls:
                used = cpu[kind]
                db = (
                    f", {used['database'] / figs.calls * 1000:.3f} ms in the database"
                    f" ({used['database'] / elapsed[kind]:.2f} cores)"
                    if watch is not None and kind == "sign"
                    else ""
                )
                print(
                    f"bench: {kind}: CPU per call {used['server'] / figs.calls * 1000:.3f} ms"
                    f" in the server(s), {used['clients'] / figs.calls * 1000:.3f} ms in the"
                    f" clients ({used['server'] / elapsed[kind]:.2f} and"
                    f" {used['clients'] / elapsed[kind]:.2f} cores){db}"
                )
        print(f"bench: {verified} {checked}, {bad} failed")
        if watch is not None:
            for line in watch.report(sign.calls):
                print(f"bench: {line}")
    finally:
        for client, _ in clients:
            client.join(timeout=30)
            if client.is_alive():
                client.terminate()
        echo_parent.send("stop")
        echo_proc.join(timeout=30)
        stopped = [s.stop() for s in signers]
    audit_ok, audit_text = verify_audit(data)
    print(f"bench: paywarden audit verify: {'ok' if audit_ok else 'FAILED'}: {audit_text}")
    for signer, code in zip(signers, stopped, strict=True):
        if code != 0:
            print(f"bench: paywarden serve exited {code}:\n{''.join(signer.output)}")
    error_count = echo.errors + sign.errors + bad + (0 if audit_ok else 1)
    if args.json:
        report = {
            "rpc": args.rpc,
            "mandate": args.mandate,
            "concurrency": args.concurrency,
            "duration_seconds": args.duration,
            "rounds": args.rounds,
            "agents": args.agents,
            "sessions": args.sessions,
            "processes": args.processes,
            "workers": args.workers,
            "preload": args.preload,
            "sign_only": args.sign_only,
            "store": args.store,
            "replicas": args.replicas,
            "sign_by_signer": by_signer,
            "cpus": os.cpu_count(),
            "signer_rss_kib": {"start": rss_start, "end": rss_end},
            "cpu_seconds": cpu,
            "echo": asdict(echo),
            "sign": asdict(sign),
            "ratio": {
                "rps": round(sign.rps / echo.rps, 4) if echo.rps else None,
                "p99": round(sign.p99_ms / echo.p99_ms, 4) if echo.p99_ms else None,
            },
            "signatures_verified": verified,
            "signatures_failed": bad,
            "audit_verified": audit_ok,
            "errors": error_count,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"bench: {error_count} errors")
    return 0 if error_count == 0 else 1


class ClusterWatch:
    """The throwaway cluster's server during the run: its processes' CPU time and, with
    ``--pg-statements``, what ``pg_stat_statements`` counts for the signers' database
    (reset once the sessions are open, read at the end)."""

    def __init__(self, cluster: PgCluster, dbname: str, statements: bool) -> None:
        self.cluster = cluster
        self.dbname = dbname
        self.statements = statements
        pid_file = cluster.data_dir / "postmaster.pid"
        self.postmaster = int(pid_file.read_text(encoding="ascii").split()[0])
        self._xacts = 0

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes that are still running (the
        postmaster and its children: the connections' backends, the WAL writer, ...)."""
        total = cpu_seconds(self.postmaster)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text(encoding="ascii")
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.postmaster:
                    total += cpu_seconds(int(entry.name))
        return total

    def _transactions(self) -> int:
        sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{}'"
        return int(self.cluster.psql(sql.format(self.dbname)).strip())

    def reset(self) -> None:
        if self.statements:
            self.cluster.psql("SELECT pg_stat_statements_reset()")
            self._xacts = self._transactions()

    def report(self, signs: int) -> list[str]:
        """Statements and transactions per Sign, and the statements that took the most
        of the server's time (everything the signers ran since :meth:`reset`: the
        Sign calls, and the health probes and refreshes of the replicas)."""
        if not self.statements or not signs:
            return []
        time.sleep(1.0)  # the backends publish their counts when idle
        xacts = self._transactions() - self._xacts
        rows = self.cluster.psql(
            "SELECT calls, round(total_exec_time::numeric, 1), rows,"
            " left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
            " FROM pg_stat_statements WHERE dbid ="
            f" (SELECT oid FROM pg_database WHERE datname = '{self.dbname}')"
            " ORDER BY total_exec_time DESC"
        )
        parsed = [line.split("|", 3) for line in rows.splitlines() if line.count("|") >= 3]
        calls = sum(int(r[0]) for r in parsed)
        total_ms = sum(float(r[1]) for r in parsed)
        lines = [
            f"PostgreSQL: {calls / signs:.1f} statements and {xacts / signs:.2f} transactions"
            f" per Sign ({calls} and {xacts} for {signs} Sign calls; the replicas' health"
            " probes and refreshes during the run count too),"
            f" {total_ms / signs:.3f} ms of execution per Sign, lock waits included; the"
            " statements that took the most:",
        ]
        for count, ms, _rows, query in parsed[:12]:
            lines.append(
                f"  {int(count) / signs:6.2f}/Sign {float(ms) / signs:7.4f} ms/Sign  {query}"
            )
        return lines


def run_in(args: argparse.Namespace, root: Path) -> int:
    """The run, on the store ``--store`` names (a throwaway PostgreSQL cluster made here)."""
    if args.store == "sqlite":
        return run(args, root, None, None)
    if args.pg_url is not None:
        return run(args, root, PgTarget(args.pg_url, args.pg_password_file), None)
    # The tests' throwaway cluster: one place for that code (tests/support/postgres.py).
    sys.path.insert(0, str(ROOT))
    from tests.support.postgres import PgCluster

    cluster = PgCluster()
    try:
        if args.pg_statements:
            # Loaded at the server's start; its view lives in the postgres database (the
            # signers' database must hold nothing but their schema).
            cluster.psql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            cluster.stop()
            cluster.start()
            cluster.psql("CREATE EXTENSION pg_stat_statements")
        url = cluster.create_database()
        print(f"bench: PostgreSQL {cluster.bin_dir.parent.name} at {url}", flush=True)
        watch = ClusterWatch(cluster, url.rpartition("/")[2], args.pg_statements)
        return run(args, root, PgTarget(url, cluster.password_file), watch)
    finally:
        cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
        return run_in(args, args.keep.resolve())
    with tempfile.TemporaryDirectory(prefix="paywarden-bench-") as tmp:
        return run_in(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the tests (clients, config files, the serve process)."""

from __future__ import annotations

import base64
import hashlib
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from tests.support.backends import Stores

ROOT = Path(__file__).resolve().parent.parent
# The PKCS#11 module under test: SoftHSM2 unless PKCS11_MODULE names another
# (scripts/keys.py, which makes the test token, reads the same variable).
MODULE = os.environ.get("PKCS11_MODULE", "/usr/lib/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class TestToken:
    __test__ = False  # a fixture value, not a test class
    base: Path
    conf: Path
    label: str
    so_pin_file: Path
    pin_file: Path

    @property
    def pin(self) -> str:
        return self.pin_file.read_text(encoding="utf-8").strip()


@dataclass(frozen=True)
class Pki:
    dir: Path
    trust_domain: str

    def cert(self, role: str, principal: str) -> tuple[bytes, bytes]:
        stem = self.dir / f"{role}-{principal}"
        return (stem.with_suffix(".key").read_bytes(), stem.with_suffix(".crt").read_bytes())

    @property
    def ca(self) -> bytes:
        return (self.dir / "ca.crt").read_bytes()

    def channel(
        self, addr: str, role: str, principal: str, client_pki: Pki | None = None
    ) -> grpc.Channel:
        """A channel that trusts this CA and presents ``client_pki``'s certificate."""
        key, cert = (client_pki or self).cert(role, principal)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=key, certificate_chain=cert
        )
        return grpc.secure_channel(
            addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )


@dataclass
class Clock:
    """Wall-clock time plus an offset that a test may advance (time is an input)."""

    offset: float = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def start_of_second(self) -> int:
        """Moves the clock just past a second boundary: ~1 s before ``int(now)`` changes."""
        t = self.now()
        self.advance(math.ceil(t) - t + 0.01)
        return int(self.now())


@dataclass
class Stack:
    config: Any
    store: Any
    hsm: Any
    service: Any
    clock: Clock
    control: Any = None


OPEN_PACK = """
# Lets agent-1 and agent-2 pay anyone within the session's budget: the
# signing-path tests exercise sessions, replay and budgets, not the packs.
id = "test-open"
version = 1
agents = ["agent-1", "agent-2"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "1000000"

[assets.BTC]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "1000"

[assets.JPY]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "100000000"

[payees]
allow_patterns = [".+"]
# Patterns admit ASCII payees only: a non-ASCII payee is paid when named.
allow = ["caf\u00e9"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000000", BTC = "1000", JPY = "100000000" }
"""


def write_config(
    directory: Path,
    token: TestToken,
    pki: Pki,
    *,
    listen: str = "127.0.0.1:0",
    extra: str = "",
    softhsm_conf: Path | None = None,
    packs: dict[str, str] | None = None,
    timezone: str = "UTC",
    stores: Stores | None = None,
) -> Path:
    """A signer config in ``directory``; ``packs`` (file name -> TOML) replace the open pack.
    Its store is ``stores``' store named ``directory / "state.db"`` (tests/support/backends.py;
    without ``stores``, the SQLite file there)."""
    state = directory / "state.db"
    store = stores.toml(state) if stores is not None else f'path = "{state}"'
    directory.mkdir(parents=True, exist_ok=True)
    policy_dir = directory / "policy"
    policy_dir.mkdir(exist_ok=True)
    for name, text in (packs if packs is not None else {"open.toml": OPEN_PACK}).items():
        (policy_dir / name).write_text(text, encoding="utf-8")
    path = directory / "paywarden.toml"
    path.write_text(
        f"""
[server]
listen = "{listen}"
trust_domain = "{pki.trust_domain}"
tls_cert = "{pki.dir / "server.crt"}"
tls_key = "{pki.dir / "server.key"}"
client_ca = "{pki.dir / "ca.crt"}"
max_workers = 64
grace_seconds = 5.0

[hsm]
module = "{MODULE}"
token_label = "{token.label}"
pin_file = "{token.pin_file}"
softhsm_conf = "{softhsm_conf or token.conf}"
retry_interval_seconds = 0.0

[store]
{store}

[metrics]
listen = "127.0.0.1:0"

[audit]
checkpoint_every = 10
checkpoint_seconds = 60

[limits]
max_expiry_seconds = 300
max_session_ttl_seconds = 3600
# Tests send many bad requests on purpose; the refusal budget has its own attack test.
refusal_burst = 1000000

[policy]
dir = "{policy_dir}"
timezone = "{timezone}"

[assets.USD]
decimals = 2

[assets.BTC]
decimals = 8

[assets.JPY]
decimals = 0

[[keys]]
label = "payments"
version = 1

[[keys]]
label = "payments"
version = 2
{extra}
""",
        encoding="utf-8",
    )
    return path


def new_nonce(n: int = 16) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(n)).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Base64url without padding, as JWS and our nonces write it."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sha256_hex(text: str) -> str:
    """The hex SHA-256 of ``text`` in UTF-8 (how packs and tasks are digested)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def trailing_metadata(err: grpc.RpcError) -> dict[str, str]:
    """A failed call's trailing metadata as {key: value}. (grpc-stubs types the items
    as objects with ``key`` and ``value``; at run time they are (key, value) pairs.)"""
    items: Any = err.trailing_metadata() or ()
    return {str(key): str(value) for key, value in items}


def reason_of(err: grpc.RpcError) -> str | None:
    return trailing_metadata(err).get("paywarden-reason")


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    port: int
    output: list[str] = field(default_factory=list)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def serve(
    config: Path, env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()
) -> Iterator[ServeProcess]:
    """Runs ``paywarden serve`` and waits for its readiness line (no sleeps)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "paywarden.signer.cli", "serve", "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        pass_fds=pass_fds,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    port = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("paywarden: serving on "):
            port = int(line.split()[3].rpartition(":")[2])
            break
    if port is None:
        proc.kill()
        rest = proc.stdout.read()
        raise RuntimeError("paywarden serve did not start:\n" + "".join(lines) + rest)
    running = ServeProcess(proc, port, lines)
    # Drain the output so that a chatty server never blocks on a full pipe.
    drain = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    drain.start()
    try:
        yield running
    finally:
        running.stop()
        drain.join(timeout=10)

"""The guided demo's throwaway signer: a SoftHSM2 token, keys, a PKI, a config and a
policy pack in one directory, and ``paywarden serve`` running on them.

Everything is made with the installed package (``paywarden-keys`` and ``paywarden-pki``,
i.e. :mod:`paywarden.signer.cli.keys` and :mod:`paywarden.signer.cli.pki`), never with
the repository's scripts, so the demo runs wherever the package is installed. The token
lives in the directory, named by a SoftHSM2 configuration written there: the user's
tokens are never read or touched. The PINs are generated for the run and written
owner-only into the directory; they are never printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from paywarden.signer.cli import pki

TRUST_DOMAIN = "paywarden.demo"
TOKEN_LABEL = "paywarden-demo"  # noqa: S105 - a label, not a secret
PAYMENT_KEY = "payments.v1"
AUDIT_KEY = "audit.v1"
DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
# The only PKCS#11 library the demo initialises a token in (its C_GetInfo manufacturerID):
# C_InitToken on another module could take a slot of a real HSM.
SOFTHSM_MANUFACTURER = "SoftHSM"
# Who plays the story, by role (one client certificate each).
PLANNER = "demo-planner"
SHOP_AGENT = "shop-agent"
TRAVEL_AGENT = "travel-agent"
APPROVER = "demo-approver"
OPERATOR = "demo-operator"
CAST = (
    ("planner", PLANNER),
    ("agent", SHOP_AGENT),
    ("agent", TRAVEL_AGENT),
    ("approver", APPROVER),
    ("operator", OPERATOR),
)
# Payees the story's pack names (the story's confusable payee imitates RAIL).
WEATHER, API, RAIL = "weather-data-inc", "api.example", "rail.example"
APPROVAL_ABOVE = "100.00"
MAX_REJECTIONS = 3

STORY_PACK = f"""\
# The guided demo's pack (paywarden demo): two agents buy data and travel for a team.
id = "demo-team"
version = 1
description = "Guided demo: a shopping agent and a travel agent"
agents = ["{SHOP_AGENT}", "{TRAVEL_AGENT}"]

[assets.USD]
keys = ["{PAYMENT_KEY}"]
max_per_payment = "500.00"
daily_limit = "1000.00"
approval_above = "{APPROVAL_ABOVE}"

[payees]
allow = ["{WEATHER}", "{API}", "{RAIL}"]
first_payment = "allow"

[diversity]
max_payees_per_session = 3
max_payees_per_day = 10

[breaker]
window_seconds = 3600
max_rejections = {MAX_REJECTIONS}

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "500.00" }}
"""

# ``paywarden-keys`` run in a child process: the PKCS#11 module reads SOFTHSM2_CONF once,
# when it is loaded, so the demo itself never loads it.
_KEYS_MAIN = "import sys; from paywarden.signer.cli.keys import main; sys.exit(main())"
# ``paywarden serve`` as the demo's child: it asks Linux for SIGTERM when the demo dies,
# even by SIGKILL (PR_SET_PDEATHSIG, kept across exec; it fires when the *thread* that
# started it ends: the demo's main thread), checks the demo is still its parent, then
# execs the signer (same pid). Not a preexec_fn: the demo has threads.
_SERVE_MAIN = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("paywarden demo: the demo ended before its signer started")
os.execv(sys.executable, [sys.executable, "-m", "paywarden.signer.cli", *sys.argv[2:]])
"""
_MANUFACTURER_MAIN = """\
import sys
from paywarden.hsm import HsmError
from paywarden.hsm.provision import module_manufacturer
try:
    print(module_manufacturer(sys.argv[1]))
except HsmError as exc:
    sys.exit(str(exc))
"""
_SERVING = re.compile(r"^paywarden: serving on (\S+):(\d+) .*metrics (?:\S+:(\d+)|off)\)")
# What a line of softhsm2.conf cannot hold: SoftHSM2 cuts a line at "#", CR or LF, splits
# it at every "=", and reads at most 1023 bytes of it.
_SOFTHSM_CONF_CUTS = frozenset("#=\r\n")
_SOFTHSM_CONF_LINE = 1023
_TOKENDIR = "directories.tokendir = "
# The child's environment must not reconfigure the demo's signer.
_FOREIGN = ("PAYWARDEN_", "SOFTHSM2_CONF")


class DemoError(Exception):
    """The demo cannot set up or run its signer; the message says why."""


@dataclass(frozen=True)
class Workspace:
    """The demo's directory and what was provisioned in it."""

    root: Path
    module: str

    @property
    def hsm(self) -> Path:
        return self.root / "hsm"

    @property
    def softhsm_conf(self) -> Path:
        return self.hsm / "softhsm2.conf"

    @property
    def pin_file(self) -> Path:
        return self.hsm / "user.pin"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def config(self) -> Path:
        return self.root / "paywarden.toml"

    @property
    def db(self) -> Path:
        return self.root / "paywarden.db"

    def env(self) -> dict[str, str]:
        """The environment of the demo's child processes."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
        return {**env, "SOFTHSM2_CONF": str(self.softhsm_conf), "PKCS11_MODULE": self.module}

    def channel(self, addr: str, role: str, principal: str) -> grpc.Channel:
        """A mutual-TLS channel to the demo's signer as ``role`` ``principal``."""
        stem = self.pki / f"{role}-{principal}"
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.pki / "ca.crt").read_bytes(),
            private_key=stem.with_suffix(".key").read_bytes(),
            certificate_chain=stem.with_suffix(".crt").read_bytes(),
        )
        # The signer is on loopback: no proxy the environment names (grpc_proxy,
        # https_proxy, http_proxy) may stand between.
        options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.enable_http_proxy", 0)]
        return grpc.secure_channel(addr, creds, options=options)


def provision(root: Path, module: str = DEFAULT_MODULE) -> Workspace:
    """A token with the payment and audit keys, the PKI, the pack and the config in
    ``root`` (which exists and is empty), on the SoftHSM2 library ``module``.

    ``PKCS11_MODULE`` in the environment is ignored on purpose: it may name a real HSM,
    and the demo initialises a token (a module that is not SoftHSM2 is refused)."""
    if not Path(module).is_file():
        raise DemoError(
            f"no PKCS#11 module at {module}: install SoftHSM2 (apt-get install softhsm2; "
            "./scripts/install.sh does it) or name its library with --module"
        )
    ws = Workspace(root, module)
    _check_paths(ws)
    _token(ws)
    _pki(ws)
    policy = root / "policy"
    policy.mkdir(mode=0o700)
    (policy / "demo.toml").write_text(STORY_PACK, encoding="utf-8")
    ws.config.write_text(_config_text(ws), encoding="utf-8")
    return ws


def _check_paths(ws: Workspace) -> None:
    """Refuses a directory whose path the config files cannot spell: the TOML config
    quotes any text (:func:`_toml`), but softhsm2.conf has no quoting at all."""
    where = str(ws.root)
    for text in (where, ws.module):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise DemoError(f"{text!r}: the config cannot name a path that is not UTF-8") from None
    if any(ch in _SOFTHSM_CONF_CUTS or not ch.isprintable() for ch in where):
        raise DemoError(
            f"{where!r}: softhsm2.conf cannot name a path with '#', '=', a line break or "
            "another control character; choose another directory (--keep DIR, TMPDIR)"
        )
    line = _TOKENDIR + str(ws.hsm / "tokens")
    if len(line.encode("utf-8")) >= _SOFTHSM_CONF_LINE:
        raise DemoError(f"{where!r}: the path is too long for softhsm2.conf; choose a shorter one")


def _toml(value: object) -> str:
    """``value`` as a TOML basic string: JSON's escapes are TOML's, but for DEL."""
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def _secret_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_urlsafe(24) + "\n")


def _token(ws: Workspace) -> None:
    tokens = ws.hsm / "tokens"
    tokens.mkdir(parents=True, mode=0o700)
    ws.softhsm_conf.write_text(
        f"{_TOKENDIR}{tokens}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    so_pin = ws.hsm / "so.pin"
    _require_softhsm(ws)
    _secret_file(so_pin)
    _secret_file(ws.pin_file)
    keys = [sys.executable, "-c", _KEYS_MAIN, "--module", ws.module, "--label", TOKEN_LABEL]
    pin = ["--pin-file", str(ws.pin_file)]
    _keys(ws, [*keys, "init-token", "--so-pin-file", str(so_pin), *pin])
    for key in (PAYMENT_KEY, AUDIT_KEY):
        _keys(ws, [*keys, "generate", *pin, "--key", key])


def _require_softhsm(ws: Workspace) -> None:
    """Refuses a module that is not SoftHSM2 before anything initialises a token in it.

    Asked in a child process with the demo's SOFTHSM2_CONF, like every PKCS#11 call of the
    demo (the module reads its configuration once, when it is loaded)."""
    proc = subprocess.run(
        [sys.executable, "-c", _MANUFACTURER_MAIN, ws.module],
        env=ws.env(), cwd=ws.root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise DemoError(f"cannot use the PKCS#11 module {ws.module}: {proc.stderr.strip()}")
    manufacturer = proc.stdout.strip()
    if manufacturer != SOFTHSM_MANUFACTURER:
        raise DemoError(
            f"the PKCS#11 module {ws.module} is made by {manufacturer!r}, not SoftHSM2: the "
            "demo initialises a token and only ever does so in SoftHSM2"
        )


def _keys(ws: Workspace, argv: list[str]) -> None:
    proc = subprocess.run(
        argv, env=ws.env(), cwd=ws.root, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        # paywarden-keys never prints a PIN: its errors are safe to show.
        command = " ".join(argv[7:9])
        raise DemoError(f"paywarden-keys {command} failed: {proc.stderr.strip()}")


def _pki(ws: Workspace) -> None:
    d = str(ws.pki)
    commands = [
        ["init-ca", "--dir", d, "--trust-domain", TRUST_DOMAIN, "--days", "2"],
        ["server", "--dir", d, "--days", "2"],
    ]
    commands += [["issue", "--dir", d, "--role", r, "--id", p] for r, p in CAST]
    for argv in commands:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = pki.main(argv)
        if code != 0:
            raise DemoError(f"paywarden-pki {argv[0]} failed: {out.getvalue().strip()}")


def _config_text(ws: Workspace) -> str:
    """The embedded defaults, but for where things are: ports chosen by the system,
    every file in the demo's directory."""
    return f"""\
# The guided demo's signer (paywarden demo): embedded defaults, files in this directory.
[server]
listen = "127.0.0.1:0"
trust_domain = "{TRUST_DOMAIN}"
tls_cert = {_toml(ws.pki / "server.crt")}
tls_key = {_toml(ws.pki / "server.key")}
client_ca = {_toml(ws.pki / "ca.crt")}

[hsm]
module = {_toml(ws.module)}
token_label = "{TOKEN_LABEL}"
pin_file = {_toml(ws.pin_file)}
softhsm_conf = {_toml(ws.softhsm_conf)}

[store]
path = {_toml(ws.db)}

[metrics]
listen = "127.0.0.1:0"

[policy]
dir = {_toml(ws.root / "policy")}
"""


class Signer:
    """``paywarden serve`` on the workspace's config, in a child process whose output
    is drained (the last lines are kept to explain a failure).

    The child is in a session of its own, so that Ctrl-C reaches the demo alone (which
    stops the signer once, with SIGTERM), and it gets SIGTERM when the demo dies, even
    by SIGKILL (on Linux)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.output: deque[str] = deque(maxlen=60)
        self._serving: queue.Queue[str | None] = queue.Queue()
        serve = ["serve", "--config", str(ws.config)]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_MAIN, str(os.getpid()), *serve],
            cwd=ws.root,
            env=ws.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()
        self.port = 0
        self.metrics_port = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if line.startswith("paywarden: serving on "):
                self._serving.put(line)
        self._serving.put(None)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the signer names its ports and its health Check says SERVING."""
        ends = time.monotonic() + timeout
        try:
            line = self._serving.get(timeout=timeout)
        except queue.Empty:
            line = None
        match = _SERVING.match(line or "")
        if match is None:
            raise DemoError("the signer did not start:\n  " + "\n  ".join(self.output))
        self.port, self.metrics_port = int(match[2]), int(match[3] or 0)
        with self.ws.channel(self.addr, "operator", OPERATOR) as ch:
            watch = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=""),
                timeout=max(1.0, ends - time.monotonic()),
            )
            try:
                for answer in watch:
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as err:
                raise DemoError(f"the signer's health check failed: {err.code().name}") from None
            finally:
                watch.cancel()
        raise DemoError("the signer never reported SERVING")

    def stop(self) -> int:
        """SIGTERM, and the signer's own shutdown (its final audit checkpoint)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=10)
        return self.proc.returncode

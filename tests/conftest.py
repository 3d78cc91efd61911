"""Shared fixtures: a fresh SoftHSM2 token and PKI per run, in a temp directory.

The token and certificates are made with the security team's own scripts
(scripts/keys.py, scripts/pki.py), so the scripts are exercised on every run.
Nothing here touches the user's tokens or data/: SOFTHSM2_CONF points at a
configuration written into the run's temporary directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import grpc
import pytest

# eth-keys (under eth-account, and the x402 SDK's verification) would recover with
# coincurve, i.e. libsecp256k1, which the signer itself uses for the recovery id: its
# pure-Python backend keeps the tests' reference an independent implementation.
os.environ["ECC_BACKEND_CLASS"] = "eth_keys.backends.NativeECCBackend"

from tests.helpers import (
    ROOT,
    Clock,
    Pki,
    Stack,
    TestToken,
    write_config,
)
from tests.support.backends import BACKENDS, POSTGRESQL, Stores, stores_on
from tests.support.clients import Api, Dial
from tests.support.postgres import PgCluster, free_port

AGENTS = ("agent-1", "agent-2")
PLANNERS = ("planner-1", "planner-2")
# agent-1 and planner-1 also hold approver certificates: the same principal id
# under another role, to show that nobody approves its own request or session.
APPROVERS = ("approver-1", "approver-2", "approver-3", "agent-1", "planner-1")
OPERATORS = ("operator-1",)
# Payees that receive the tests' payments (acme-weather is the usual payee).
PAYEES = ("payee-1", "acme-weather")
KEYS = ("payments.v1", "payments.v2", "audit.v1")


def _run_python_checked(args: list[str], env: dict[str, str] | None = None) -> str:
    """``python ARGS`` from the project root; its stdout, or RuntimeError if it fails."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed: {proc.stdout}\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("paywarden-run")


def make_token(base: Path, label: str = "paywarden-test") -> TestToken:
    """A new SoftHSM2 token in ``base`` with random PINs and the test keys."""
    (base / "tokens").mkdir(parents=True)
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {base / 'tokens'}\n"
        "objectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    so_pin, user_pin = base / "so.pin", base / "user.pin"
    for f in (so_pin, user_pin):
        f.write_text(secrets.token_urlsafe(18) + "\n", encoding="utf-8")
        f.chmod(0o600)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    keys = [sys.executable, "scripts/keys.py", "--label", label]
    _run_python_checked(
        [*keys[1:], "init-token", "--so-pin-file", str(so_pin), "--pin-file", str(user_pin)], env
    )
    for key in KEYS:
        _run_python_checked([*keys[1:], "generate", "--pin-file", str(user_pin), "--key", key], env)
    return TestToken(base=base, conf=conf, label=label, so_pin_file=so_pin, pin_file=user_pin)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the run (tests/support/postgres.py), stopped
    and removed at the end whatever the tests did; its log is ``pg_cluster.log_file``."""
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh empty database owned by ``paywarden`` (password in
    ``pg_cluster.password_file``), dropped after the test; a test that stopped the
    cluster leaves it started again."""
    url = pg_cluster.create_database()
    yield url
    if not pg_cluster.running:
        pg_cluster.start()
    pg_cluster.drop_database(url)


@pytest.fixture(scope="session")
def token(run_dir: Path) -> TestToken:
    tok = make_token(run_dir / "hsm")
    # In-process users of the token (servicer-level tests) read this at C_Initialize.
    os.environ["SOFTHSM2_CONF"] = str(tok.conf)
    return tok


def make_pki(base: Path, trust_domain: str = "paywarden.test") -> Pki:
    _run_python_checked(
        ["scripts/pki.py", "init-ca", "--dir", str(base), "--trust-domain", trust_domain]
    )
    _run_python_checked(["scripts/pki.py", "server", "--dir", str(base)])
    for role, ids in (
        ("agent", AGENTS),
        ("planner", PLANNERS),
        ("approver", APPROVERS),
        ("operator", OPERATORS),
        ("payee", PAYEES),
    ):
        for principal in ids:
            _run_python_checked(
                ["scripts/pki.py", "issue", "--dir", str(base), "--role", role, "--id", principal]
            )
    return Pki(base, trust_domain)


@pytest.fixture(scope="session")
def pki(run_dir: Path) -> Pki:
    return make_pki(run_dir / "pki")


@pytest.fixture
def pki_copy(tmp_path: Path, pki: Pki) -> Pki:
    """A copy of the run's PKI (the same CA, so servers on the run's PKI trust it) that
    a test may write in: renew, replace, break."""
    d = tmp_path / "pki-copy"
    shutil.copytree(pki.dir, d)
    return Pki(d, pki.trust_domain)


@pytest.fixture(scope="session")
def rogue_pki(run_dir: Path) -> Pki:
    """Another CA with the same trust domain: its certificates must be refused."""
    return make_pki(run_dir / "rogue-pki")


@pytest.fixture
def config_path(tmp_path: Path, token: TestToken, pki: Pki, stores: Stores) -> Path:
    return write_config(tmp_path, token, pki, stores=stores)


# -- the store backends (tests/support/backends.py) ----------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test of a ``both_backends`` module that builds a store runs once per backend
    (unless it is ``sqlite_only``); one module-scoped parameter, so that the module's
    stack is made once per backend."""
    node = metafunc.definition
    if (
        "store_backend" in metafunc.fixturenames
        and node.get_closest_marker("both_backends") is not None
        and node.get_closest_marker("sqlite_only") is None
    ):
        metafunc.parametrize("store_backend", BACKENDS, indirect=True, scope="module", ids=BACKENDS)


@pytest.fixture(scope="module")
def store_backend(request: pytest.FixtureRequest) -> str:
    """The backend a test's stores are on: its parameter in a ``both_backends`` module,
    else SQLite."""
    backend: str = getattr(request, "param", BACKENDS[0])
    return backend


def _cluster_for(request: pytest.FixtureRequest, backend: str) -> PgCluster | None:
    """The run's PostgreSQL cluster if ``backend`` needs it (started on first need only)."""
    if backend != POSTGRESQL:
        return None
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster


@pytest.fixture
def stores(request: pytest.FixtureRequest, store_backend: str) -> Iterator[Stores]:
    """The test's stores on its backend: ``stores.open(path)``, ``stores.toml(path)``,
    ``write_config(..., stores=stores)``; its stores are closed when the test ends."""
    with stores_on(store_backend, _cluster_for(request, store_backend)) as made:
        yield made


# -- pytest-grpc: its server and channel fixtures, overridden for mutual TLS ----


class MakeStack(Protocol):
    """``make_stack(packs=…, extra=…, timezone=…)``: see the ``make_stack`` fixture."""

    def __call__(
        self, *, packs: dict[str, str] | None = None, extra: str = "", timezone: str = "UTC"
    ) -> Stack: ...


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_backends: the module's tests that build a store run on SQLite and on "
        "PostgreSQL (tests/support/backends.py)",
    )
    config.addinivalue_line(
        "markers", "sqlite_only: in a both_backends module, this test runs on SQLite alone"
    )
    config.addinivalue_line(
        "markers",
        "stack(packs=None, extra='', timezone='UTC'): what the module's in-process stack "
        "is made with (the arguments of make_stack)",
    )


@pytest.fixture(scope="module")
def make_stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    token: TestToken,
    pki: Pki,
    store_backend: str,
) -> Iterator[MakeStack]:
    """A factory of started stacks (config, store, HSM and service for an in-process
    server) on the module's store backend: ``packs`` (file name -> pack TOML), ``extra``
    (config TOML, e.g. groups or assets) and ``timezone`` go into the config. Each is
    stopped when the module ends."""
    from paywarden.signer.api.startup import load_packs, open_hsm
    from paywarden.signer.config_file import load_config
    from paywarden.signer.core.service import SigningService
    from paywarden.signer.store.opening import open_store

    with ExitStack() as started:
        stores = started.enter_context(
            stores_on(store_backend, _cluster_for(request, store_backend))
        )

        def make(
            *, packs: dict[str, str] | None = None, extra: str = "", timezone: str = "UTC"
        ) -> Stack:
            path = write_config(
                tmp_path_factory.mktemp("stack"),
                token,
                pki,
                packs=packs,
                extra=extra,
                timezone=timezone,
                stores=stores,
            )
            cfg = load_config(path, environ={})
            store = open_store(cfg.store)
            started.callback(store.close)
            store.migrate()
            hsm = open_hsm(cfg)
            started.callback(hsm.close)
            clock = Clock()
            service = SigningService(cfg, store, hsm, load_packs(cfg), clock=clock.now)
            return Stack(cfg, store, hsm, service, clock, service.freezes)

        yield make


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, make_stack: MakeStack) -> Stack:
    """The stack the module's in-process server serves (one per module): the defaults,
    or what the module asks for with ``pytestmark = pytest.mark.stack(packs=…, …)``."""
    asked = request.node.get_closest_marker("stack")
    return make_stack(**(asked.kwargs if asked is not None else {}))


@pytest.fixture(scope="module")
def grpc_addr(store_backend: str) -> str:
    """pytest-grpc's, on a free port of its own per store backend: a ``both_backends``
    module's server (pytest-grpc's ``_grpc_server``) is then made afresh for each."""
    return f"localhost:{free_port()}"


@pytest.fixture(scope="module")
def grpc_add_to_server() -> object:
    from paywarden.signer.api.registry import add_servicer

    def add(servicers: tuple[object, ...], server: grpc.Server) -> None:
        add_servicer(server, servicers[0], "paywarden.v1.Signer")
        add_servicer(server, servicers[1], "paywarden.v1.Sessions")
        add_servicer(server, servicers[2], "paywarden.v1.Approvals")
        add_servicer(server, servicers[3], "paywarden.v1.Control")

    return add


@pytest.fixture(scope="module")
def grpc_servicer(stack: object) -> tuple[object, ...]:
    from paywarden.signer.api.authz import Edge
    from paywarden.signer.api.servicers import (
        ApprovalsServicer,
        ControlServicer,
        SessionsServicer,
    )
    from paywarden.signer.api.signer_servicer import SignerServicer
    from paywarden.signer.api.startup import authenticator

    from tests.helpers import Stack

    assert isinstance(stack, Stack)
    auth = authenticator(stack.config)
    auth.check_revocations(stack.service.revocations.check)
    edge = Edge(auth, stack.store, stack.clock.now)
    return (
        SignerServicer(
            stack.service.signing,
            stack.service.keys,
            edge,
            stack.service.receipts,
            stack.service.payments,
        ),
        SessionsServicer(stack.service.sessions, edge),
        ApprovalsServicer(stack.service.approvals, edge),
        ControlServicer(
            stack.service.freezes,
            stack.service.checkpoints,
            edge,
            stack.service.revocations,
            stack.service.explain,
            stack.service.reloads,
            stack.service.mandates,
        ),
    )


@pytest.fixture(scope="module")
def grpc_server(
    _grpc_server: grpc.Server,
    grpc_addr: str,
    grpc_add_to_server: object,
    grpc_servicer: object,
    stack: object,
) -> Iterator[grpc.Server]:
    from paywarden.signer.api.startup import server_credentials

    from tests.helpers import Stack

    assert isinstance(stack, Stack)
    grpc_add_to_server(grpc_servicer, _grpc_server)  # type: ignore[operator]
    _grpc_server.add_secure_port(grpc_addr, server_credentials(stack.config))
    _grpc_server.start()
    yield _grpc_server
    _grpc_server.stop(grace=None)


@pytest.fixture(scope="module")
def grpc_create_channel(grpc_addr: str, grpc_server: grpc.Server, pki: Pki) -> object:
    """``create(role, principal_id)`` dials the in-process server with that identity."""

    def create(role: str, principal: str, ca: Pki | None = None) -> grpc.Channel:
        return pki.channel(grpc_addr, role, principal, client_pki=ca)

    return create


@pytest.fixture(scope="module")
def grpc_channel(grpc_create_channel: object) -> Iterator[grpc.Channel]:
    with grpc_create_channel("agent", "agent-1") as channel:  # type: ignore[operator]
        yield channel


@pytest.fixture(scope="module")
def dial(grpc_create_channel: Dial) -> Iterator[Dial]:
    """Channels by (role, principal) to the module's in-process server, closed at the end."""
    with ExitStack() as channels:
        yield lambda role, who: channels.enter_context(grpc_create_channel(role, who))


@pytest.fixture(scope="module")
def api(dial: Dial) -> Api:
    """Stubs on the module's in-process server, by identity (see tests/support/clients.py)."""
    return Api(dial)

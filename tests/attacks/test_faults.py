"""Fault injection against a real ``paywarden serve``: the HSM or the store goes bad.

Required of every fault (README, "Metrics and health"; signer/errors.py): each ``Sign``
fails closed with ``UNAVAILABLE`` and reason ``HSM_UNAVAILABLE`` or ``STORE_UNAVAILABLE``,
nothing is signed, the standard gRPC health service answers ``NOT_SERVING``, and once
the fault clears the same process serves again, without a restart. Health is followed
with the health service's own ``Watch`` stream (an event, not a sleep), bounded.

Real parts only: the token directory and key objects of a real SoftHSM2 token are
removed under the server; the store sits on a real, small tmpfs that is filled up
(or, where mounting is not allowed, under a real RLIMIT_FSIZE set on the server
process); a real second SQLite connection holds the write lock.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from paywarden.v1 import signer_pb2

from tests.conftest import make_token
from tests.helpers import (
    Pki,
    ServeProcess,
    TestToken,
    reason_of,
    trailing_metadata,
    write_config,
)
from tests.support.cli import paywarden
from tests.support.clients import Api, running_api
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_WAIT = 20.0  # the health watcher looks every 2 s; generous on a busy machine
RPC_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def fault_token(tmp_path_factory: pytest.TempPathFactory) -> TestToken:
    """A token of this module's own: its files are taken away under the server."""
    return make_token(tmp_path_factory.mktemp("faults") / "hsm", label="faults")


# What this module's agent pays, unless a test says otherwise.
fault_intent = partial(
    payment_intent,
    payee="weather-data-inc",
    amount="1.00",
    reference="inv-fault",
    purpose="fault injection",
    expires_in=240,
)


def _fails_closed(
    api: Api, intent: signer_pb2.PaymentIntent, reason: str, timeout: float = 30.0
) -> grpc.RpcError:
    """The documented refusal: UNAVAILABLE with ``reason``, and no signature."""
    with pytest.raises(grpc.RpcError) as err:
        resp = api.sign(intent, timeout=timeout)
        pytest.fail(f"signed during the fault: {resp.status} {resp.jws[:40]}")
    assert (err.value.code(), reason_of(err.value)) == (grpc.StatusCode.UNAVAILABLE, reason), (
        err.value.details()
    )
    return err.value


def _health_becomes(srv: ServeProcess, pki: Pki, want: int) -> None:
    """Follows the standard health service's Watch stream until it reports ``want``."""
    seen = []
    with pki.channel(srv.addr, "operator", "operator-1") as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_WAIT
        )
        try:
            for answer in stream:
                seen.append(answer.status)
                if answer.status == want:
                    stream.cancel()
                    break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    name = health_pb2.HealthCheckResponse.ServingStatus.Name
    assert seen and seen[-1] == want, (
        f"health never said {name(want)} in {HEALTH_WAIT}s: saw {[name(s) for s in seen]}"
    )
    with pki.channel(srv.addr, "operator", "operator-1") as ch:  # and Check agrees
        check = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="paywarden.v1.Signer"), timeout=RPC_TIMEOUT
        )
    assert check.status == want


def _still_the_same_process(srv: ServeProcess, pid: int) -> None:
    assert srv.proc.pid == pid and srv.proc.poll() is None, "the signer restarted or died"


def _signed_in_store(db: Path, nonce: str) -> list[tuple[str, str | None]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT outcome, jws FROM decisions WHERE nonce = ?", (nonce,))
        return [(str(o), j) for o, j in rows]
    finally:
        conn.close()


# -- the HSM ---------------------------------------------------------------------------


def test_token_directory_removed_while_serving_fails_closed_and_recovers(
    tmp_path: Path, fault_token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, fault_token, pki)
    tokens = fault_token.base / "tokens"
    away = fault_token.base / "tokens.away"
    with running_api(config, pki) as (srv, api):
        pid = srv.proc.pid
        session_id = open_session(
            api.planner, "agent-1", "50.00", task="fault injection", ttl=600, timeout=RPC_TIMEOUT
        )
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
        _health_becomes(srv, pki, SERVING)
        shutil.move(tokens, away)
        try:
            refused = [fault_intent(session_id) for _ in range(3)]
            for intent in refused:
                _fails_closed(api, intent, "HSM_UNAVAILABLE")
            _health_becomes(srv, pki, NOT_SERVING)
            _fails_closed(api, fault_intent(session_id), "HSM_UNAVAILABLE")
        finally:
            shutil.move(away, tokens)
        _health_becomes(srv, pki, SERVING)
        _still_the_same_process(srv, pid)
        # a refused request, sent again, is signed exactly once; new ones sign too
        again = api.sign(refused[0], timeout=RPC_TIMEOUT)
        assert api.sign(refused[0], timeout=RPC_TIMEOUT).jws == again.jws
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
    for intent in refused[1:]:
        assert all(jws is None for _, jws in _signed_in_store(tmp_path / "state.db", intent.nonce))


def test_key_objects_vanishing_mid_sign_fail_closed_and_recover(
    tmp_path: Path, fault_token: TestToken, pki: Pki
) -> None:
    """The token stays, its key objects go: the module fails inside C_Sign."""
    config = write_config(tmp_path, fault_token, pki)
    (slot,) = (fault_token.base / "tokens").iterdir()
    keys = [f for f in slot.glob("*.object") if f.name != "token.object"]
    away = fault_token.base / "objects.away"
    away.mkdir(exist_ok=True)
    with running_api(config, pki) as (srv, api):
        pid = srv.proc.pid
        session_id = open_session(
            api.planner, "agent-1", "50.00", task="fault injection", ttl=600, timeout=RPC_TIMEOUT
        )
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
        for f in keys:
            shutil.move(f, away / f.name)
        try:
            first = fault_intent(session_id)
            err = _fails_closed(api, first, "HSM_UNAVAILABLE")
            # decided and recorded before the HSM failed: the answer names the decision
            decision = trailing_metadata(err).get("paywarden-decision-id")
            for _ in range(2):
                _fails_closed(api, fault_intent(session_id), "HSM_UNAVAILABLE")
            _health_becomes(srv, pki, NOT_SERVING)
        finally:
            for f in keys:
                shutil.move(away / f.name, f)
        _health_becomes(srv, pki, SERVING)
        _still_the_same_process(srv, pid)
        done = api.sign(first, timeout=RPC_TIMEOUT)  # the recorded request completes, once
        assert done.jws and done.replayed_result and done.decision_id == decision
        assert api.sign(first, timeout=RPC_TIMEOUT).jws == done.jws
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
    assert _signed_in_store(tmp_path / "state.db", first.nonce) == [("allow", done.jws)]


def test_wrong_pin_at_start_serves_nothing_and_never_shows_the_pin(
    tmp_path: Path, fault_token: TestToken, pki: Pki
) -> None:
    """A rejected PIN is never retried (a real HSM locks the user): the signer stops."""
    config = write_config(tmp_path, fault_token, pki)
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("not-the-pin-" + fault_token.pin[::-1] + "\n", encoding="utf-8")
    wrong.chmod(0o600)
    proc = paywarden(
        "serve",
        "--config",
        config,
        env={**os.environ, "PAYWARDEN_HSM__PIN_FILE": str(wrong)},
        timeout=60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "paywarden: serving on" not in out
    assert "hsm.pin_file" in out and "PIN incorrect" in out
    assert wrong.read_text(encoding="utf-8").strip() not in out
    assert fault_token.pin not in out
    # the token was not locked out: the right PIN serves and signs
    with running_api(config, pki) as (_, api):
        assert api.sign(
            fault_intent(
                open_session(
                    api.planner,
                    "agent-1",
                    "50.00",
                    task="fault injection",
                    ttl=600,
                    timeout=RPC_TIMEOUT,
                )
            ),
            timeout=RPC_TIMEOUT,
        ).jws


# -- the store -------------------------------------------------------------------------


class SmallDisk:
    """A real small filesystem for the store: a tmpfs (root), else RLIMIT_FSIZE.

    ``fill`` leaves no free byte (or caps every file the server writes at its present
    size); ``clear`` gives the space back.
    """

    def __init__(self, mount: Path) -> None:
        self.dir = mount
        self.filler = mount / "filler"
        self.mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        )
        self._pid: int | None = None

    def fill(self, pid: int) -> None:
        if not self.mounted:
            sizes = [p.stat().st_size for p in self.dir.iterdir() if p.is_file()]
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (max(sizes), resource.RLIM_INFINITY))
            self._pid = pid
            return
        with open(self.filler, "wb", buffering=0) as fh:
            for size in (65536, 1):  # then the last bytes of a partial page
                try:
                    while fh.write(b"\0" * size):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC

    def clear(self) -> None:
        if self._pid is not None:
            limit = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            resource.prlimit(self._pid, resource.RLIMIT_FSIZE, limit)
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mount = tmp_path / "small"
    mount.mkdir()
    disk = SmallDisk(mount)
    try:
        yield disk
    finally:
        disk.close()


def test_full_filesystem_fails_closed_health_not_serving_and_recovers(
    tmp_path: Path, token: TestToken, pki: Pki, small_disk: SmallDisk
) -> None:
    config = write_config(tmp_path, token, pki)
    db = small_disk.dir / "state.db"
    with running_api(config, pki, env={"PAYWARDEN_STORE__PATH": str(db)}) as (srv, api):
        pid = srv.proc.pid
        session_id = open_session(
            api.planner, "agent-1", "50.00", task="fault injection", ttl=600, timeout=RPC_TIMEOUT
        )
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
        small_disk.fill(pid)
        try:
            refused = [fault_intent(session_id) for _ in range(3)]
            for intent in refused:
                _fails_closed(api, intent, "STORE_UNAVAILABLE")
            # health must say whether a decision can be committed now (issue 8, item 16)
            _health_becomes(srv, pki, NOT_SERVING)
            _fails_closed(api, fault_intent(session_id), "STORE_UNAVAILABLE")
        finally:
            small_disk.clear()
        _health_becomes(srv, pki, SERVING)
        _still_the_same_process(srv, pid)
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
        for intent in refused:
            assert _signed_in_store(db, intent.nonce) == []
        again = api.sign(refused[0], timeout=RPC_TIMEOUT)  # decided now, for the first time
        assert again.jws and not again.replayed_result


def test_read_only_store_at_start_serves_nothing_and_names_the_store(
    tmp_path: Path, token: TestToken, pki: Pki, small_disk: SmallDisk
) -> None:
    """A store the signer cannot write never serves (a running server's open files
    cannot be made read-only here: the kernel refuses to remount a filesystem with
    writers, and chattr +i spares open descriptors)."""
    if not small_disk.mounted:
        pytest.fail("needs a tmpfs mount (root): the read-only store is a read-only filesystem")
    config = write_config(tmp_path, token, pki)
    env = {"PAYWARDEN_STORE__PATH": str(small_disk.dir / "state.db")}
    with running_api(config, pki, env=env) as (_, api):
        session_id = open_session(
            api.planner, "agent-1", "50.00", task="fault injection", ttl=600, timeout=RPC_TIMEOUT
        )
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk.dir)], check=True)
    try:
        proc = paywarden("serve", "--config", config, env={**os.environ, **env}, timeout=60)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk.dir)], check=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "paywarden: serving on" not in out
    assert "store.path" in out
    # the store is intact and serves again once writable
    with running_api(config, pki, env=env) as (_, api):
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws


def test_locked_database_fails_closed_within_the_deadline_and_decides_nothing(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    """Another process holds the write lock: the caller is told UNAVAILABLE before its
    deadline, and a call that is over is never decided later (issue 8, item 13)."""
    config = write_config(tmp_path, token, pki)
    db = tmp_path / "state.db"
    deadline = 5.0
    with running_api(config, pki) as (srv, api):
        pid = srv.proc.pid
        session_id = open_session(
            api.planner, "agent-1", "50.00", task="fault injection", ttl=600, timeout=RPC_TIMEOUT
        )
        assert api.sign(fault_intent(session_id), timeout=RPC_TIMEOUT).jws
        holder = sqlite3.connect(db, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        try:
            _health_becomes(srv, pki, NOT_SERVING)
            waiting = fault_intent(session_id)
            _fails_closed(api, waiting, "STORE_UNAVAILABLE", timeout=deadline)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        _health_becomes(srv, pki, SERVING)
        _still_the_same_process(srv, pid)
        assert api.sign(
            fault_intent(session_id), timeout=RPC_TIMEOUT
        ).jws  # after anything still queued
        assert _signed_in_store(db, waiting.nonce) == [], "a call that was over got decided"
        again = api.sign(waiting, timeout=RPC_TIMEOUT)
        assert again.jws and not again.replayed_result

"""Attack (fault): the store's filesystem fills up while health says SERVING.

A real ``paywarden serve`` keeps its store on a small tmpfs of its own; the test
fills it with a file. Health must then answer NOT_SERVING (the probe writes, as
a decision would), ``Sign`` must fail closed with UNAVAILABLE, and once the file
is removed both must recover without a restart.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import Pki, TestToken, write_config
from tests.test_killswitch import intent, poll, running

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (the test runs as root, as the fault suite requires)."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"the disk-full fault needs root to mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill(path: Path) -> None:
    chunk = b"\0" * 65536
    with path.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with path.open("ab", buffering=0) as fh:  # the last partial page too
        try:
            while True:
                fh.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_full_disk_turns_health_not_serving_and_sign_fails_closed_until_it_clears(
    tmp_path: Path, token: TestToken, pki: Pki, small_fs: Path
) -> None:
    config = write_config(tmp_path / "cfg", token, pki)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace(str(tmp_path / "cfg" / "state.db"), str(small_fs / "state.db")),
        encoding="utf-8",
    )
    filler = small_fs / "filler"
    with running(config, pki) as api:
        health = health_pb2_grpc.HealthStub(api.channel("operator", "operator-1"))

        def status() -> tuple[int, int]:
            overall = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            signer = health.Check(
                health_pb2.HealthCheckRequest(service="paywarden.v1.Signer"), timeout=10
            )
            return int(overall.status), int(signer.status)

        sid = api.open_session("agent-1", budget="100.00")
        assert api.attempt("agent-1", intent(sid)).signed
        assert status() == (SERVING, SERVING)

        _fill(filler)
        try:
            poll(status, lambda s: s == (NOT_SERVING, NOT_SERVING), "health on a full disk", 30)
            for _ in range(3):
                down = api.attempt("agent-1", intent(sid))
                assert (down.code, down.reason) == ("UNAVAILABLE", "STORE_UNAVAILABLE"), down
                assert not down.jws
        finally:
            filler.unlink()
        poll(status, lambda s: s == (SERVING, SERVING), "health after space was freed", 30)
        assert api.attempt("agent-1", intent(sid)).signed
        assert api.srv.proc.poll() is None  # the same process throughout

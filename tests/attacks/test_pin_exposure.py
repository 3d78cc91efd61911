"""Attack: read the HSM PIN of a running signer from /proc/<pid>/environ.

``hsm.pin_env`` was said to take the PIN "out of the environment"; os.environ.pop
changes Python's mapping only, and the kernel keeps the block the process was
started with, which its user and root can read for as long as it runs. The
README now says so, start-up warns, and ``hsm.pin_fd`` (a descriptor the parent
opened: read once, then closed) leaves no trace. Each test reads /proc of a
real ``paywarden serve``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers import Pki, TestToken, serve, write_config

PIN_VARIABLE = "PAYWARDEN_TEST_HSM_PIN"


def _config(tmp_path: Path, token: TestToken, pki: Pki, source: str) -> Path:
    path = write_config(tmp_path, token, pki)
    text = path.read_text(encoding="utf-8")
    line = f'pin_file = "{token.pin_file}"'
    assert line in text
    path.write_text(text.replace(line, source), encoding="utf-8")
    return path


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _descriptors(pid: int) -> set[str]:
    """What each open descriptor of ``pid`` is (one may close while we look)."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.add(os.readlink(fd))
        except FileNotFoundError:
            continue
    return out


def test_pin_env_stays_in_proc_environ_and_start_up_says_so(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = _config(tmp_path, token, pki, f'pin_env = "{PIN_VARIABLE}"')
    with serve(config, env={PIN_VARIABLE: token.pin}) as srv:
        assert "hsm available: True" in srv.output[-1]
        # what the README says: popping the variable does not hide it
        assert f"{PIN_VARIABLE}={token.pin}".encode() in _proc(srv.proc.pid, "environ")
        started = "".join(srv.output)
    assert "hsm.pin_env" in started and f"/proc/{srv.proc.pid}/environ" in started
    assert "prefer hsm.pin_file or hsm.pin_fd" in started
    assert token.pin not in started


def test_pin_fd_leaves_no_trace_in_proc(tmp_path: Path, token: TestToken, pki: Pki) -> None:
    read, write = os.pipe()
    os.write(write, token.pin.encode() + b"\n")
    os.close(write)
    config = _config(tmp_path, token, pki, f"pin_fd = {read}")
    try:
        with serve(config, pass_fds=(read,)) as srv:
            assert "hsm available: True" in srv.output[-1]
            pid = srv.proc.pid
            for name in ("environ", "cmdline"):
                assert token.pin.encode() not in _proc(pid, name), name
            # read once, then closed: no descriptor of the process is that pipe now
            pipe = os.readlink(f"/proc/self/fd/{read}")
            assert pipe.startswith("pipe:")
            assert pipe not in _descriptors(pid)
            started = "".join(srv.output)
    finally:
        os.close(read)
    assert "pin_env" not in started and token.pin not in started

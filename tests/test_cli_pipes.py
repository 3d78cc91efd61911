"""What the command lines print when things do not go their way.

Every console entry point of pyproject.toml, run as its installed launcher, exits quietly
(status 141, nothing on stderr) when its stdout is a pipe whose reader has gone, as in
``paywarden audit export | head -1``: either before it wrote anything, or after one line of
an output larger than the pipe can hold.

``scripts/demo.py``, run against a real signer with the development pack
(examples/policy/dev.toml), prints a refusal as one line (status, message with its reason
code, decision id), never a traceback, and exits 1.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from paywarden.signer.cli.pipes import BROKEN_PIPE_EXIT, quiet_on_broken_pipe
from paywarden.signer.store.records import SessionRecord
from paywarden.signer.store.sqlite import SqliteStore

from tests.helpers import ROOT, Pki, ServeProcess, TestToken, serve, write_config
from tests.support.cli import ctl, paywarden, pki_script, settings_free_env
from tests.support.clients import api_at
from tests.support.postgres import free_port
from tests.support.sessions import open_session

SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
    "project"
]["scripts"]
BIN = Path(sys.executable).parent
SESSIONS = 1500
OPENED = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}
TIMEOUT = 120


@dataclass(frozen=True)
class BigStore:
    """A SQLite store with many sessions (and as many audit records), and a config naming it."""

    db: Path
    config: Path


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> BigStore:
    d = tmp_path_factory.mktemp("big-store")
    store = SqliteStore(d / "state.db")
    store.migrate()
    for i in range(SESSIONS):
        session = SessionRecord(
            id=f"ses_{i:043d}", agent_id="agent-1", planner_id="planner-1",
            task_digest="0" * 64, created_at=1, expires_at=2**40, closed_at=None,
            budgets_minor={"USD": 1000}, spent_minor={"USD": 0},
        )  # fmt: skip
        store.create_session(session, {"USD": 2}, OPENED)
    store.close()
    config = d / "paywarden.toml"
    config.write_text('[store]\npath = "state.db"\n', encoding="utf-8")
    return BigStore(d / "state.db", config)


def _pipe_capacity() -> int:
    """How many bytes a new pipe holds before a writer blocks (64 KiB unless tuned)."""
    r, w = os.pipe()
    try:
        return fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    finally:
        os.close(r)
        os.close(w)


def _launch(name: str, *args: str | Path) -> list[str]:
    """The command line of installed console script ``name`` (its launcher in the venv)."""
    launcher = BIN / name
    assert launcher.is_file(), f"{launcher} is not installed: run scripts/install.sh"
    return [str(launcher), *map(str, args)]


def _output_args(name: str, tmp: Path, big: BigStore, token: TestToken) -> list[str | Path]:
    """Arguments under which console script ``name`` prints something on stdout."""
    cases: dict[str, Callable[[], list[str | Path]]] = {
        "paywarden": lambda: ["store-info", "--config", big.config],
        "paywarden-keys": lambda: ["--label", token.label, "list", "--pin-file", token.pin_file],
        "paywarden-pki": lambda: ["init-ca", "--dir", tmp / "pki", "--trust-domain", "p.test"],
    }
    assert set(cases) == set(SCRIPTS), "give every console entry point a case here"
    return cases[name]()


def _into_closed_pipe(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Runs ``argv`` with a stdout whose read end was closed before it started."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, stdout=write_end, stderr=subprocess.PIPE, text=True,
            timeout=TIMEOUT, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


def _buffering(unbuffered: bool, env: dict[str, str]) -> dict[str, str]:
    """``env`` with Python's stdout unbuffered or block-buffered (as users run it)."""
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONUNBUFFERED": "1"} if unbuffered else env


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_an_entry_point_whose_reader_has_gone_exits_141_without_a_traceback(
    name: str, unbuffered: bool, tmp_path: Path, big_store: BigStore, token: TestToken
) -> None:
    """The read end is closed before the command starts: its first write (or the flush at
    exit) meets a pipe without a reader, whatever the size of its output."""
    env = _buffering(unbuffered, settings_free_env({"SOFTHSM2_CONF": str(token.conf)}))
    argv = _launch(name, *_output_args(name, tmp_path, big_store, token))
    code, stderr = _into_closed_pipe(argv, tmp_path, env)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert stderr == ""
    assert code == BROKEN_PIPE_EXIT == 141


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_into_a_closed_pipe_says_nothing_on_stderr(
    name: str, unbuffered: bool, tmp_path: Path
) -> None:
    """argparse's ``--help`` leaves through SystemExit, past the wrapper's own flush."""
    code, stderr = _into_closed_pipe(
        _launch(name, "--help"), tmp_path, _buffering(unbuffered, settings_free_env())
    )
    assert stderr == ""
    assert code in (0, BROKEN_PIPE_EXIT)  # argparse's own status, or the pipe's


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["audit", "export", "--db", "{db}"], id="audit-export"),
        pytest.param(["store-export", "--config", "{config}", "--table", "sessions"], id="store"),
    ],
)
def test_paywarden_piped_into_head_stops_quietly_after_the_first_line(
    args: list[str], tmp_path: Path, big_store: BigStore
) -> None:
    """``paywarden … | head -1``: one line read, then the reader goes while the command
    still has far more to write than the pipe holds."""
    argv = _launch("paywarden", *(a.format(db=big_store.db, config=big_store.config) for a in args))
    env = settings_free_env()
    whole = subprocess.run(argv, env=env, capture_output=True, timeout=TIMEOUT, check=False)
    assert whole.returncode == 0, whole.stderr
    assert len(whole.stdout) > 4 * _pipe_capacity()  # so the writer must meet the closed pipe
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=TIMEOUT)
    assert first == whole.stdout.splitlines(keepends=True)[0]
    errors = stderr.read_text(encoding="utf-8")
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert errors == ""
    assert code == BROKEN_PIPE_EXIT


def test_a_signer_whose_stdout_reader_has_gone_still_stops_gracefully(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    """``paywarden serve | head -1``: the readiness line read, the pipe closed, SIGTERM. The
    "stopping" line meets the closed pipe, and the graceful stop still runs: its final
    checkpoint seals every record of the audit log."""
    config = write_config(tmp_path, token, pki)
    errors = tmp_path / "stderr.txt"
    with errors.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            _launch("paywarden", "serve", "--config", config), env=settings_free_env(),
            stdout=subprocess.PIPE, stderr=err, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready.startswith("paywarden: serving on "), ready
            with api_at(ready.split()[3], pki) as api:
                open_session(api.planner, "agent-1", "10.00", timeout=30)
            proc.stdout.close()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logged = errors.read_text(encoding="utf-8")
    assert "Traceback" not in logged and "BrokenPipeError" not in logged, logged
    assert code == BROKEN_PIPE_EXIT
    records = _table(config, "audit_log")
    sealed = [int(row["size"]) for row in _table(config, "audit_checkpoints")]
    assert len(records) >= 2  # the start and the session at least
    assert max(sealed, default=0) == len(records)


def _table(config: Path, table: str) -> list[dict[str, Any]]:
    """The rows of ``table`` of the store ``config`` names (``paywarden store-export``)."""
    proc = paywarden("store-export", "--config", config, "--table", table, env=settings_free_env())
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_the_wrapper_passes_other_answers_through_and_needs_no_real_stdout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit codes and other errors are the command's own; a stdout without a file
    descriptor (an in-memory one) is never taken for a closed pipe."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)

    @quiet_on_broken_pipe
    def answers(code: int, *, fail: BaseException | None = None) -> int:
        if fail is not None:
            raise fail
        print("an answer")
        return code

    assert answers(3) == 3
    assert out.getvalue() == "an answer\n"
    with pytest.raises(BrokenPipeError):  # not stdout's: the command failed
        answers(0, fail=BrokenPipeError())
    with pytest.raises(PermissionError):
        answers(0, fail=PermissionError("not a pipe"))
    with pytest.raises(SystemExit) as usage:
        answers(0, fail=SystemExit(2))
    assert usage.value.code == 2


def _closed_pipe() -> IO[str]:
    """A real pipe whose reader has gone, as a text stream (block-buffered)."""
    read, write = os.pipe()
    os.close(read)
    return open(write, "w", closefd=True)


def test_only_stdouts_broken_pipe_is_quieted_and_a_status_of_its_own_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @quiet_on_broken_pipe
    def prints(code: int) -> int:
        print("x" * 100)  # buffered: the pipe's error comes at the wrapper's flush
        return code

    @quiet_on_broken_pipe
    def floods() -> int:
        print("x" * 1_000_000)  # past the buffer: the error comes inside the command
        return 0

    streams = [_closed_pipe() for _ in range(3)]
    other_read, other_write = os.pipe()
    os.close(other_read)

    @quiet_on_broken_pipe
    def writes_elsewhere() -> int:
        print("an answer")
        os.write(other_write, b"x")  # e.g. an --out FIFO whose reader has gone
        return 0

    try:
        monkeypatch.setattr(sys, "stdout", streams[0])
        assert prints(0) == BROKEN_PIPE_EXIT
        monkeypatch.setattr(sys, "stdout", streams[1])
        assert floods() == BROKEN_PIPE_EXIT
        # A command whose own answer is a failure keeps its status.
        monkeypatch.setattr(sys, "stdout", streams[2])
        assert prints(1) == 1
        # Another pipe's reader gone while stdout's is there: the command failed, loudly.
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        with pytest.raises(BrokenPipeError):
            writes_elsewhere()
    finally:
        os.close(other_write)
        for stream in streams:
            stream.close()  # stdout went to /dev/null: nothing is left to fail


# -- scripts/demo.py: a refusal in one line ---------------------------------------------------


@dataclass(frozen=True)
class DemoSigner:
    """A serving signer with the development pack, and a PKI holding the development
    planner's and agent's certificates (the run's CA, so ``operator-1`` works too)."""

    srv: ServeProcess
    pki: Pki
    db: Path


@pytest.fixture(scope="module")
def demo_signer(
    tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki
) -> Iterator[DemoSigner]:
    d = tmp_path_factory.mktemp("demo-signer")
    dev_pki = Pki(d / "pki", pki.trust_domain)
    shutil.copytree(pki.dir, dev_pki.dir)
    for role, principal in (("planner", "dev-planner"), ("agent", "dev-agent")):
        issued = pki_script("issue", "--dir", dev_pki.dir, "--role", role, "--id", principal)
        assert issued.returncode == 0, issued.stderr
    pack = (ROOT / "examples" / "policy" / "dev.toml").read_text(encoding="utf-8")
    config = write_config(d, token, dev_pki, packs={"dev.toml": pack})
    with serve(config) as srv:
        yield DemoSigner(srv, dev_pki, d / "state.db")


def _demo(addr: str, pki_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``scripts/demo.py --addr ADDR --pki PKI_DIR ARGS`` from the project root."""
    return subprocess.run(
        [sys.executable, "scripts/demo.py", "--addr", addr, "--pki", str(pki_dir), *args],
        cwd=ROOT, env=settings_free_env(), capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )  # fmt: skip


def _one_line(stderr: str) -> str:
    """The only line of ``stderr``, which names no traceback."""
    assert "Traceback" not in stderr, stderr
    (line,) = stderr.splitlines()
    return line


def test_the_demo_pays_and_verifies_the_payment(demo_signer: DemoSigner) -> None:
    proc = _demo(demo_signer.srv.addr, demo_signer.pki.dir)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    session = re.search(r"^session (ses_\S+) for dev-agent, budget USD 200\.00$", proc.stdout, re.M)
    decision = re.search(r"^decision (dec_\S+), key payments\.v1$", proc.stdout, re.M)
    assert session is not None and decision is not None, proc.stdout
    claims = json.loads(proc.stdout.split("verified claims:", 1)[1])
    assert (claims["jti"], claims["sid"]) == (decision[1], session[1])
    assert (claims["payee"], claims["amount"], claims["asset"]) == ("api.example", "0.25", "USD")


def test_the_demo_stops_at_a_hold_for_approval(demo_signer: DemoSigner) -> None:
    proc = _demo(demo_signer.srv.addr, demo_signer.pki.dir, "--amount", "60")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert re.search(r"^held for human approval: apr_\S+$", proc.stdout, re.M), proc.stdout
    assert "decision" not in proc.stdout


def test_a_refused_payment_is_one_line_naming_status_reason_and_decision(
    demo_signer: DemoSigner,
) -> None:
    """150.00 is over the development pack's ``max_per_payment`` (100.00)."""
    proc = _demo(demo_signer.srv.addr, demo_signer.pki.dir, "--amount", "150.00")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _one_line(proc.stderr)
    found = re.fullmatch(
        r"demo\.py: payment refused: PERMISSION_DENIED: \[([A-Z0-9_]+)\] .+;"
        r" decision (dec_\S+); audit seq \d+",
        line,
    )
    assert found is not None, line
    reason, decision_id = found[1], found[2]
    assert "JWS" not in proc.stdout and "verified claims" not in proc.stdout
    # The decision id is the signer's: its audit record says the same refusal.
    shown = paywarden("audit", "show", decision_id, "--db", demo_signer.db, env=settings_free_env())
    assert shown.returncode == 0, shown.stderr
    assert f"DENIED by rule max_per_payment: {reason} " in shown.stdout, shown.stdout


def test_a_frozen_agent_s_refusal_is_one_line_too(demo_signer: DemoSigner) -> None:
    """The kill switch of the quickstart (step 5): the session opens, the payment does not."""
    srv, dev_pki = demo_signer.srv, demo_signer.pki
    frozen = ctl(srv, dev_pki, "freeze", "agent", "dev-agent", "--reason", "test")
    assert frozen.returncode == 0, frozen.stderr
    try:
        proc = _demo(srv.addr, dev_pki.dir)
    finally:
        thawed = ctl(srv, dev_pki, "unfreeze", "agent", "dev-agent", "--reason", "test done")
        assert thawed.returncode == 0, thawed.stderr
    assert proc.returncode == 1
    assert re.match(r"session ses_\S+ for dev-agent", proc.stdout), proc.stdout
    assert _one_line(proc.stderr).startswith(
        "demo.py: payment refused: FAILED_PRECONDITION: [FROZEN] "
    ), proc.stderr


def test_no_signer_to_answer_or_no_certificate_is_one_line(
    tmp_path: Path, demo_signer: DemoSigner
) -> None:
    proc = _demo(f"127.0.0.1:{free_port()}", demo_signer.pki.dir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert _one_line(proc.stderr).startswith("demo.py: UNAVAILABLE: "), proc.stderr
    missing = _demo(f"127.0.0.1:{free_port()}", tmp_path)
    assert missing.returncode == 2 and missing.stdout == ""
    assert _one_line(missing.stderr).startswith("demo.py: cannot read "), missing.stderr

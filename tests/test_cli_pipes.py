"""The command lines' output where it goes in practice.

Every console entry point of pyproject.toml, run as its installed launcher, exits quietly
(status 141, nothing on stderr) when its stdout is a pipe whose reader has gone, as in
``paywarden audit export | head -1``: either before it wrote anything, or after one line of
an output larger than the pipe can hold.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from paywarden.signer.cli.pipes import BROKEN_PIPE_EXIT, quiet_on_broken_pipe
from paywarden.signer.store.records import SessionRecord
from paywarden.signer.store.sqlite import SqliteStore

from tests.helpers import ROOT, TestToken
from tests.support.cli import settings_free_env

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


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_an_entry_point_whose_reader_has_gone_exits_141_without_a_traceback(
    name: str, tmp_path: Path, big_store: BigStore, token: TestToken
) -> None:
    """The read end is closed before the command starts: its first write (or the flush at
    exit) meets a pipe without a reader, whatever the size of its output."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            _launch(name, *_output_args(name, tmp_path, big_store, token)),
            cwd=tmp_path, env=settings_free_env({"SOFTHSM2_CONF": str(token.conf)}),
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.stderr == ""
    assert proc.returncode == BROKEN_PIPE_EXIT == 141


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


def test_the_wrapper_passes_other_answers_through_and_needs_no_real_stdout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exit codes and other errors are the command's own; a stdout without a file
    descriptor (an in-memory one) is left alone on a broken pipe."""
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
    assert answers(0, fail=BrokenPipeError()) == BROKEN_PIPE_EXIT
    with pytest.raises(PermissionError):
        answers(0, fail=PermissionError("not a pipe"))

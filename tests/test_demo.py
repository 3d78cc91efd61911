"""``paywarden demo``: the installed command plays its whole story on a throwaway signer.

The demo runs as a user runs it: the console script of the environment running the
tests, in a directory of its own, with nothing of the repository's ``data/`` and no
``PAYWARDEN_*`` setting. Its ``--json`` report is checked step by step, its signed
payments against its JWKS with an independent JOSE library (joserfc), and its seed
metrics against the answers the report itself lists. ``TMPDIR`` points into the test's
directory, so that what the demo leaves behind is visible.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.signer.cli import demo_setup

from tests.support.cli import settings_free_env

PAYWARDEN = Path(sys.executable).parent / "paywarden"
# A PKCS#11 library that is not SoftHSM2 (the p11-kit proxy module, manufacturer "PKCS#11 Kit").
P11_KIT = Path("/usr/lib/x86_64-linux-gnu/libp11-kit.so.0")
PROXY_VARIABLES = ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY")
REFUSED = ("PERMISSION_DENIED", "FAILED_PRECONDITION")


@dataclass(frozen=True)
class DemoRun:
    code: int
    stdout: str
    stderr: str
    tmpdir: Path

    @property
    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.stdout)
        return report

    def step(self, key: str) -> dict[str, Any]:
        (found,) = [s for s in self.report["steps"] if s["step"] == key]
        return found


def run_demo(base: Path, *args: str, env: dict[str, str] | None = None) -> DemoRun:
    """``paywarden demo --json ARGS`` from ``base``, with TMPDIR in ``base/tmp`` (and
    ``env`` added to the environment)."""
    tmpdir = base / "tmp"
    tmpdir.mkdir(parents=True)
    environ = settings_free_env({"TMPDIR": str(tmpdir), "NO_COLOR": "1", **(env or {})})
    for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
        environ.pop(name, None)  # a proxy variable given in ``env`` applies to loopback too
    proc = subprocess.run(
        [str(PAYWARDEN), "demo", "--json", *args],
        cwd=base,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return DemoRun(proc.returncode, proc.stdout, proc.stderr, tmpdir)


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """The demo as a user with settings for other tools runs it: PKCS11_MODULE names a
    library that does not exist (it could be a real HSM's), and every proxy variable a
    port of 127.0.0.1 where nothing listens."""
    base = tmp_path_factory.mktemp("demo")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
    env = {name: proxy for name in PROXY_VARIABLES}
    yield run_demo(base, env={**env, "PKCS11_MODULE": str(base / "real-hsm-pkcs11.so")})


def sign_answers(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Sign answer the report lists, in story order."""
    found: list[dict[str, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if "status" in value:
                found.append(value)
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for step in report["steps"]:
        walk(step["observed"])
    return found


def test_the_demo_is_an_installed_console_script() -> None:
    assert PAYWARDEN.is_file(), PAYWARDEN


def test_every_step_has_its_expected_outcome(played: DemoRun) -> None:
    assert played.code == 0, played.stderr
    report = played.report
    assert report["ok"] is True
    assert [s["step"] for s in report["steps"]] == ["a", "b", "c", "d", "e", "f"]
    assert [s["problems"] for s in report["steps"] if not s["ok"]] == []


def test_the_environment_does_not_choose_the_hsm_module(played: DemoRun) -> None:
    assert played.code == 0, played.stderr
    assert played.report["module"] == demo_setup.DEFAULT_MODULE
    assert "real-hsm-pkcs11.so" not in played.stdout + played.stderr


def test_proxy_variables_do_not_divert_the_demo_from_loopback(played: DemoRun) -> None:
    """The story's gRPC calls and the metrics scrape reached the signer, not the proxy."""
    assert played.code == 0, played.stderr
    assert played.step("a")["observed"]["sign"]["status"] == "SIGNED"
    assert played.step("f")["observed"]["metrics"]["source"].startswith("metrics endpoint ")


def test_a_purchase_within_budget_is_signed_and_verifies_independently(
    played: DemoRun,
) -> None:
    a = played.step("a")["observed"]
    assert a["sign"]["status"] == "SIGNED"
    keys = KeySet.import_key_set(played.report["jwks"])
    token = jws.deserialize_compact(a["sign"]["jws"], keys)
    claims = json.loads(token.payload)
    assert (claims["payee"], claims["amount"], claims["asset"]) == ("api.example", "12.50", "USD")
    assert claims["sub"] == demo_setup.SHOP_AGENT
    assert claims["jti"] == a["sign"]["decision_id"] == a["claims"]["jti"]


def test_the_injected_payments_are_denied_with_reason_and_trace(played: DemoRun) -> None:
    b = played.step("b")["observed"]
    assert b["ticket"]["status"] == "SIGNED"
    attacker, confusable = b["attacker"], b["confusable"]
    assert (attacker["status"], attacker["reason"]) == ("PERMISSION_DENIED", "PAYEE_NOT_ALLOWED")
    assert (confusable["status"], confusable["reason"]) == ("PERMISSION_DENIED", "PAYEE_CONFUSABLE")
    for denied in (attacker, confusable):
        assert "jws" not in denied
        assert denied["trace"][0].startswith(f"Decision {denied['decision_id']} ")
    assert "DENIED by rule payee_allowlist: PAYEE_NOT_ALLOWED" in "\n".join(attacker["trace"])
    said = "\n".join(confusable["trace"])
    assert "DENIED by rule payee_allowlist: PAYEE_CONFUSABLE" in said
    assert "looks like the allowed payee 'rail.example'" in said
    # the agent's words are recorded, marked as untrusted
    assert "UNTRUSTED" in attacker["trace"][-1] and "attacker-wallet" in attacker["trace"][-1]


def test_a_large_payment_waits_for_the_approver_then_is_signed(played: DemoRun) -> None:
    c = played.step("c")["observed"]
    held, collected = c["held"], c["collected"]
    assert held["status"] == "PENDING_APPROVAL" and held["approval_id"].startswith("apr_")
    assert "jws" not in held
    assert c["approval_state"] == "approved"
    assert collected["status"] == "SIGNED"
    assert collected["decision_id"] == held["decision_id"]
    claims = json.loads(
        jws.deserialize_compact(
            collected["jws"], KeySet.import_key_set(played.report["jwks"])
        ).payload
    )
    assert (claims["payee"], claims["amount"]) == (demo_setup.WEATHER, "240.00")


def test_rejections_trip_the_breaker_and_the_kill_switch_stops_signing(played: DemoRun) -> None:
    d = played.step("d")["observed"]
    assert [r["status"] for r in d["rejections"]] == ["PERMISSION_DENIED"] * 2
    assert d["breaker_freeze"] == "circuit breaker: 4 rejections in 3600 s (more than 3)"
    assert (d["blocked"]["status"], d["blocked"]["reason"]) == ("FAILED_PRECONDITION", "FROZEN")
    e = played.step("e")["observed"]
    assert e["freeze_created"] is True
    assert (e["blocked"]["status"], e["blocked"]["reason"]) == ("FAILED_PRECONDITION", "FROZEN")
    assert "jws" not in d["blocked"] and "jws" not in e["blocked"]


def test_the_audit_log_verifies_and_the_metrics_agree_with_the_story(played: DemoRun) -> None:
    f = played.step("f")["observed"]
    assert f["audit_verify"]["exit"] == 0
    assert f["audit_verify"]["output"].startswith("audit log OK: ")
    assert "0 records after the last checkpoint" in f["audit_verify"]["output"]
    metrics = f["metrics"]
    assert metrics["source"].startswith("metrics endpoint 127.0.0.1:")
    # the figures, from the answers the report lists (not from the demo's own tally)
    answers = sign_answers(played.report)
    refused = [a for a in answers if a["status"] in REFUSED]
    assert len(answers) == 10 and len(refused) == 6
    assert metrics["rejection_rate"] == pytest.approx(len(refused) / len(answers))
    signed = {"12.50", "42.00", "240.00"}  # one session each: (a), (b), (c)
    average = sum(float(x) for x in signed) / len(signed)
    assert metrics["average_spend_per_task"] == {"USD": pytest.approx(average)}
    assert metrics["override_frequency"] == 1.0  # one held payment, approved
    assert metrics["time_to_intervention_seconds"] == 0.0  # nothing signed after a freeze
    # shop-agent paid api.example and weather-data-inc today; travel-agent's last decision
    # (the breaker's) counted coin-mixer.example beside rail.example
    assert metrics["recipient_diversity"] == {
        demo_setup.SHOP_AGENT: {"session": 1, "day": 2},
        demo_setup.TRAVEL_AGENT: {"session": 2, "day": 2},
    }
    assert f["story"]["sign_calls"] == len(answers)


def test_the_demo_leaves_nothing_behind(played: DemoRun) -> None:
    report = played.report
    workdir = Path(report["workdir"])
    assert report["kept"] is False
    assert workdir.parent == played.tmpdir
    assert not workdir.exists()
    assert list(played.tmpdir.iterdir()) == []


def test_kept_files_hold_pins_the_output_never_shows(tmp_path: Path) -> None:
    """In a directory whose name holds what TOML must escape (and softhsm2.conf can hold)."""
    keep = tmp_path / 'kept "demo" \\ dir'
    run = run_demo(tmp_path, "--keep", str(keep))
    assert run.code == 0, run.stderr
    assert run.report["workdir"] == str(keep) and run.report["kept"] is True
    pins = [
        (keep / "hsm" / name).read_text(encoding="ascii").strip() for name in ("so.pin", "user.pin")
    ]
    assert all(len(pin) >= 24 for pin in pins)
    for pin in pins:
        assert pin not in run.stdout and pin not in run.stderr
    for name in ("so.pin", "user.pin"):
        assert (keep / "hsm" / name).stat().st_mode & 0o077 == 0
    assert (keep / "paywarden.db").is_file() and (keep / "audit.pem").is_file()
    # the token is the demo's own: its SoftHSM2 configuration points inside the directory
    conf = (keep / "hsm" / "softhsm2.conf").read_text(encoding="utf-8")
    assert f"directories.tokendir = {keep / 'hsm' / 'tokens'}" in conf
    assert list(run.tmpdir.iterdir()) == []


@pytest.mark.parametrize("name", ["line\nbreak", "hash#mark", "equals=sign"])
def test_a_directory_softhsm2_conf_cannot_name_is_refused(tmp_path: Path, name: str) -> None:
    keep = tmp_path / name
    run = run_demo(tmp_path, "--keep", str(keep))
    assert run.code == 2, run.stderr
    assert "softhsm2.conf cannot name a path with '#', '='" in run.stderr
    assert list(keep.iterdir()) == []  # refused before anything is written
    assert list(run.tmpdir.iterdir()) == []


@pytest.mark.parametrize(
    "text", ['a "quoted" name', "back\\slash\\", "tab\tdel\x7fbell\x07", "crème brûlée ☕ 🦆"]
)
def test_config_strings_are_toml_basic_strings(text: str) -> None:
    assert tomllib.loads(f"value = {demo_setup._toml(text)}") == {"value": text}


def test_a_demo_that_cannot_set_up_fails_and_removes_its_directory(tmp_path: Path) -> None:
    run = run_demo(tmp_path, "--module", str(tmp_path / "no-such-module.so"))
    assert run.code == 2
    assert "no PKCS#11 module at" in run.stderr
    assert run.report["ok"] is False
    assert list(run.tmpdir.iterdir()) == []


@pytest.mark.skipif(not P11_KIT.is_file(), reason="p11-kit's proxy module is not installed")
def test_a_module_that_is_not_softhsm_is_refused_before_any_token_is_made(
    tmp_path: Path,
) -> None:
    run = run_demo(tmp_path, "--module", str(P11_KIT))
    assert run.code == 2, run.stderr
    assert f"the PKCS#11 module {P11_KIT} is made by 'PKCS#11 Kit', not SoftHSM2" in run.stderr
    assert run.report["ok"] is False and run.report["module"] == str(P11_KIT)
    assert list(run.tmpdir.iterdir()) == []


def test_a_step_with_another_outcome_fails_the_demo_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pack's breaker set out of reach: step (d) does not go as the story says, the
    others do, and the demo exits 1 naming (d)."""
    from paywarden.signer.cli.commands import main

    lenient = demo_setup.STORY_PACK.replace(
        f"max_rejections = {demo_setup.MAX_REJECTIONS}", "max_rejections = 50"
    )
    assert lenient != demo_setup.STORY_PACK
    monkeypatch.setattr(demo_setup, "STORY_PACK", lenient)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("NO_COLOR", "1")
    code = main(["demo", "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    report = json.loads(out)
    assert [s["step"] for s in report["steps"] if not s["ok"]] == ["d"]
    assert "paywarden: demo step (d) Rejections trip the circuit breaker: not as expected" in err
    assert "the breaker did not freeze the agent" in err
    assert list(tmp_path.iterdir()) == []


def test_a_directory_the_demo_cannot_remove_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A removal that fails (faked, as the story: the test runs as a user whom no
    permission stops) is said, not reported as done."""
    from paywarden.signer.cli import demo
    from paywarden.signer.cli.commands import main

    def story_played(root: Path, module: str, out: Any, report: dict[str, Any], pause: bool) -> int:
        (root / "left.txt").write_text("something the demo made\n", encoding="utf-8")
        return 0

    monkeypatch.setattr(demo, "_play", story_played)
    monkeypatch.setattr(shutil, "rmtree", lambda *_args, **_kwargs: None)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("NO_COLOR", "1")
    code = main(["demo", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    (left,) = tmp_path.iterdir()
    assert (left / "left.txt").is_file()
    assert f"paywarden: demo: could not remove {left} entirely" in err
    assert f"removed {left}" not in out + err


SERVE_PID = re.compile(r"paywarden serve \(pid (\d+)\): 127\.0\.0\.1:\d+")


@dataclass
class StoryUnderWay:
    """``paywarden demo`` (no --json, so the story is on stdout) once step (a) began."""

    demo: subprocess.Popen[str]
    serve_pid: int
    said: list[str]


@contextmanager
def demo_under_way(base: Path, *, own_group: bool = False) -> Iterator[StoryUnderWay]:
    """Starts the demo with ``--pause`` and TMPDIR in ``base/tmp``, and reads its output until
    its story has begun and waits (the line naming the signer's pid, step (a), then the
    demo's wait for Enter: blocked on its stdin, it cannot end before the test acts);
    kills it on the way out."""
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    # Started as a terminal's foreground job is, with SIGINT at its default: a test run from a
    # background job (``cmd &``, as CI may be) inherits SIGINT ignored, and Python then gives
    # the demo no KeyboardInterrupt at all. The disposition set here survives the exec.
    restore_sigint = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    demo = subprocess.Popen(
        [sys.executable, "-c", restore_sigint, str(PAYWARDEN), "demo", "--pause"],
        cwd=base,
        env=settings_free_env({"TMPDIR": str(tmpdir), "NO_COLOR": "1"}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_group,
    )
    assert demo.stdout is not None
    said: list[str] = []
    serve_pid = 0
    begun = False
    try:
        for line in demo.stdout:
            said.append(line)
            match = SERVE_PID.search(line)
            serve_pid = int(match[1]) if match else serve_pid
            begun = begun or (bool(serve_pid) and line.startswith("(a) "))
            if begun and "press Enter for the next step" in line:
                break
        assert serve_pid and begun, "".join(said)
        yield StoryUnderWay(demo, serve_pid, said)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        demo.stdout.close()
        if demo.stdin is not None:
            demo.stdin.close()


def exits_within(pidfd: int, seconds: float) -> bool:
    """Whether the process of ``pidfd`` exits within ``seconds`` (SIGKILLed if not, so
    that a failing test leaves nothing running)."""
    exited, _, _ = select.select([pidfd], [], [], seconds)
    if not exited:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    return bool(exited)


def test_a_killed_demo_takes_its_signer_with_it(tmp_path: Path) -> None:
    """SIGKILL to the demo once its story has begun: ``paywarden serve``, its child in a
    session of its own, exits too (its pidfd becomes readable when it does)."""
    with demo_under_way(tmp_path) as run:
        serve = os.pidfd_open(run.serve_pid)
        try:
            assert os.getsid(run.serve_pid) == run.serve_pid != os.getsid(run.demo.pid)
            run.demo.kill()
            run.demo.wait()
            assert exits_within(serve, 60), f"serve (pid {run.serve_pid}) outlived the demo"
        finally:
            os.close(serve)


def test_ctrl_c_stops_the_signer_once_and_removes_the_directory(tmp_path: Path) -> None:
    """SIGINT to the demo's whole process group, as a terminal sends it: the demo stops its
    signer (which is not in that group), removes its directory and exits 130."""
    with demo_under_way(tmp_path, own_group=True) as run:
        serve = os.pidfd_open(run.serve_pid)
        try:
            os.killpg(run.demo.pid, signal.SIGINT)
            rest, _ = run.demo.communicate(timeout=120)
            assert exits_within(serve, 0), f"serve (pid {run.serve_pid}) outlived the demo"
        finally:
            os.close(serve)
    assert run.demo.returncode == 130, "".join(run.said) + rest
    assert "paywarden: demo interrupted; the signer is stopped; " in rest
    assert list((tmp_path / "tmp").iterdir()) == []

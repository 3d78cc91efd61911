"""``paywarden demo``: a guided tour of Paywarden on a throwaway signer.

It provisions a SoftHSM2 token, keys, a PKI, a config and a policy pack in a temporary
directory (:mod:`.demo_setup`), runs ``paywarden serve`` on them, plays a scripted story
with a planner, two agents, an approver and an operator (:mod:`.demo_story`), then
verifies the audit log with ``paywarden audit verify`` and sums up the seed metrics,
read from the signer's metrics endpoint and checked against the story's own tally. It
stops the signer and removes the directory at the end, on an error and on Ctrl-C
(``--keep DIR`` keeps everything in DIR instead).

Exit status: 0 when every step had its expected outcome, 1 when one did not (named on
stderr), 2 when the demo could not set up its signer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from paywarden.signer.cli.demo_output import Printer, wants_colour
from paywarden.signer.cli.demo_setup import (
    CAST,
    DEFAULT_MODULE,
    DemoError,
    Signer,
    Workspace,
    provision,
)
from paywarden.signer.cli.demo_story import Story
from paywarden.signer.cli.demo_tally import DemoCheckFailed, StepResult, Tally
from prometheus_client.parser import text_string_to_metric_families

_GAUGES = {
    "paywarden_average_spend_per_task": "average_spend_per_task",
    "paywarden_recipient_diversity": "recipient_diversity",
    "paywarden_override_frequency": "override_frequency",
    "paywarden_rejection_rate": "rejection_rate",
    "paywarden_time_to_intervention_seconds": "time_to_intervention_seconds",
}


class _Stopped(Exception):
    """SIGTERM: leave the way Ctrl-C does, cleaning up."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the story's outcomes as JSON on stdout"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR (new or empty) and keep it: token, PINs, PKI, store, config",
    )
    parser.add_argument(
        "--module",
        default=DEFAULT_MODULE,
        help="the SoftHSM2 PKCS#11 library (default %(default)s; PKCS11_MODULE is ignored, "
        "and a library that is not SoftHSM2 is refused)",
    )
    parser.add_argument(
        "--pause",
        action="store_true",
        help="wait for Enter before each step after the first (end of input: no more waits)",
    )
    parser.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    # With --json the story is told on stderr, and stdout holds the JSON alone.
    stream = sys.stderr if args.json else sys.stdout
    out = Printer(stream, colour=wants_colour(stream))
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    report: dict[str, Any] = {"ok": False, "steps": []}
    try:
        with _workdir(args.keep) as root:
            report["workdir"], report["kept"] = str(root), args.keep is not None
            code = _play(root, args.module, out, report, args.pause)
        if args.keep or not root.exists():
            out.note(f"kept {root}" if args.keep else f"removed {root}")
    except KeyboardInterrupt:
        where = report.get("workdir")
        gone = f"; {where} removed" if where and not args.keep and not Path(where).exists() else ""
        print(f"paywarden: demo interrupted; the signer is stopped{gone}", file=sys.stderr)
        return 130
    except _Stopped:
        return 143
    except DemoError as exc:
        print(f"paywarden: demo: {exc}", file=sys.stderr)
        code = 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    return code


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise _Stopped


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        try:
            keep.mkdir(mode=0o700, parents=True, exist_ok=True)
            if any(keep.iterdir()):
                raise DemoError(f"--keep {keep}: the directory is not empty")
        except OSError as exc:
            raise DemoError(f"--keep {keep}: {exc.strerror}") from None
        yield keep.resolve()
        return
    root = Path(tempfile.mkdtemp(prefix="paywarden-demo-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            print(
                f"paywarden: demo: could not remove {root} entirely (it may hold the token "
                "and its PINs): remove it by hand",
                file=sys.stderr,
            )


def _play(root: Path, module: str, out: Printer, report: dict[str, Any], pause: bool) -> int:
    out.banner("Paywarden guided demo")
    out.note(f"a throwaway signer in {root}")
    report["module"] = module
    ws = provision(root, module)
    out.note(
        "made: a SoftHSM2 token with payments.v1 and audit.v1 (PINs generated, never shown), "
        "a CA, a server and five client certificates, the story's policy pack and a config"
    )
    out.note(", ".join(f"{role} {who}" for role, who in CAST))
    final = StepResult("f", "Audit verify and the seed metrics", "audit log OK; "
                       "the metrics agree with the story")  # fmt: skip
    figures: dict[str, Any] = {}
    audit_pem = ""
    signer = Signer(ws)
    try:
        signer.wait_ready()
        out.note(
            f"paywarden serve (pid {signer.proc.pid}): {signer.addr}, "
            f"metrics 127.0.0.1:{signer.metrics_port}"
        )
        story = Story(ws, signer.addr, out)
        try:
            for n, (key, title, expected, play) in enumerate(story.steps()):
                if pause and n:
                    pause = _wait_for_enter(out)
                out.step(key, title)
                report["steps"].append(_step(key, title, expected, play, out).as_json())
            out.step(final.key, final.title)
            try:
                figures = _scrape(signer.metrics_port)
                report["jwks"] = json.loads(story.jwks())  # for checking the JWSs elsewhere
                audit_pem = story.checkpoint()
            except (grpc.RpcError, OSError, ValueError) as exc:
                final.expect(False, f"cannot read the signer's metrics, keys or checkpoint: {exc}")
        finally:
            story.close()
    finally:
        stopped = signer.stop()
    out.note(f"signer stopped (exit {stopped}); on SIGTERM it seals what no checkpoint covers yet")
    final.expect(stopped == 0, f"the signer exited with status {stopped}")
    if audit_pem:
        (root / "audit.pem").write_text(audit_pem, encoding="ascii")
        _audit_verify(ws, out, final)
    if figures:
        _summary(figures, story.tally, out, final)
    if not final.ok:
        for problem in final.problems:
            out.outcome(False, problem)
    report["steps"].append(final.as_json())
    return _verdict(report, out)


def _wait_for_enter(out: Printer) -> bool:
    """Waits for a line on stdin; whether to wait again (not after the end of input)."""
    out.note("press Enter for the next step")
    return sys.stdin.readline() != ""


def _verdict(report: dict[str, Any], out: Printer) -> int:
    failed = [s for s in report["steps"] if not s["ok"]]
    report["ok"] = not failed
    out.banner("")
    if failed:
        for s in failed:
            print(
                f"paywarden: demo step ({s['step']}) {s['title']}: not as expected: "
                + "; ".join(s["problems"]),
                file=sys.stderr,
            )
        return 1
    out.banner("Every step went as expected.")
    return 0


def _step(key: str, title: str, expected: str, play: Any, out: Printer) -> StepResult:
    result = StepResult(key, title, expected)
    try:
        play(result)
    except grpc.RpcError as err:
        result.expect(False, f"unexpected answer {err.code().name}: {err.details()}")
    except (DemoCheckFailed, KeyError) as exc:
        result.expect(False, str(exc))
    if not result.ok:
        for problem in result.problems:
            out.outcome(False, problem)
    return result


def _scrape(port: int) -> dict[str, Any]:
    """The seed metrics from the signer's Prometheus endpoint."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no *_proxy
    with direct.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode("utf-8")
    figures: dict[str, Any] = {"source": f"metrics endpoint 127.0.0.1:{port}"}
    for family in text_string_to_metric_families(text):
        name = _GAUGES.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            if name == "average_spend_per_task":
                figures.setdefault(name, {})[sample.labels["asset"]] = sample.value
            elif name == "recipient_diversity":
                per_agent = figures.setdefault(name, {}).setdefault(sample.labels["agent"], {})
                per_agent[sample.labels["window"]] = int(sample.value)
            else:
                figures[name] = sample.value
    return figures


def _audit_verify(ws: Workspace, out: Printer, final: StepResult) -> None:
    """``paywarden audit verify`` on the stopped signer's store, as a user would run it."""
    key = ws.root / "audit.pem"
    argv = ["audit", "verify", "--config", str(ws.config), "--public-key", str(key)]
    out.say("auditor", "paywarden " + " ".join(argv[:2]) + " --config … --public-key audit.pem")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "paywarden.signer.cli", *argv],
            cwd=ws.root, env=ws.env(), capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        final.expect(False, "audit verify did not finish within 300 s")
        return
    said = (proc.stdout + proc.stderr).strip()
    final.observed["audit_verify"] = {"exit": proc.returncode, "output": said}
    if final.expect(proc.returncode == 0 and "audit log OK" in said, f"audit verify: {said}"):
        out.outcome(True, said)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) < 1e-6
    return bool(a == b)


def _summary(figures: dict[str, Any], tally: Tally, out: Printer, final: StepResult) -> None:
    expected = tally.expected_metrics()
    final.observed["metrics"] = figures
    final.observed["story"] = expected
    out.note(f"seed metrics, read from the signer's {figures['source']}, against the story:")
    avg = figures.get("average_spend_per_task", {}).get("USD", 0.0)
    lines = [
        ("average spend per task", "average_spend_per_task", f"USD {avg:.2f}",
         f"{len(tally.spent_minor)} sessions that signed"),
        ("recipient diversity", "recipient_diversity",
         ", ".join(f"{a} {d.get('session')}/session {d.get('day')}/day"
                   for a, d in sorted(figures.get("recipient_diversity", {}).items())) or "-",
         "distinct payees at each agent's last decision"),
        ("override frequency", "override_frequency", f"{figures.get('override_frequency', 0):.2f}",
         f"{tally.approvals_approved} of {tally.approvals_decided} held payments approved"),
        ("rejection rate", "rejection_rate", f"{figures.get('rejection_rate', 0):.2f}",
         f"{tally.refused} of {tally.sign_calls} Sign calls refused"),
        ("time to intervention", "time_to_intervention_seconds",
         f"{figures.get('time_to_intervention_seconds', 0):.1f} s",
         "nothing in the frozen scope was signed after the freeze"),
    ]  # fmt: skip
    for label, name, shown, why in lines:
        agrees = _close(figures.get(name), expected[name])
        final.expect(
            agrees, f"{label}: the signer says {figures.get(name)}, the story {expected[name]}"
        )
        out.figure(label, shown, why + ("" if agrees else f" — EXPECTED {expected[name]}"))

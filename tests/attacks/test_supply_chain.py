"""Supply chain: what gets installed is pinned by hash, and serving carries no dev tools.

scripts/install.sh (and so scripts/test.sh, .ci/run and scripts/dev.sh) installs only
from requirements/dev.lock or requirements/serve.lock with ``pip --require-hashes``,
then the project itself with ``--no-deps``. These tests read the locks against
pyproject.toml, and build a serving venv with the install script to show that it holds
exactly the serve lock and runs the signer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from paywarden.v1 import sessions_pb2_grpc, signer_pb2, signer_pb2_grpc

from tests.helpers import ROOT, Pki, TestToken, write_config
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

LOCKS = {"serve": ROOT / "requirements" / "serve.lock", "dev": ROOT / "requirements" / "dev.lock"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Tools for building, testing, linting and type checking: never in the serving venv.
DEV_TOOLS = {
    "pytest", "pytest-grpc", "pytest-timeout", "hypothesis", "mypy", "mypy-protobuf",
    "ruff", "grpcio-tools", "types-protobuf", "grpc-stubs", "pip-tools", "uv", "atheris",
    "coverage", "pytest-cov",
}  # fmt: skip
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)(?:\s*;\s*(.+))?")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def _lock_lines(lock: Path) -> list[str]:
    """The lock's logical lines (continuations joined), comments dropped."""
    text = lock.read_text(encoding="utf-8")
    lines = [line.split("#", 1)[0].rstrip() for line in text.replace("\\\n", " ").splitlines()]
    return [line.strip() for line in lines if line.strip()]


def _pins(lock: Path) -> dict[str, Version]:
    pins = {}
    for entry in _lock_lines(lock):
        requirement = entry.split(" --hash", 1)[0].strip()
        match = _PIN.fullmatch(requirement)
        assert match, f"{lock.name}: not an exact pin: {requirement!r}"
        pins[str(canonicalize_name(match.group(1)))] = Version(match.group(2))
    return pins


def _covered(requirements: list[str], pins: dict[str, Version], lock: str) -> None:
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} lock does not pin {req.name} (pyproject: {text})"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} lock pins {req.name}=={pins[name]}, outside pyproject's {text}"
        )


@pytest.mark.parametrize("which", sorted(LOCKS))
def test_every_locked_requirement_is_pinned_exactly_with_hashes(which: str) -> None:
    entries = _lock_lines(LOCKS[which])
    assert len(entries) >= 10
    for entry in entries:
        # no index, find-links, editable, URL or other option can widen what is fetched
        assert not entry.startswith("-"), f"{which} lock carries an option: {entry!r}"
        assert "://" not in entry and " @ " not in entry, f"{which} lock names a URL: {entry!r}"
        assert _HASH.search(entry), f"{which} lock has a requirement without a hash: {entry!r}"
        rest = _HASH.sub("", entry[len(entry.split(" --hash", 1)[0]) :])
        assert not rest.strip(), f"{which} lock: unexpected text {rest!r} in {entry!r}"
    _pins(LOCKS[which])  # every requirement is name==version


def test_the_serve_lock_pins_every_runtime_dependency_and_the_build_backend() -> None:
    pins = _pins(LOCKS["serve"])
    _covered(PYPROJECT["project"]["dependencies"], pins, "serve")
    _covered(PYPROJECT["build-system"]["requires"], pins, "serve")


def test_the_dev_lock_pins_the_dev_tools_at_the_serve_locks_versions() -> None:
    dev, serve = _pins(LOCKS["dev"]), _pins(LOCKS["serve"])
    _covered(PYPROJECT["project"]["dependencies"], dev, "dev")
    _covered(PYPROJECT["project"]["optional-dependencies"]["dev"], dev, "dev")
    _covered(PYPROJECT["build-system"]["requires"], dev, "dev")
    # tests run against exactly what is served
    assert {n: v for n, v in dev.items() if n in serve} == serve


def test_the_serve_lock_carries_no_dev_tool() -> None:
    serve = _pins(LOCKS["serve"])
    declared = {
        canonicalize_name(Requirement(t).name)
        for t in PYPROJECT["project"]["optional-dependencies"]["dev"]
    }
    tools = {canonicalize_name(t) for t in DEV_TOOLS} | declared
    assert not tools & set(serve), f"dev tools in the serve lock: {sorted(tools & set(serve))}"


def test_install_and_ci_install_only_from_the_hashed_locks() -> None:
    install = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    pip_lines = [line.strip() for line in install.splitlines() if "pip install" in line]
    assert pip_lines, "install.sh installs nothing with pip"
    for line in pip_lines:
        from_lock = "--require-hashes" in line and '-r "$lock"' in line
        project_only = "--no-deps" in line and "--no-build-isolation" in line and "-e ." in line
        assert from_lock or project_only, f"install.sh installs outside the locks: {line}"
    assert "requirements/dev.lock" in install and "requirements/serve.lock" in install
    for script in ("scripts/test.sh", "scripts/dev.sh"):
        assert "./scripts/install.sh" in (ROOT / script).read_text(encoding="utf-8")
    assert "./scripts/install.sh --serve" in (ROOT / "scripts/dev.sh").read_text(encoding="utf-8")
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_the_serving_venv_holds_exactly_the_serve_lock_and_runs_the_signer(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    venv = tmp_path / "serve-venv"
    proc = subprocess.run(
        ["./scripts/install.sh", "--serve"],
        cwd=ROOT, env={**os.environ, "PAYWARDEN_VENV": str(venv)},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    installed = {
        str(canonicalize_name(p["name"])): Version(p["version"]) for p in json.loads(listed.stdout)
    }
    assert installed.pop("paywarden") == Version(PYPROJECT["project"]["version"])
    assert installed == _pins(LOCKS["serve"])
    for module in ("pytest", "hypothesis", "mypy", "ruff", "grpc_tools"):
        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"import {module}"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert probe.returncode != 0, f"{module} imports in the serving venv"

    # and that venv alone runs the signer: start it, open a session, sign
    config = write_config(tmp_path / "cfg", token, pki)
    server = subprocess.Popen(
        [str(venv / "bin" / "paywarden"), "serve", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        addr = None
        for line in server.stdout:  # the readiness line, or the end of the output
            if line.startswith("paywarden: serving on "):
                addr = line.split()[3]
                break
        assert addr, "the signer did not start from the serving venv"
        with pki.channel(addr, "planner", "planner-1") as ch:
            planner = sessions_pb2_grpc.SessionsStub(ch)
            session_id = open_session(
                planner, "agent-1", "5.00", task="supply chain", ttl=600, timeout=30
            )
        with pki.channel(addr, "agent", "agent-1") as ch:
            resp = signer_pb2_grpc.SignerStub(ch).Sign(
                signer_pb2.SignRequest(
                    intent=payment_intent(
                        session_id, payee="acme", amount="1.00", reference="r",
                        expires_at=int(time.time()) + 60,
                    )
                ),
                timeout=30,
            )  # fmt: skip
        assert resp.status == signer_pb2.SIGNED and resp.jws.count(".") == 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

"""The console entry points of pyproject.toml: each names a callable ``main``, and the
custody commands (``paywarden-keys``, ``paywarden-pki``) answer as the security team's
``scripts/keys.py`` and ``scripts/pki.py`` do, since those are thin wrappers over them."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import KEYS
from tests.helpers import ROOT, TestToken

ENTRY_POINTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
    "project"
]["scripts"]
TIMEOUT = 120


def _run_command(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``ARGV`` from the project root, this environment plus ``env``; not checked."""
    return subprocess.run(
        argv, cwd=ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def _entry_point(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs console script ``name`` as its generated launcher does: ``sys.exit(main())``."""
    module, _, attr = ENTRY_POINTS[name].partition(":")
    launcher = f"import sys; from {module} import {attr}; sys.exit({attr}())"
    return _run_command([sys.executable, "-c", launcher, *args], env)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_console_entry_point_names_a_callable_main(name: str) -> None:
    module, _, attr = ENTRY_POINTS[name].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_the_custody_commands_are_console_entry_points_inside_the_package() -> None:
    assert ENTRY_POINTS["paywarden-keys"] == "paywarden.signer.cli.keys:main"
    assert ENTRY_POINTS["paywarden-pki"] == "paywarden.signer.cli.pki:main"


def test_paywarden_keys_lists_what_scripts_keys_py_lists(token: TestToken) -> None:
    args = ["--label", token.label, "list", "--pin-file", str(token.pin_file)]
    env = {"SOFTHSM2_CONF": str(token.conf)}
    entry = _entry_point("paywarden-keys", *args, env=env)
    script = _run_command([sys.executable, "scripts/keys.py", *args], env)
    assert entry.returncode == script.returncode == 0, entry.stderr + script.stderr
    assert entry.stdout == script.stdout
    assert [line.split("\t")[0] for line in entry.stdout.splitlines()] == sorted(KEYS)


def test_paywarden_keys_names_itself_in_its_errors(tmp_path: Path, token: TestToken) -> None:
    env = {"SOFTHSM2_CONF": str(token.conf)}
    args = ["--module", str(tmp_path / "missing.so"), "--label", token.label, "list",
            "--pin-file", str(token.pin_file)]  # fmt: skip
    entry = _entry_point("paywarden-keys", *args, env=env)
    script = _run_command([sys.executable, "scripts/keys.py", *args], env)
    assert entry.returncode == script.returncode == 1
    assert entry.stderr.startswith("paywarden-keys: ")
    assert script.stderr.startswith("keys.py: ")
    assert entry.stderr.removeprefix("paywarden-keys: ") == script.stderr.removeprefix("keys.py: ")


def test_paywarden_pki_and_scripts_pki_py_work_on_one_pki(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    created = _entry_point("paywarden-pki", "init-ca", "--dir", d, "--trust-domain", "ep.test")
    assert created.returncode == 0 and created.stdout == f"CA in {d}: created\n", created.stderr
    kept = _run_command([sys.executable, "scripts/pki.py", "init-ca", "--dir", d])
    assert kept.returncode == 0 and kept.stdout == f"CA in {d}: already exists, nothing done\n"
    issued = _entry_point("paywarden-pki", "issue", "--dir", d, "--role", "agent", "--id", "a-1")
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.startswith("agent-a-1: issued, valid until ")
    again = _run_command([sys.executable, "scripts/pki.py", "issue", "--dir", d, "--role", "agent",
                  "--id", "a-1"])  # fmt: skip
    assert again.stdout == "agent-a-1: already exists, nothing done\n"
    refused = _entry_point("paywarden-pki", "issue", "--dir", d, "--role", "agent", "--id", "A")
    assert refused.returncode == 2 and refused.stderr.startswith("paywarden-pki: --id 'A' ")


def test_paywarden_pki_without_a_ca_says_so_and_fails(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    (d / "trust-domain").write_text("ep.test\n", encoding="ascii")
    entry = _entry_point("paywarden-pki", "server", "--dir", str(d))
    script = _run_command([sys.executable, "scripts/pki.py", "server", "--dir", str(d)])
    assert entry.returncode == script.returncode == 1
    assert entry.stderr == f"paywarden-pki: no CA in {d}; run init-ca first\n"
    assert script.stderr == f"pki.py: no CA in {d}; run init-ca first\n"
    assert not (d / "server.crt").exists()

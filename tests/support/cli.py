"""One way to run the ``paywarden`` command line, for every test module."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.helpers import ROOT, Pki, ServeProcess


def settings_free_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``PAYWARDEN_*`` setting, plus ``extra``:
    what the command reads is only what the test gives it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYWARDEN_")}
    env.update(extra or {})
    return env


def paywarden(
    *args: str | Path | int, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m paywarden.signer.cli ARGS`` from the project root, its output
    captured as text; the environment is this process's unless ``env`` is given. The
    timeout is a safety net only."""
    return subprocess.run(
        [sys.executable, "-m", "paywarden.signer.cli", *map(str, args)],
        cwd=ROOT,
        env=None if env is None else dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def audit_verify(
    db: Path, public_key: Path, *extra: str | Path
) -> subprocess.CompletedProcess[str]:
    """``paywarden audit verify --db DB --public-key KEY EXTRA`` (e.g. ``--config``)."""
    return paywarden("audit", "verify", "--db", db, "--public-key", public_key, *extra)


def policy_check(*paths: Path) -> subprocess.CompletedProcess[str]:
    """``paywarden policy check PATHS``, with no ``PAYWARDEN_*`` setting around it."""
    return paywarden("policy", "check", *paths, env=settings_free_env())


def pki_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``scripts/pki.py ARGS`` from the project root, its output captured as text."""
    return subprocess.run(
        [sys.executable, "scripts/pki.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def ctl(
    srv: ServeProcess, pki: Pki, *args: str, operator: str = "operator-1"
) -> subprocess.CompletedProcess[str]:
    """``paywarden ctl ARGS`` as ``operator``, against ``srv``."""
    return paywarden(
        "ctl", "--addr", srv.addr, "--ca", pki.dir / "ca.crt",
        "--cert", pki.dir / f"operator-{operator}.crt",
        "--key", pki.dir / f"operator-{operator}.key",
        *args, timeout=60,
    )  # fmt: skip

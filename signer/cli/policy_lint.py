"""``paywarden policy lint [DIR]``: warnings on broad grants (:mod:`paywarden.policy.lint`).

The packs of DIR (default: the configuration's policy directory) are loaded and
checked as the signer loads them. With ``--config``, what the store recorded is read
too (its SQLite file or PostgreSQL database), offline and read-only (like ``paywarden
audit``): the signed payments of the agents each pack covers over the last ``--days``
days. Exit status: 0 no warning, 1 warnings (each printed), 2 the packs, the
configuration or the store cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from paywarden.policy import PackError, compile_all
from paywarden.policy.lint import LintWarning, Observed, SignedPayment, covered_agents, lint
from paywarden.policy.packs import PackSet, load_pack_dir
from paywarden.signer.cli.support import CliExit, config_from_args
from paywarden.signer.config import Config
from paywarden.signer.store import offline_reads
from paywarden.signer.store.records import StoreError

DAY = 86_400


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", type=Path, help="packs (default: the config's)")
    parser.add_argument(
        "--config", type=Path, help="signer config: its assets, groups, and its store's usage"
    )
    parser.add_argument(
        "--days", type=int, default=30, help="the window of recorded payments read (days)"
    )
    parser.add_argument("--no-usage", action="store_true", help="do not read the store")
    parser.add_argument("--json", action="store_true", help="the warnings as JSON lines")


def _observed(config: Config, packs: PackSet, days: int) -> Observed:
    agents = {a for pack in packs.packs for a in covered_agents(packs, pack)}
    since = int(time.time()) - days * DAY
    try:
        rows = offline_reads.signed_payments(config.store, agents, since)
    except StoreError as exc:
        raise CliExit(2, f"{exc} (--no-usage lints without it)") from None
    payments = [SignedPayment(*row) for row in rows]
    return Observed.of(payments, ZoneInfo(config.policy.timezone), days)


def run(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise CliExit(2, "--days must be 1 or more")
    config = config_from_args(args)
    directory = args.dir or config.policy.dir
    assets = config.asset_table()
    try:
        packs = load_pack_dir(directory, config.groups)
        compile_all(packs.packs, assets)
    except PackError as exc:
        raise CliExit(2, f"invalid policy pack: {exc}") from None
    observed = None
    if args.config is not None and not args.no_usage:
        observed = _observed(config, packs, args.days)
    warnings = lint(packs, assets, observed)
    for w in warnings:
        print(_json(w) if args.json else f"{w.file}: {w.pack}: {w.code}: {w.path}: {w.message}")
    if not args.json:
        print(f"{len(warnings)} warning(s) in {len(packs.packs)} pack(s)", file=sys.stderr)
    return 1 if warnings else 0


def _json(w: LintWarning) -> str:
    fields = {"code": w.code.value, "pack": w.pack, "file": w.file, "path": w.path}
    return json.dumps({**fields, "message": w.message}, sort_keys=True, ensure_ascii=False)

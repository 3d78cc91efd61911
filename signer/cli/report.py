"""``paywarden report --out DIR``: the operator report, a static HTML page
(``DIR/index.html``) from the store and its audit log, read offline and read-only
(SQLite or PostgreSQL, as ``paywarden audit``): spend per agent and asset over time,
decisions by outcome and reason, approvals, freezes, the busiest payees and the audit
checkpoints, with ``audit verify``'s verdict when audit public keys are given.

Exit status: 0 written; 1 written, but the audit log does not verify (or the store
cannot be read: nothing written); 2 a bad configuration or ``--public-key`` (found
before the store is read); 3 the page cannot be written to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.signer.auditlog import verification, vouched
from paywarden.signer.cli.report_html import Page
from paywarden.signer.cli.report_sections import AuditCheck
from paywarden.signer.cli.support import CliExit, config_from_args, public_keys
from paywarden.signer.config import Config, StoreConfig
from paywarden.signer.store import offline_reads
from paywarden.signer.store.opening import location
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.report_reads import DAY, HOUR, WEEK

BUCKETS = {"hour": HOUR, "day": DAY, "week": WEEK}

clock: Callable[[], float] = time.time
"""The report's time: what it judges approvals expired by and prints as generated
(time is an input: a test sets its signer's clock here)."""


EXIT_STATUS = (
    "exit status: 0 written; 1 written but the audit log does not verify, or the store "
    "cannot be read (nothing written); 2 a bad configuration or --public-key; 3 the page "
    "cannot be written to --out"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS
    parser.add_argument("--out", type=Path, required=True, help="directory for index.html")
    parser.add_argument(
        "--config", type=Path, help="signer config (its store, assets and audit intervals)"
    )
    parser.add_argument("--db", type=Path, help="a SQLite store file instead of the config's")
    parser.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="an audit public key (PEM) to run audit verify with; repeat it for keys used "
        "before a rotation (without one the report says the log was not checked)",
    )
    parser.add_argument(
        "--bucket",
        choices=sorted(BUCKETS),
        help="spend chart buckets (default: hours for up to 3 days, days up to ~3 months, "
        "else weeks)",
    )


def _store(args: argparse.Namespace, config: Config) -> StoreConfig:
    return offline_reads.sqlite_file(args.db) if args.db is not None else config.store


def audit_check(
    keys: list[ec.EllipticCurvePublicKey], config: Config, store: StoreConfig
) -> AuditCheck:
    """``audit verify`` over the store's log (its own read snapshot) with ``keys``, and
    the seal limits it uses by default: twice the configured checkpoint intervals."""
    if not keys:
        return AuditCheck("unchecked", ("no --public-key given: the log was not verified",))
    limits = verification.SealLimits(
        records=2 * config.audit.checkpoint_every, seconds=2 * config.audit.checkpoint_seconds
    )
    with offline_reads.audit_log_snapshot(store) as snap:
        report = vouched.verify(snap.records, snap.checkpoints, keys, limits=limits)
    if report.ok:
        return AuditCheck(
            "ok",
            (
                f"{report.records} records, {report.checkpoints} signed checkpoints, "
                f"{report.unsealed} records after the last checkpoint",
            ),
        )
    first = f"first bad record {report.first_bad_seq}" if report.first_bad_seq else "problems"
    return AuditCheck("broken", (first, *report.problems[:20]))


def write_page(out: Path, text: str) -> Path:
    """``out/index.html``, replaced whole (written aside, then renamed), readable by its
    owner alone (0600, as the store: it names payees, amounts, agents and freezes); the
    folder, when made here, 0700. Sharing it is the operator's decision."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = out / "index.html"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".index-", suffix=".html")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    store = _store(args, config)
    bucket = BUCKETS[args.bucket] if args.bucket else None
    keys = public_keys(args.public_key)  # a bad key is a usage error, before any read
    now = int(clock())
    try:
        facts = offline_reads.report_facts(store, now, bucket)
        audit = audit_check(keys, config, store)
    except StoreError as exc:
        raise CliExit(1, str(exc)) from None
    decimals = {code: asset.decimals for code, asset in config.asset_table().items()}
    page = Page(facts, decimals).render(store=location(store), generated=now, audit=audit)
    try:
        target = write_page(args.out, page)
    except OSError as exc:
        raise CliExit(3, f"cannot write the report to {args.out}: {exc.strerror}") from None
    print(f"report written to {target} (audit verify: {audit.state})")
    return 1 if audit.state == "broken" else 0

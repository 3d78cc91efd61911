"""The ``paywarden`` command."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from paywarden.signer import logs
from paywarden.signer.api.server import start
from paywarden.signer.api.startup import StartupError
from paywarden.signer.cli import (
    approvals,
    audit,
    ctl,
    demo,
    explain,
    payee,
    policy_diff,
    policy_lint,
    receipt,
    report,
    store_migrate,
    verify,
    verify_receipt,
)
from paywarden.signer.cli.pipes import quiet_on_broken_pipe
from paywarden.signer.cli.support import CliExit, config_from_args
from paywarden.signer.config import StoreConfig
from paywarden.signer.config_file import ConfigError, load_config
from paywarden.signer.store import offline_reads
from paywarden.signer.store.opening import location
from paywarden.signer.store.records import StoreError


def _serve(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    try:
        config = load_config(args.config)
        running = start(config)
    except (ConfigError, StartupError) as exc:
        print(f"paywarden: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    host = config.server.listen.rpartition(":")[0]
    # Tests and scripts wait for this line (a readiness probe, not a sleep).
    metrics = f"{host}:{running.metrics_port}" if running.metrics_port else "off"
    try:  # a stdout whose reader has gone (BrokenPipeError) still gets the graceful stop
        print(
            f"paywarden: serving on {host}:{running.port} (hsm available: "
            f"{running.hsm.available}; metrics {metrics})",
            flush=True,
        )
        stop.wait()
        print("paywarden: stopping", flush=True)
    finally:
        running.stop(config.server.grace_seconds)
    print("paywarden: stopped", flush=True)
    return 0


def _store(args: argparse.Namespace) -> StoreConfig:
    """The configured store (``store.url`` or ``store.path``), read-only."""
    return config_from_args(args).store


def _check_config(args: argparse.Namespace) -> int:
    print(config_from_args(args).model_dump_json(indent=2))
    return 0


def _store_info(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        version, counts = offline_reads.table_counts(store)
    except StoreError as exc:
        raise CliExit(1, str(exc)) from None
    print(f"store {location(store)} schema version {version}")
    for name, count in counts:
        print(f"  {name}: {count} rows")
    return 0


def _store_export(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        names = offline_reads.table_names(store)
        if args.table not in names:
            raise CliExit(1, f"no table {args.table!r} (have {names})")
        for row in offline_reads.table_rows(store, args.table):
            out = {
                k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                for k, v in row.items()
            }
            print(json.dumps(out, sort_keys=True, ensure_ascii=False))
    except StoreError as exc:
        raise CliExit(1, str(exc)) from None
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    from paywarden.policy import PackError, compile_all, load_pack
    from paywarden.policy.describe import describe
    from paywarden.policy.packs import build_pack_set

    config = config_from_args(args)
    assets = config.asset_table()
    packs = []
    failed = False
    for path in args.files:
        try:
            pack = load_pack(path)
            compile_all([pack], assets)
        except PackError as exc:
            print(f"paywarden: invalid policy pack: {exc}", file=sys.stderr)
            failed = True
            continue
        packs.append(pack)
    if failed:
        return 1
    try:
        build_pack_set(packs, config.groups)
    except PackError as exc:
        print(f"paywarden: invalid policy packs: {exc}", file=sys.stderr)
        return 1
    for pack in packs:
        print(describe(pack))
    return 0


@quiet_on_broken_pipe
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paywarden", description="Paywarden payment signer")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the signer")
    serve.add_argument("--config", type=Path, help="TOML file (default: embedded defaults)")
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(fn=_serve)
    check = sub.add_parser("config", help="validate a configuration and print it")
    check.add_argument("--config", type=Path)
    check.set_defaults(fn=_check_config)
    info = sub.add_parser("store-info", help="tables and row counts of the state store")
    info.add_argument("--config", type=Path)
    info.set_defaults(fn=_store_info)
    export = sub.add_parser("store-export", help="one table of the state store as JSON lines")
    export.add_argument("--config", type=Path)
    export.add_argument("--table", required=True)
    export.set_defaults(fn=_store_export)
    store = sub.add_parser("store", help="the state store")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    migrate = store_sub.add_parser(
        "migrate", help="copy a SQLite store into an empty PostgreSQL database, verified"
    )
    store_migrate.add_arguments(migrate)
    migrate.set_defaults(fn=store_migrate.run)
    policy = sub.add_parser("policy", help="policy packs")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    pcheck = policy_sub.add_parser("check", help="validate packs and print what they allow")
    pcheck.add_argument("files", nargs="+", type=Path)
    pcheck.add_argument("--config", type=Path, help="signer config (assets, groups)")
    pcheck.set_defaults(fn=_policy_check)
    plint = policy_sub.add_parser("lint", help="warn on broad grants (exit 1 on warnings)")
    policy_lint.add_arguments(plint)
    plint.set_defaults(fn=policy_lint.run)
    pdiff = policy_sub.add_parser(
        "diff", help="what changing packs widens or narrows, agent by agent (exit 1: widens)"
    )
    policy_diff.add_arguments(pdiff)
    pdiff.set_defaults(fn=policy_diff.run)
    approvals_parser = sub.add_parser("approvals", help="approve or deny held payments (approver)")
    approvals.add_arguments(approvals_parser)
    approvals_parser.set_defaults(fn=approvals.run)
    audit_parser = sub.add_parser("audit", help="verify, export and explain the audit log")
    audit.add_audit_arguments(audit_parser)
    ctl_parser = sub.add_parser("ctl", help="operator: freeze, unfreeze, checkpoint (over mTLS)")
    ctl.add_arguments(ctl_parser)
    ctl_parser.set_defaults(fn=ctl.run)
    explain_parser = sub.add_parser("explain", help="operator: what an agent can do now (mTLS)")
    explain.add_arguments(explain_parser)
    explain_parser.set_defaults(fn=explain.run)
    demo.add_arguments(sub.add_parser("demo", help="a guided story on a throwaway signer"))
    report_parser = sub.add_parser("report", help="operator report: a static HTML page (offline)")
    report.add_arguments(report_parser)
    report_parser.set_defaults(fn=report.run)
    receipt_parser = sub.add_parser("receipt", help="a signed receipt of a decision (mTLS)")
    receipt.add_arguments(receipt_parser)
    receipt_parser.set_defaults(fn=receipt.run)
    verify_receipt_parser = sub.add_parser("verify-receipt", help="check a receipt offline")
    verify_receipt.add_arguments(verify_receipt_parser)
    verify_receipt_parser.set_defaults(fn=verify_receipt.run)
    jwks_parser = sub.add_parser("jwks", help="payee: the signer's JWKS, to verify offline (mTLS)")
    payee.add_jwks_arguments(jwks_parser)
    jwks_parser.set_defaults(fn=payee.run_jwks)
    check_parser = sub.add_parser(
        "check-payment", help="payee: whether a signed payment still stands (mTLS)"
    )
    payee.add_check_arguments(check_parser)
    check_parser.set_defaults(fn=payee.run_check)
    verify_parser = sub.add_parser("verify", help="payee: check a payment offline (JWKS)")
    verify.add_arguments(verify_parser)
    verify_parser.set_defaults(fn=verify.run)
    args = parser.parse_args(argv)
    try:
        code: int = args.fn(args)
    except CliExit as exc:
        print(f"paywarden: {exc}", file=sys.stderr)
        return exc.code
    return code


if __name__ == "__main__":
    sys.exit(main())

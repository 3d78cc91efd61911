"""``paywarden store migrate --to postgresql://USER@HOST:PORT/DB``: a stopped signer's
SQLite store copied into an empty PostgreSQL database, the copy's row counts and
audit log verified before it is committed (:mod:`paywarden.signer.store.sqlite_to_postgres`).

The password is never on the command line: ``--password-file`` names a file that
holds it, ``--password-env`` a variable; it is never printed. Exit status: 0 copied
and verified, 1 refused or failed (nothing committed), 2 a wrong argument.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from paywarden.signer.cli.support import CliExit, config_from_args, public_keys
from paywarden.signer.config import StoreConfig
from paywarden.signer.store import schema
from paywarden.signer.store.opening import location, password
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sqlite_to_postgres import migrate
from pydantic import ValidationError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        required=True,
        metavar="postgresql://USER@HOST:PORT/DB",
        help="an empty PostgreSQL database (no password in the URL)",
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password-file", type=Path, help="a file that holds the password")
    secret.add_argument("--password-env", metavar="VAR", help="a variable that holds it")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="signer config: its store.path is copied")
    source.add_argument("--db", type=Path, help="the SQLite store file to copy")
    parser.add_argument(
        "--public-key",
        type=Path,
        action="append",
        required=True,
        help="an audit public key (PEM) the checkpoints are verified with; repeat it for "
        "keys used before a rotation",
    )


def _destination(args: argparse.Namespace) -> StoreConfig:
    """``--to`` and its password source, as a store setting; the URL is never echoed
    in an error (it might carry a password, which is refused)."""
    parts = urlsplit(args.to)
    if parts.scheme not in ("postgresql", "postgres"):
        raise CliExit(2, "--to: a PostgreSQL URL, postgresql://USER@HOST:PORT/DB")
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise CliExit(
            2, "--to: no password in the URL; give it with --password-file or --password-env"
        )
    try:
        return StoreConfig(
            url=args.to, password_file=args.password_file, password_env=args.password_env
        )
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        raise CliExit(2, f"--to: {problems}") from None


def _source(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return Path(args.db)
    store = config_from_args(args).store
    if store.postgres:
        raise CliExit(2, "the config's store.url is PostgreSQL: store migrate copies SQLite")
    return store.path


def run(args: argparse.Namespace) -> int:
    destination = _destination(args)
    source = _source(args)
    keys = public_keys(args.public_key)
    try:
        secret = password(destination)
    except StoreError as exc:
        text = str(exc).replace("store.password_file", "--password-file")
        raise CliExit(2, text.replace("store.password_env", "--password-env")) from None
    assert destination.url is not None
    try:
        done = migrate(
            source,
            destination.url,
            secret,
            keys,
            connect_timeout=destination.connect_timeout_seconds,
        )
    except StoreError as exc:
        raise CliExit(1, f"store migrate refused, nothing committed: {exc}") from None
    print(f"migrated {source} to {location(destination)} (schema version {schema.SCHEMA_VERSION})")
    for name, rows in sorted(done.tables):
        print(f"  {name}: {rows} rows")
    print(
        f"{len(done.tables)} tables, {done.rows} rows; audit log verified:"
        f" {done.audit_size} records, root {done.audit_root.hex()}"
    )
    return 0

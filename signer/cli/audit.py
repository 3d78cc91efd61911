"""``paywarden audit …``: verify, export and explain the audit log, offline, from the
store or an export."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.signer.auditlog import merkle, verification, vouched
from paywarden.signer.auditlog.checkpoints import Checkpoint, check_checkpoint
from paywarden.signer.auditlog.explain import explain
from paywarden.signer.cli.support import config_from_args, public_keys
from paywarden.signer.config import StoreConfig
from paywarden.signer.store import offline_reads
from paywarden.signer.store.records import StoreError

# -- reading the log -------------------------------------------------------------------


def read_export(path: Path) -> tuple[list[tuple[int, str, bytes | None]], list[Checkpoint]]:
    records: list[tuple[int, str, bytes | None]] = []
    checkpoints: list[Checkpoint] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item["kind"] == "record":
            records.append((int(item["seq"]), str(item["record"]), None))
        elif item["kind"] == "checkpoint":
            c = item["checkpoint"]
            checkpoints.append(
                Checkpoint(c["size"], c["root"], c["time"], c["key_id"], c["body"], c["signature"])
            )
    return records, checkpoints


def _store(args: argparse.Namespace) -> StoreConfig:
    """The store to read: ``--db PATH`` (a SQLite file), else the config's (its
    ``store.url`` or ``store.path``)."""
    if args.db is not None:
        return offline_reads.sqlite_file(args.db)
    return config_from_args(args).store


def _load(args: argparse.Namespace) -> tuple[list[tuple[int, str, bytes | None]], list[Checkpoint]]:
    if args.export is not None:
        return read_export(args.export)
    try:
        return offline_reads.read_audit_log(_store(args))
    except StoreError as exc:
        raise SystemExit(f"paywarden: {exc}") from None


@contextmanager
def _snapshot(
    args: argparse.Namespace,
) -> Iterator[tuple[Callable[[], Iterable[vouched.RawRow]], list[Checkpoint]]]:
    """The log to verify: its records as they stream (within one read transaction of
    the store, as often as asked) and its checkpoints."""
    if args.export is not None:
        records, checkpoints = read_export(args.export)
        yield (lambda: iter(records)), checkpoints
        return
    try:
        with offline_reads.audit_log_snapshot(_store(args)) as snapshot:
            yield snapshot.records, snapshot.checkpoints
    except StoreError as exc:
        raise SystemExit(f"paywarden: {exc}") from None


# -- audit commands ---------------------------------------------------------------------


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError("must be a whole number, 0 or more")
    return int(text)


def _trusted_arg(text: str) -> verification.TrustedHead:
    size, sep, root = text.partition(":")
    root = root.strip().lower()
    if (
        not sep
        or not (size.isascii() and size.isdigit())
        or int(size) < 1
        or len(root) != 64
        or any(c not in "0123456789abcdef" for c in root)
    ):
        raise argparse.ArgumentTypeError("must be SIZE:ROOT (a record count and a hex root)")
    return verification.TrustedHead(int(size), root, f"--trusted {int(size)}:{root[:16]}…")


def _checkpoint_objects(path: Path) -> list[dict[str, Any]]:
    """The checkpoints in a file: one JSON object, or JSON Lines (an export)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"paywarden: cannot read checkpoint file {path}: {exc}") from None
    try:
        items = [json.loads(text)]
    except ValueError:
        try:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise SystemExit(f"paywarden: {path} is neither JSON nor JSON Lines") from None
    out = []
    for item in items:
        if not isinstance(item, dict) or item.get("kind") == "record":
            continue
        if item.get("kind") == "checkpoint":
            item = item.get("checkpoint")
        if isinstance(item, dict):
            out.append(item)
    if not out:
        raise SystemExit(f"paywarden: {path} holds no checkpoint")
    return out


def _trusted_from_file(
    path: Path, keys: list[ec.EllipticCurvePublicKey]
) -> list[verification.TrustedHead]:
    """Checkpoints saved by ``ctl checkpoint --out`` or ``audit export`` (or a signed
    body alone). A signed one must verify with a given audit key: a copy kept
    elsewhere is trusted for what it says, never for a signature that fails."""
    heads = []
    for item in _checkpoint_objects(path):
        size, root = item.get("size"), item.get("root")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise SystemExit(f"paywarden: {path}: a checkpoint without a valid size")
        if not isinstance(root, str) or len(root) != 64:
            raise SystemExit(f"paywarden: {path}: checkpoint {size} has no valid root")
        if "signature" in item:
            cp = Checkpoint(
                size,
                root,
                0,  # the time that counts is in the signed body
                str(item.get("key_id", "")),
                str(item.get("body", "")),
                str(item["signature"]),
            )
            problem = check_checkpoint(cp, keys)
            if problem is not None:
                raise SystemExit(f"paywarden: {path}: {problem}")
        heads.append(verification.TrustedHead(size, root.lower(), f"{path}"))
    return heads


def _seal_limits(args: argparse.Namespace) -> verification.SealLimits:
    """--max-unsealed*, else twice the configured interval (a checkpoint is signed
    on the checkpointer's next tick once due; twice leaves room for a busy signer)."""
    records, seconds = args.max_unsealed, args.max_unsealed_seconds
    if records is None or seconds is None:
        configured = config_from_args(args).audit
        if records is None:
            records = 2 * configured.checkpoint_every
        if seconds is None:
            seconds = 2 * configured.checkpoint_seconds
    return verification.SealLimits(records=records, seconds=seconds)


def cmd_verify(args: argparse.Namespace) -> int:
    keys = public_keys(args.public_key)  # a bad key is a usage error, before any read
    with _snapshot(args) as (records, checkpoints):
        trusted = list(args.trusted or [])
        for path in args.checkpoint or []:
            trusted.extend(_trusted_from_file(path, keys))
        limits = _seal_limits(args)
        if args.full:
            report = verification.verify(
                vouched.as_text(records()),
                checkpoints,
                keys,
                trusted=trusted,
                limits=limits,
                time_skew=args.max_time_skew,
            )
        else:
            report = vouched.verify(
                records,
                checkpoints,
                keys,
                trusted=trusted,
                limits=limits,
                time_skew=args.max_time_skew,
            )
    if report.ok:
        print(
            f"audit log OK: {report.records} records, {report.checkpoints} signed checkpoints, "
            f"{report.unsealed} records after the last checkpoint"
        )
        for head in report.trusted:
            print(f"consistent with trusted checkpoint {head.size} ({head.source})")
        return 0
    if report.first_bad_seq is not None:
        print(f"audit log BROKEN: first bad record {report.first_bad_seq}", file=sys.stderr)
    else:
        n = len(report.problems)
        print(f"audit log BROKEN: {n} problem{'s' if n > 1 else ''}", file=sys.stderr)
    for problem in report.problems:
        print(f"  {problem}", file=sys.stderr)
    for line in report.advice:
        print(line, file=sys.stderr)
    return 1


def cmd_export(args: argparse.Namespace) -> int:
    records, checkpoints = _load(args)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for seq, body, _leaf in records:
            leaf = merkle.leaf_hash(body.encode("utf-8")).hex()
            out.write(
                json.dumps({"kind": "record", "seq": seq, "leaf": leaf, "record": body}) + "\n"
            )
        for c in checkpoints:
            cp = {
                "size": c.size, "root": c.root, "time": c.at, "key_id": c.key_id,
                "body": c.body, "signature": c.signature,
            }  # fmt: skip
            out.write(json.dumps({"kind": "checkpoint", "checkpoint": cp}) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    records, _ = _load(args)
    text = explain([(s, b) for s, b, _ in records], args.decision_id)
    if text is None:
        print(f"paywarden: no decision {args.decision_id} in the audit log", file=sys.stderr)
        return 1
    print(text)
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    records, _ = _load(args)
    leaves = [merkle.leaf_hash(b.encode("utf-8")) for _, b, _ in records]
    size = args.size or len(leaves)
    if not 1 <= args.seq <= size <= len(leaves):
        print(f"paywarden: record {args.seq} is not in a tree of {size}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "seq": args.seq,
                "tree_size": size,
                "leaf_hash": leaves[args.seq - 1].hex(),
                "root_hash": merkle.root(leaves[:size]).hex(),
                "proof": [h.hex() for h in merkle.inclusion_proof(args.seq - 1, leaves[:size])],
            },
            indent=2,
        )
    )
    return 0


def cmd_consistency(args: argparse.Namespace) -> int:
    records, _ = _load(args)
    leaves = [merkle.leaf_hash(b.encode("utf-8")) for _, b, _ in records]
    if not 0 < args.first <= args.second <= len(leaves):
        print(f"paywarden: need 0 < first <= second <= {len(leaves)}", file=sys.stderr)
        return 1
    part = leaves[: args.second]
    print(
        json.dumps(
            {
                "first": args.first,
                "second": args.second,
                "first_root": merkle.root(part[: args.first]).hex(),
                "second_root": merkle.root(part).hex(),
                "proof": [h.hex() for h in merkle.consistency_proof(args.first, part)],
            },
            indent=2,
        )
    )
    return 0


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--config",
        type=Path,
        help="signer config (its store.url or store.path, and audit checkpoint interval)",
    )
    source.add_argument("--db", type=Path, help="a SQLite store file instead of the config's")
    source.add_argument("--export", type=Path, help="a JSON Lines export instead of a store")
    sub = parser.add_subparsers(dest="audit_command", required=True)
    p = sub.add_parser("verify", parents=[source], help="recompute and check the whole log")
    p.add_argument(
        "--public-key",
        type=Path,
        action="append",
        required=True,
        help="an audit public key (PEM); repeat it for keys used before a rotation",
    )
    p.add_argument(
        "--trusted",
        type=_trusted_arg,
        action="append",
        metavar="SIZE:ROOT",
        help="a tree head kept elsewhere: the log's first SIZE records must hash to ROOT",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        metavar="FILE",
        help="checkpoints kept elsewhere (ctl checkpoint --out, or an audit export)",
    )
    p.add_argument(
        "--max-unsealed",
        type=_count,
        metavar="N",
        help="most records after the last checkpoint (default: 2 x audit.checkpoint_every)",
    )
    p.add_argument(
        "--max-unsealed-seconds",
        type=_count,
        metavar="S",
        help="longest span of unsealed record times (default: 2 x audit.checkpoint_seconds)",
    )
    p.add_argument(
        "--max-time-skew",
        type=_count,
        default=verification.TIME_SKEW,
        metavar="S",
        help="how far a record's time may lie below an earlier one's (default "
        f"{verification.TIME_SKEW}, for logs written before the store kept times from going "
        "back; 0 for logs written since)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="parse and check every record's form and link, also those a signed checkpoint "
        "vouches for (slower; the verdict is the same unless the signer wrote a malformed "
        "record)",
    )
    p.set_defaults(fn=cmd_verify)
    p = sub.add_parser("export", parents=[source], help="records and checkpoints as JSON Lines")
    p.add_argument("--out", type=Path)
    p.set_defaults(fn=cmd_export)
    p = sub.add_parser("show", parents=[source], help="explain one decision in words")
    p.add_argument("decision_id")
    p.set_defaults(fn=cmd_show)
    p = sub.add_parser("prove", parents=[source], help="inclusion proof of one record")
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--size", type=int, default=0)
    p.set_defaults(fn=cmd_prove)
    p = sub.add_parser("consistency", parents=[source], help="consistency proof of two sizes")
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--second", type=int, required=True)
    p.set_defaults(fn=cmd_consistency)

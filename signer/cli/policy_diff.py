"""``paywarden policy diff OLD NEW``: what moving from one pack set to another widens or
narrows, agent by agent.

OLD and NEW are each a directory of packs (``*.toml``, as ``policy.dir``) or one pack
file. Exit status: 0 when no change widens (nothing changed, or only narrowing or
neutral changes), 1 when at least one change widens, 2 when a pack cannot be read or
is invalid (or the arguments are wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from paywarden.policy import PackError, compile_all, load_pack
from paywarden.policy.diff import diff_pack_sets
from paywarden.policy.packs import PackSet, build_pack_set, pack_set_sha256
from paywarden.signer.cli.support import CliExit, config_from_args

EXIT_NOT_WIDER = 0
EXIT_WIDER = 1
EXIT_INVALID = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, help="the packs before: a directory or one file")
    parser.add_argument("new", type=Path, help="the packs after: a directory or one file")
    parser.add_argument(
        "--config",
        type=Path,
        help="signer config: its groups resolve agents, its assets check amounts",
    )
    parser.add_argument("--json", action="store_true", help="print the changes as JSON")


def change_lines(changes: Iterable[tuple[str, str, str, str]]) -> list[str]:
    """(subject, field, direction, description) rows, grouped by subject, as printed
    by ``policy diff`` and ``ctl reload``."""
    lines: list[str] = []
    subject = None
    for who, field, direction, text in changes:
        if who != subject:
            lines.append(f"{who}:")
            subject = who
        lines.append(f"  {direction.upper():<8} {field}: {text}")
    return lines


def _read(path: Path, groups: Mapping[str, Iterable[str]], config_given: bool) -> PackSet:
    if path.is_dir():
        files = sorted(path.glob("*.toml"))
    elif path.exists():
        files = [path]
    else:
        raise PackError(f"{path}: no such file or directory")
    packs = [load_pack(f) for f in files]
    if not config_given:  # members unknown: a group's pack is compared as the group's
        groups = {g: () for pack in packs for g in pack.model.groups}
    return build_pack_set(packs, groups)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    given = args.config is not None
    try:
        old = _read(args.old, config.groups, given)
        new = _read(args.new, config.groups, given)
        if given:  # amounts within the assets' decimals, as the signer checks them
            compile_all([*old.packs, *new.packs], config.asset_table())
    except PackError as exc:
        raise CliExit(EXIT_INVALID, f"invalid policy packs: {exc}") from None
    diff = diff_pack_sets(old, new)
    old_hash, new_hash = pack_set_sha256(old), pack_set_sha256(new)
    if args.json:
        out = {
            "old": {"sha256": old_hash, "packs": [p.ref() for p in old.packs]},
            "new": {"sha256": new_hash, "packs": [p.ref() for p in new.packs]},
            "widens": diff.widens,
            "needs_second_operator": diff.needs_second_operator,
            "changes": [c.as_json() for c in diff.changes],
        }
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"old: {len(old.packs)} pack(s), set sha256 {old_hash}")
        print(f"new: {len(new.packs)} pack(s), set sha256 {new_hash}")
        rows = [(c.subject, c.field, str(c.direction), c.description) for c in diff.changes]
        for line in change_lines(rows):
            print(line)
        widening = len(diff.widening())
        summary = f"{len(diff.changes)} change(s), {widening} widening"
        if diff.needs_second_operator:
            summary += "; a reload needs a second operator"
        print(summary if diff.changes else "no change to any agent's power")
    sys.stdout.flush()
    return EXIT_WIDER if diff.widens else EXIT_NOT_WIDER

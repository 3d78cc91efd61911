"""What a pack set is read with besides its packs, and what changing it widens.

The same pack files mean more or less depending on the configuration they are read
with: the agents in the groups the packs name, the time zone of their hours, and for
each asset its decimals and whether payees compare case-insensitively. A
:class:`PolicyContext` holds exactly that, so that the set recorded in force can be
rebuilt as it ran, its hash covers it (:func:`policy_set_sha256`), and a change of it
is judged like a change of packs (:func:`diff_context`). Pure.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from paywarden.policy.diff import PackChange, PackSetDiff, asks_second_operator, subjects
from paywarden.policy.packs import PackSet, PolicyPack, pack_set_sha256
from paywarden.policy.vocabulary import Asset, Direction

W, N = Direction.WIDENS, Direction.NARROWS


@dataclass(frozen=True, slots=True)
class PolicyContext:
    groups: Mapping[str, tuple[str, ...]]  # each group a pack names -> its agents, sorted
    timezone: str  # policy.timezone: the calendar of the packs' hours
    assets: Mapping[str, tuple[int, bool]]  # code -> (decimals, case-insensitive payees)

    def as_json(self) -> dict[str, Any]:
        return {
            "groups": {g: list(m) for g, m in sorted(self.groups.items())},
            "timezone": self.timezone,
            "assets": {
                code: {"decimals": d, "case_insensitive_payees": ci}
                for code, (d, ci) in sorted(self.assets.items())
            },
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> PolicyContext:
        """Raises KeyError, TypeError or ValueError on a malformed document."""
        groups = {str(g): tuple(str(a) for a in m) for g, m in dict(doc["groups"]).items()}
        assets = {
            str(code): (int(a["decimals"]), bool(a["case_insensitive_payees"]))
            for code, a in dict(doc["assets"]).items()
        }
        return cls(groups, str(doc["timezone"]), assets)


def policy_context(packs: PackSet, assets: Mapping[str, Asset], timezone: str) -> PolicyContext:
    """The context ``packs`` run with: the groups they name, resolved to their agents."""
    named = {g for p in packs.packs for g in p.model.groups}
    groups = {g: tuple(sorted(packs.groups.get(g, ()))) for g in sorted(named)}
    table = {code: (a.decimals, a.case_insensitive) for code, a in assets.items()}
    return PolicyContext(groups, timezone, table)


def policy_set_sha256(packs: PackSet, context: PolicyContext) -> str:
    """One hash for a set of packs and the context it is read with."""
    text = json.dumps(context.as_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{pack_set_sha256(packs)}\n{text}".encode()).hexdigest()


def _uses_asset(code: str, *packs: PolicyPack | None) -> bool:
    return any(p is not None and code in p.model.assets for p in packs)


def _has_hours(*packs: PolicyPack | None) -> bool:
    return any(p is not None and p.model.hours is not None for p in packs)


def _context_changes(
    before: PolicyPack | None, after: PolicyPack | None, old: PolicyContext, new: PolicyContext
) -> list[tuple[str, Direction, str]]:
    found: list[tuple[str, Direction, str]] = []
    if old.timezone != new.timezone and _has_hours(before, after):
        # The hours now fall at other instants: counted as widening.
        found.append(
            ("policy.timezone", W, f"hours read in {new.timezone} instead of {old.timezone}")
        )
    for code in sorted(set(old.assets) | set(new.assets)):
        if not _uses_asset(code, before, after):
            continue
        was, now = old.assets.get(code), new.assets.get(code)
        if was is None or now is None or was[0] != now[0]:
            found.append(
                (f"assets.{code}.decimals", W,
                 f"decimals of {code}: {was and was[0]} -> {now and now[0]} (amounts read "
                 "otherwise: counted as widening)")
            )  # fmt: skip
        if was is not None and now is not None and was[1] != now[1]:
            found.append(
                (f"assets.{code}.case_insensitive_payees", W if now[1] else N,
                 f"payees of {code} now compare "
                 + ("case-insensitively" if now[1] else "case-sensitively"))
            )  # fmt: skip
    return found


def diff_context(
    old: PackSet, new: PackSet, old_context: PolicyContext, new_context: PolicyContext
) -> PackSetDiff:
    """What reading the packs with ``new_context`` instead of ``old_context`` changes for
    each subject (the groups' members are already resolved in ``old`` and ``new``): a
    widening of a subject whose old or new pack is guarded needs a second operator."""
    changes: list[PackChange] = []
    second = False
    if old_context == new_context:
        return PackSetDiff(())
    for subject, before, after in subjects(old, new):
        found = [
            PackChange(subject, f, d, text)
            for f, d, text in _context_changes(before, after, old_context, new_context)
        ]
        if any(c.direction is W for c in found) and asks_second_operator(before, after):
            second = True
        changes += found
    return PackSetDiff(tuple(changes), second)


def merged(a: PackSetDiff, b: PackSetDiff) -> PackSetDiff:
    return PackSetDiff(a.changes + b.changes, a.needs_second_operator or b.needs_second_operator)

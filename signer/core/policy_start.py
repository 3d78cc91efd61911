"""Which packs a signer starts with, so that a restart is no way around a second operator.

The store keeps the pack set last in force (its files). At start-up the directory's
packs are compared with it: when they widen an agent whose pack in force or new pack
sets ``widening_needs_second_operator``, the signer starts with the set it had and
the directory's packs wait, like any other widening reload, for ``paywarden ctl
reload`` and a second operator. Any other change is taken (a restart is a reload:
its ``policy.load`` record carries both set hashes and what widens), and the set
started with is recorded in force.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from paywarden.policy import PackError, PackSet
from paywarden.policy.diff import PackSetDiff, diff_pack_sets
from paywarden.policy.packs import build_pack_set, pack_set_sha256, parse_pack
from paywarden.policy.vocabulary import Asset
from paywarden.signer.core.policy_set import PolicySet
from paywarden.signer.store.protocols import PolicyReloadStore

log = logging.getLogger("paywarden.signer.core.policy_start")


@dataclass(frozen=True, slots=True)
class StartingPacks:
    packs: PackSet  # what the signer runs with
    recorded_sha256: str | None  # the set the store held in force (None: none yet)
    diff: PackSetDiff | None  # from the recorded set to the directory's (None: no record)
    held: bool  # the directory's packs wait for a second operator; the recorded set runs


def starting_packs(
    store: PolicyReloadStore,
    directory_packs: PackSet,
    assets: Mapping[str, Asset],
    directory: Path,
    groups: Mapping[str, Iterable[str]],
) -> StartingPacks:
    """Raises :class:`PackError` when the directory's packs must wait but the recorded
    set no longer validates either: nothing can run unconfirmed (fail closed)."""
    recorded = store.policy_in_force()
    if recorded is None:
        return StartingPacks(directory_packs, None, None, False)
    sha256, files = recorded
    if sha256 == pack_set_sha256(directory_packs):
        return StartingPacks(directory_packs, sha256, None, False)
    try:
        kept = build_pack_set(
            [parse_pack(text.encode("utf-8"), directory / name) for name, text in files], groups
        )
    except PackError as exc:
        # The recorded set cannot even be read: judge the directory's on its own.
        log.error("the pack set recorded in force no longer validates: %s", exc)
        return StartingPacks(directory_packs, sha256, None, False)
    diff = diff_pack_sets(kept, directory_packs)
    if not (diff.widens and diff.needs_second_operator):
        return StartingPacks(directory_packs, sha256, diff, False)
    try:
        PolicySet.build(kept, assets)
    except PackError as exc:
        raise PackError(
            f"{directory} widens packs that need a second operator, and the set in force "
            f"before no longer validates ({exc}): restore the packs or confirm them"
        ) from None
    log.warning(
        "policy.dir widens %d thing(s) that need a second operator: starting with the set "
        "in force before (%s); `paywarden ctl reload` proposes the directory's packs",
        len(diff.widening()),
        sha256,
    )
    return StartingPacks(kept, sha256, diff, True)

"""Which packs a signer starts with, so that a restart is no way around a second operator.

The store keeps the pack set last in force (its files). At start-up the directory's
packs are compared with it: when they widen an agent whose pack in force or new pack
sets ``widening_needs_second_operator``, the signer starts with the set it had and
the directory's packs wait, like any other widening reload, for ``paywarden ctl
reload`` and a second operator. Any other change is taken (a restart is a reload:
its ``policy.load`` record carries both set hashes and what widens), and the set
started with is recorded in force. When the recorded set no longer builds (a group it
names is gone from the config), nothing can be judged: if any recorded pack asks for a
second operator the signer does not start; otherwise it takes the directory's packs and
the record says the set before could not be judged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from paywarden.policy import PackError, PackSet
from paywarden.policy.context import (
    PolicyContext,
    diff_context,
    merged,
    policy_context,
    policy_set_sha256,
)
from paywarden.policy.diff import PackSetDiff, diff_pack_sets
from paywarden.policy.packs import build_pack_set, pack_set_sha256, parse_pack
from paywarden.policy.vocabulary import Asset
from paywarden.signer.core.policy_set import PolicySet
from paywarden.signer.store.protocols import PolicyReloadStore

log = logging.getLogger("paywarden.signer.core.policy_start")


class StartRefused(Exception):
    """What the signer would start with cannot be judged, or widens what a second
    operator must confirm in a way a held start cannot hold back: nothing may start."""


@dataclass(frozen=True, slots=True)
class StartingPacks:
    packs: PackSet  # what the signer runs with
    recorded_sha256: str | None  # the set the store held in force (None: none yet)
    diff: PackSetDiff | None  # from the recorded set to the directory's (None: no record)
    held: bool  # the directory's packs wait for a second operator; the recorded set runs
    # Why the recorded set could not be judged against the directory's (None: it was,
    # or there was none); the directory's set was taken only as no recorded pack is guarded.
    unjudged: str | None = None
    read: PackSet | None = None  # the directory's packs (held or not)


def _guarded_files(files: Iterable[tuple[str, str]], directory: Path) -> list[str]:
    """The recorded pack files that ask for a second operator, each parsed alone (no
    groups resolved); a file that does not even parse alone counts as guarded."""
    out = []
    for name, text in files:
        try:
            guarded = parse_pack(
                text.encode("utf-8"), directory / name
            ).model.widening_needs_second_operator
        except PackError:
            guarded = True
        if guarded:
            out.append(name)
    return out


def _recorded_context(store: PolicyReloadStore) -> PolicyContext | None:
    doc = store.policy_context_in_force()
    if doc is None:
        return None
    try:
        return PolicyContext.from_json(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise PackError(f"the policy context recorded in force is malformed ({exc!r})") from None


def starting_packs(
    store: PolicyReloadStore,
    directory_packs: PackSet,
    assets: Mapping[str, Asset],
    directory: Path,
    groups: Mapping[str, Iterable[str]],
    timezone: str,
) -> StartingPacks:
    """What to start with, and what the directory held (:attr:`StartingPacks.read`).

    Raises :class:`PackError` or :class:`StartRefused` as :func:`_starting` does."""
    out = _starting(store, directory_packs, assets, directory, groups, timezone)
    return replace(out, read=directory_packs)


def _starting(
    store: PolicyReloadStore,
    directory_packs: PackSet,
    assets: Mapping[str, Asset],
    directory: Path,
    groups: Mapping[str, Iterable[str]],
    timezone: str,
) -> StartingPacks:
    """Raises :class:`PackError` when the directory's packs must wait but the recorded
    set no longer validates either, and :class:`StartRefused` when the recorded set
    cannot be built and a pack of it is guarded, or the config (time zone, assets)
    widens what a guarded pack covers: nothing can run unconfirmed (fail closed)."""
    recorded = store.policy_in_force()
    if recorded is None:
        return StartingPacks(directory_packs, None, None, False)
    sha256, files = recorded
    now_context = policy_context(directory_packs, assets, timezone)
    if sha256 == policy_set_sha256(directory_packs, now_context):
        return StartingPacks(directory_packs, sha256, None, False)
    try:
        context = _recorded_context(store)
        if context is None and sha256 == pack_set_sha256(directory_packs):
            # Recorded before the context was: the same packs, read as they were.
            return StartingPacks(directory_packs, sha256, None, False)
        # Rebuilt as it ran: with the groups it was built with, not today's.
        kept = build_pack_set(
            [parse_pack(text.encode("utf-8"), directory / name) for name, text in files],
            context.groups if context is not None else groups,
        )
    except PackError as exc:
        guarded = _guarded_files(files, directory)
        if guarded:
            raise StartRefused(
                f"the pack set in force before ({sha256}) no longer builds with this config "
                f"({exc}), and {', '.join(guarded)} asks for a second operator to widen what it "
                f"covers, so {directory} cannot be judged against it: not starting. Restore the "
                "config (groups) and packs the set in force was built with, start, and propose "
                "the new packs with `paywarden ctl reload` for a second operator to confirm"
            ) from None
        # No recorded pack is guarded: the directory's set is taken, and the record says
        # it was not judged against the one before.
        log.error("the pack set recorded in force no longer validates: %s", exc)
        return StartingPacks(directory_packs, sha256, None, False, unjudged=str(exc))
    if context is None:
        context = policy_context(kept, assets, timezone)
    by_config = diff_context(kept, directory_packs, context, now_context)
    diff = merged(diff_pack_sets(kept, directory_packs), by_config)
    if not (diff.widens and diff.needs_second_operator):
        return StartingPacks(directory_packs, sha256, diff, False)
    if by_config.widens and by_config.needs_second_operator:
        # The running signer reads its packs with this config: it cannot hold it back.
        what = "; ".join(f"{c.subject}: {c.field}: {c.description}" for c in by_config.widening())
        raise StartRefused(
            f"the config widens what packs that need a second operator cover ({what}): not "
            "starting. Restore policy.timezone and the assets as they were, or have a second "
            "operator confirm a reload that lifts the requirement first"
        )
    try:
        PolicySet.build(kept, assets, timezone)
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

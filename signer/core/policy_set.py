"""The policy packs in force, and how a reload replaces them whole.

A :class:`PolicySet` is a validated, compiled set of packs with its hash. The
:class:`LivePolicy` holds the one in force: a reader takes :meth:`LivePolicy.current`
once and works on that set to the end (a Sign decides on the set it started with),
and a reload puts a new set in place with one reference assignment, under
:attr:`LivePolicy.lock` so that two reloads never interleave. Sessions keep the pack
they were opened under (``pack_id``, version and hash): a payment in a session whose
pack changed is refused ``SESSION_PACK_CHANGED`` by :mod:`.policies`, exactly as
after a restart with new packs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from paywarden.policy import PackSet
from paywarden.policy.context import PolicyContext, policy_context, policy_set_sha256
from paywarden.policy.vocabulary import Asset
from paywarden.signer.core.policies import Policies


@dataclass(frozen=True)
class PolicySet:
    packs: PackSet
    policies: Policies  # the packs compiled
    sha256: str  # policy_set_sha256 of the packs and their context
    context: PolicyContext  # the groups, time zone and assets the packs are read with

    @classmethod
    def build(cls, packs: PackSet, assets: Mapping[str, Asset], timezone: str) -> PolicySet:
        """Compiles every pack (raises :class:`~paywarden.policy.PackError`, naming the
        pack file and field, as start-up does)."""
        context = policy_context(packs, assets, timezone)
        return cls(packs, Policies(packs.packs, assets), policy_set_sha256(packs, context), context)

    def texts(self) -> list[tuple[str, bytes]]:
        """Each pack's file name and bytes, in file-name order."""
        return sorted((Path(p.path).name, p.text) for p in self.packs.packs)

    def refs(self) -> list[dict[str, str | int]]:
        return [p.ref() for p in sorted(self.packs.packs, key=lambda p: p.id)]


class LivePolicy:
    """The set in force. Reading is one attribute read; replacing takes :attr:`lock`."""

    def __init__(self, initial: PolicySet) -> None:
        self._current = initial
        self.lock = threading.Lock()  # held by a reload from its check to its swap

    def current(self) -> PolicySet:
        return self._current

    def replace(self, new: PolicySet) -> None:
        """Puts ``new`` in force (the caller holds :attr:`lock` and has recorded it)."""
        self._current = new

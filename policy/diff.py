"""What a change of policy packs widens or narrows, agent by agent.

Two pack sets are compared the way the engine reads them: each agent is resolved to
its pack in the old set and in the new one (directly, or through its groups), and the
two packs are compared field by field. Each difference is one :class:`PackChange`:
``WIDENS`` when the agent may do something it could not (a higher or removed limit,
a new payee, asset or key, fewer approvals), ``NARROWS`` for the reverse, ``NEUTRAL``
when it changes no power (a description, a pack's id or version). A field this module
does not know is counted as widening: a diff never calls an unknown change safe.
Pure: packs in, changes out.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from paywarden.policy.diff_fields import N, W, diff_models
from paywarden.policy.packs import PackSet, PolicyPack
from paywarden.policy.vocabulary import Direction


@dataclass(frozen=True, slots=True, order=True)
class PackChange:
    subject: str  # "agent <id>", or "group <name>" for a group without known members
    field: str  # where in the pack, e.g. "assets.USD.max_per_payment"
    direction: Direction
    description: str

    def as_json(self) -> dict[str, str]:
        return {
            "subject": self.subject,
            "field": self.field,
            "direction": str(self.direction),
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class PackSetDiff:
    changes: tuple[PackChange, ...]
    # A widening change reaches an agent whose old or new pack asks for a second operator.
    needs_second_operator: bool = False

    @property
    def widens(self) -> bool:
        return any(c.direction is W for c in self.changes)

    def widening(self) -> tuple[PackChange, ...]:
        return tuple(c for c in self.changes if c.direction is W)

    def by_subject(self) -> dict[str, list[PackChange]]:
        out: dict[str, list[PackChange]] = {}
        for change in self.changes:
            out.setdefault(change.subject, []).append(change)
        return out


_GUARD = "widening_needs_second_operator"


def _coverage(old: PolicyPack | None, new: PolicyPack | None) -> list[tuple[str, Direction, str]]:
    if old is None and new is None:
        return []
    if old is None and new is not None:
        assets = ", ".join(sorted(new.model.assets))
        found = [("pack", W, f"newly covered by pack {new.id} v{new.version} (assets {assets})")]
        if asks_second_operator(new):
            found.append((_GUARD, N, f"second-operator guard added (pack {new.id})"))
        return found
    if new is None and old is not None:
        found = [("pack", N, f"no longer covered by any pack (was {old.id}): every payment denied")]
        if asks_second_operator(old):
            # Uncovering is a narrowing, but it drops the guard: the next reload could then
            # cover the agent again, as widely as it likes, with one operator.
            found.append(
                (_GUARD, W, f"second-operator guard removed (was pack {old.id}): a later "
                 "reload could cover this again without a second operator")
            )  # fmt: skip
        return found
    assert old is not None and new is not None
    if old.sha256 == new.sha256 and old.id == new.id:
        return []
    return diff_models(old.model, new.model)


def subjects(old: PackSet, new: PackSet) -> list[tuple[str, PolicyPack | None, PolicyPack | None]]:
    agents = set(old.by_agent) | set(new.by_agent)
    for groups in (old.groups, new.groups):
        agents |= {a for members in groups.values() for a in members}
    out = [(f"agent {a}", old.for_agent(a), new.for_agent(a)) for a in sorted(agents)]
    # A group bound to a pack whose members neither set knows: compared as itself.
    for group in sorted(set(old.by_group) | set(new.by_group)):
        if not old.groups.get(group) and not new.groups.get(group):
            out.append((f"group {group}", old.by_group.get(group), new.by_group.get(group)))
    return out


def asks_second_operator(*packs: PolicyPack | None) -> bool:
    return any(p is not None and p.model.widening_needs_second_operator for p in packs)


def diff_pack_sets(old: PackSet, new: PackSet) -> PackSetDiff:
    """What moving from ``old`` to ``new`` changes for each agent (and unbound group).

    A change needs a second operator when it widens a subject whose old or new pack asks
    for one. Dropping that guard is itself such a change, however it is done (the flag
    turned off, the pack removed, the agent or group moved out of it): otherwise one
    operator could remove the guard in one reload and widen freely in the next."""
    changes: list[PackChange] = []
    second = False
    for subject, before, after in subjects(old, new):
        found = [PackChange(subject, f, d, text) for f, d, text in _coverage(before, after)]
        if any(c.direction is W for c in found) and asks_second_operator(before, after):
            second = True
        changes += found
    return PackSetDiff(tuple(changes), second)


def pack_refs(packs: PackSet) -> list[Mapping[str, str | int]]:
    return [p.ref() for p in sorted(packs.packs, key=lambda p: p.id)]

"""``paywarden policy lint``: warnings on grants broader than a pack probably means.

Pure: packs (and, when the signer's store was read, the payments it signed) in,
warnings out. Each warning has a stable :class:`LintCode`, the pack, the path to the
field and a message. What is detected, exactly:

- ``PATTERN_MATCHES_ANY``: an allow pattern that matches every probe identifier: a
  fixed list of payee shapes and :data:`PROBES` identifiers drawn (with a fixed seed)
  from ASCII letters, digits and ``._-:@/+``, 1 to 40 characters long. Such a pattern
  admits, for practical purposes, any ASCII payee.
- ``PATTERN_WIDE``: an allow pattern that does not match every probe but matches at
  least :data:`WIDE_SHARE` of the random ones (an ``.*@.*``, a ``[a-z].*``: a class of
  payees, not a set of them). A prefix or suffix pattern (``acme-.*``) matches almost
  none. Patterns are tried with the case sensitivity of each of the pack's assets.
- ``NO_DAY_LIMIT``: an asset with neither ``daily_limit`` nor ``rolling_24h_limit``.
- ``NO_APPROVAL``: an asset with neither ``approval_above`` nor ``approval_tiers``.
- ``APPROVAL_UNREACHABLE``: an approval threshold at or above ``max_per_payment``
  (approval is asked strictly above it, and no payment may exceed the maximum).
- ``FIRST_PAYMENT_WITHOUT_APPROVAL``: ``payees.first_payment = "allow"``: a payee the agent never
  paid is paid without a human.
- ``SESSION_NO_PLAN``: ``sessions.require_plan`` is false: a session may pay any payee
  the pack allows, not only the lines of a committed plan.
- ``SESSION_NO_BUDGET``: an asset without ``sessions.max_budget``: no session can hold a
  budget in it, so the asset's grant is never usable.
- ``GROUP_COVERS_EVERY_AGENT``: a group of the pack holds every agent the configuration
  and the packs name (two or more).

With what the store recorded over a window of days (:class:`Observed`), only signed
payments, by the agents the pack covers:

- ``LIMIT_FAR_ABOVE_SPEND``: ``daily_limit`` above :data:`FAR_ABOVE` times the highest
  calendar-day spend of one agent; ``rolling_24h_limit`` above that times the highest
  two consecutive calendar days (an upper bound of any 24 hours); ``max_per_payment``
  above that times the largest payment. Only for an asset that was used.
- ``UNUSED_ASSET``, ``UNUSED_KEY``, ``UNUSED_PAYEE``, ``UNUSED_PATTERN``: an asset, a key
  of a used asset, an ``allow`` entry or an allow pattern no payment used.
"""

from __future__ import annotations

import datetime as dt
import random
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from paywarden.policy.packs import PackSet, PolicyPack
from paywarden.policy.payees import Pattern, compile_pattern, normalise
from paywarden.policy.vocabulary import Asset, FirstPaymentMode, format_amount


class LintCode(StrEnum):
    """A warning's code: its value never changes (scripts filter on it)."""

    PATTERN_MATCHES_ANY = "PATTERN_MATCHES_ANY"
    PATTERN_WIDE = "PATTERN_WIDE"
    NO_DAY_LIMIT = "NO_DAY_LIMIT"
    NO_APPROVAL = "NO_APPROVAL"
    APPROVAL_UNREACHABLE = "APPROVAL_UNREACHABLE"
    FIRST_PAYMENT_WITHOUT_APPROVAL = "FIRST_PAYMENT_WITHOUT_APPROVAL"
    SESSION_NO_PLAN = "SESSION_NO_PLAN"
    SESSION_NO_BUDGET = "SESSION_NO_BUDGET"
    GROUP_COVERS_EVERY_AGENT = "GROUP_COVERS_EVERY_AGENT"
    LIMIT_FAR_ABOVE_SPEND = "LIMIT_FAR_ABOVE_SPEND"
    UNUSED_ASSET = "UNUSED_ASSET"
    UNUSED_KEY = "UNUSED_KEY"
    UNUSED_PAYEE = "UNUSED_PAYEE"
    UNUSED_PATTERN = "UNUSED_PATTERN"


@dataclass(frozen=True, slots=True)
class LintWarning:
    code: LintCode
    pack: str  # the pack's id
    file: str  # the pack's file
    path: str  # the field, as the pack writes it: assets.USD.daily_limit, payees.allow[2]
    message: str


# -- probing patterns -----------------------------------------------------------------

PROBES = 512
WIDE_SHARE = 0.10
_ALPHABET = string.ascii_letters + string.digits + "._-:@/+"
_SHAPES = (
    "a", "Z", "7", "-", "acme-data", "ACME", "alice@example.com",
    "https://pay.example.com/merchants/42", "0x52908400098527886E0F7030069857D2E4169EE7",
    "acct_1Nv0FGQ9RKHgCVdK", "merchant:42", "x" * 200,
)  # fmt: skip


def _random_probes() -> tuple[str, ...]:
    rng = random.Random(20261201)  # fixed: the same probes on every run  # noqa: S311
    return tuple(
        "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 40))) for _ in range(PROBES)
    )


_RANDOM = _random_probes()


def _breadth(pattern: Pattern) -> tuple[bool, float]:
    """(matches every probe, share of the random probes it matches)."""
    hits = sum(1 for p in _RANDOM if pattern.fullmatch(p))
    every = hits == len(_RANDOM) and all(pattern.fullmatch(p) for p in _SHAPES)
    return every, hits / len(_RANDOM)


# -- what the store recorded -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedPayment:
    agent_id: str
    asset: str
    key_id: str
    payee_key: str
    amount_minor: int
    created_at: int


@dataclass
class Observed:
    """Signed payments over ``days`` calendar days, summed as the lint reads them."""

    days: int
    daily_peak: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    two_day_peak: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    largest: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    keys: set[tuple[str, str, str]] = field(default_factory=set)  # (agent, asset, key)
    payees: set[tuple[str, str, str]] = field(default_factory=set)  # (agent, asset, payee)

    @classmethod
    def of(cls, payments: Iterable[SignedPayment], tz: dt.tzinfo, days: int) -> Observed:
        """Each (agent, asset)'s peaks as ``(amount, agent)``; calendar days in ``tz``."""
        seen = cls(days)
        per_day: dict[tuple[str, str], dict[dt.date, int]] = {}
        for p in payments:
            day = dt.datetime.fromtimestamp(p.created_at, tz).date()
            sums = per_day.setdefault((p.agent_id, p.asset), {})
            sums[day] = sums.get(day, 0) + p.amount_minor
            big = seen.largest.get((p.agent_id, p.asset), (0, ""))
            seen.largest[p.agent_id, p.asset] = max(big, (p.amount_minor, p.agent_id))
            seen.keys.add((p.agent_id, p.asset, p.key_id))
            seen.payees.add((p.agent_id, p.asset, p.payee_key))
        for key, sums in per_day.items():
            seen.daily_peak[key] = (max(sums.values()), key[0])
            pairs = [v + sums.get(d + dt.timedelta(days=1), 0) for d, v in sums.items()]
            pairs += [v + sums.get(d - dt.timedelta(days=1), 0) for d, v in sums.items()]
            seen.two_day_peak[key] = (max(pairs), key[0])
        return seen


FAR_ABOVE = 10


# -- the lint ------------------------------------------------------------------------------


def _known_agents(packs: PackSet) -> set[str]:
    named = {a for p in packs.packs for a in p.model.agents}
    return named | {a for members in packs.groups.values() for a in members}


def covered_agents(packs: PackSet, pack: PolicyPack) -> list[str]:
    """The agents (named by the packs or the configuration's groups) ``pack`` decides for."""
    return sorted(a for a in _known_agents(packs) if packs.for_agent(a) is pack)


def lint(
    packs: PackSet, assets: Mapping[str, Asset], observed: Observed | None = None
) -> list[LintWarning]:
    """Every warning of every pack, in pack, then field order."""
    out: list[LintWarning] = []
    for pack in sorted(packs.packs, key=lambda p: p.id):
        out += _Pack(pack, packs, assets).warnings(observed)
    return out


class _Pack:
    def __init__(self, pack: PolicyPack, packs: PackSet, assets: Mapping[str, Asset]) -> None:
        self.pack = pack
        self.packs = packs
        self.assets = assets
        self.out: list[LintWarning] = []

    def warn(self, code: LintCode, path: str, message: str) -> None:
        self.out.append(LintWarning(code, self.pack.id, self.pack.path, path, message))

    def decimals(self, asset: str) -> int:
        known = self.assets.get(asset)
        return known.decimals if known is not None else 0

    def case_flags(self) -> list[bool]:
        flags = {
            self.assets[a].case_insensitive for a in self.pack.model.assets if a in self.assets
        }
        return sorted(flags) or [False]

    def warnings(self, observed: Observed | None) -> list[LintWarning]:
        self._patterns()
        self._assets()
        self._payees_and_sessions()
        self._groups()
        if observed is not None:
            _Usage(self, observed, covered_agents(self.packs, self.pack)).check()
        return self.out

    def _patterns(self) -> None:
        for i, text in enumerate(self.pack.model.payees.allow_patterns):
            every, share = False, 0.0
            for ci in self.case_flags():
                e, s = _breadth(compile_pattern(text, ci))
                every, share = every or e, max(share, s)
            where = f"payees.allow_patterns[{i}]"
            if every:
                self.warn(
                    LintCode.PATTERN_MATCHES_ANY,
                    where,
                    f"pattern {text!r} matches every probe identifier: it admits any ASCII payee",
                )
            elif share >= WIDE_SHARE:
                self.warn(
                    LintCode.PATTERN_WIDE,
                    where,
                    f"pattern {text!r} matches {share:.0%} of random identifiers: a class of "
                    "payees rather than named ones",
                )

    def _assets(self) -> None:
        for code, rules in sorted(self.pack.model.assets.items()):
            where = f"assets.{code}"
            if rules.daily_limit is None and rules.rolling_24h_limit is None:
                self.warn(
                    LintCode.NO_DAY_LIMIT,
                    where,
                    f"{code} has neither daily_limit nor rolling_24h_limit: only sessions' "
                    "budgets bound what the agent pays in a day",
                )
            ceiling = Decimal(rules.max_per_payment)
            steps = rules.approval_steps()
            if not steps:
                self.warn(
                    LintCode.NO_APPROVAL,
                    where,
                    f"{code} never asks a human: no approval_above and no approval_tiers",
                )
            for name, above, _ in steps:
                if Decimal(above) >= ceiling:
                    self.warn(
                        LintCode.APPROVAL_UNREACHABLE,
                        f"{where}.{name}",
                        f"approval above {above} is never asked: no payment may exceed "
                        f"max_per_payment {rules.max_per_payment}",
                    )
            if code not in self.pack.model.sessions.max_budget:
                self.warn(
                    LintCode.SESSION_NO_BUDGET,
                    f"sessions.max_budget.{code}",
                    f"no session may hold a {code} budget, so the {code} grant is never usable",
                )

    def _payees_and_sessions(self) -> None:
        m = self.pack.model
        if m.payees.first_payment is FirstPaymentMode.ALLOW:
            self.warn(
                LintCode.FIRST_PAYMENT_WITHOUT_APPROVAL,
                "payees.first_payment",
                "a payee the agent has never paid is paid without a human approving it",
            )
        if not m.sessions.require_plan:
            self.warn(
                LintCode.SESSION_NO_PLAN,
                "sessions.require_plan",
                "sessions need no committed plan: an agent may pay any payee the pack allows",
            )

    def _groups(self) -> None:
        everyone = _known_agents(self.packs)
        if len(everyone) < 2:
            return
        for i, group in enumerate(self.pack.model.groups):
            if everyone <= self.packs.groups.get(group, frozenset()):
                self.warn(
                    LintCode.GROUP_COVERS_EVERY_AGENT,
                    f"groups[{i}]",
                    f"group {group!r} holds every agent the configuration and packs name "
                    f"({len(everyone)})",
                )


class _Usage:
    """The checks against what the store recorded, for one pack."""

    def __init__(self, lint: _Pack, observed: Observed, agents: Sequence[str]) -> None:
        self.lint = lint
        self.seen = observed
        self.agents = agents

    def _peak(
        self, table: Mapping[tuple[str, str], tuple[int, str]], asset: str
    ) -> tuple[int, str]:
        return max((table.get((a, asset), (0, "")) for a in self.agents), default=(0, ""))

    def check(self) -> None:
        m = self.lint.pack.model
        span = f"in the last {self.seen.days} days"
        for code, rules in sorted(m.assets.items()):
            where = f"assets.{code}"
            if self._peak(self.seen.daily_peak, code)[0] == 0:
                self.lint.warn(
                    LintCode.UNUSED_ASSET, where, f"no agent of the pack paid in {code} {span}"
                )
                continue
            self._far("max_per_payment", rules.max_per_payment, self.seen.largest, code,
                      f"the largest payment {span}")  # fmt: skip
            self._far("daily_limit", rules.daily_limit, self.seen.daily_peak, code,
                      f"the highest calendar-day spend {span}")  # fmt: skip
            self._far("rolling_24h_limit", rules.rolling_24h_limit, self.seen.two_day_peak, code,
                      f"the highest two consecutive calendar days' spend {span}")  # fmt: skip
            labels = {(a, c, k.rpartition(".v")[0]) for a, c, k in self.seen.keys}
            for i, key in enumerate(rules.keys):
                # a label grant is used by a payment signed with any of its versions
                if not any(
                    (a, code, key) in self.seen.keys or (a, code, key) in labels
                    for a in self.agents
                ):
                    self.lint.warn(
                        LintCode.UNUSED_KEY,
                        f"{where}.keys[{i}]",
                        f"no {code} payment of the pack's agents was signed with {key} {span}",
                    )
        self._payees(span)

    def _far(
        self,
        name: str,
        limit: str | None,
        table: Mapping[tuple[str, str], tuple[int, str]],
        asset: str,
        what: str,
    ) -> None:
        if limit is None:
            return
        peak, agent = self._peak(table, asset)
        decimals = self.lint.decimals(asset)
        if peak and Decimal(limit).scaleb(decimals) > FAR_ABOVE * peak:
            self.lint.warn(
                LintCode.LIMIT_FAR_ABOVE_SPEND,
                f"assets.{asset}.{name}",
                f"{name} {limit} is more than {FAR_ABOVE}x {what} "
                f"({format_amount(peak, decimals)}, {agent})",
            )

    def _payees(self, span: str) -> None:
        m = self.lint.pack.model
        paid = {(asset, p) for a, asset, p in self.seen.payees if a in self.agents}
        ci = {c: self.lint.assets[c].case_insensitive for c in m.assets if c in self.lint.assets}
        for i, entry in enumerate(m.payees.allow):
            if not any((c, normalise(entry, case_insensitive=f)) in paid for c, f in ci.items()):
                self.lint.warn(
                    LintCode.UNUSED_PAYEE,
                    f"payees.allow[{i}]",
                    f"no agent of the pack paid {entry!r} {span}",
                )
        for i, text in enumerate(m.payees.allow_patterns):
            used = any(
                compile_pattern(text, ci.get(asset, False)).fullmatch(payee)
                for asset, payee in paid
            )
            if not used:
                self.lint.warn(
                    LintCode.UNUSED_PATTERN,
                    f"payees.allow_patterns[{i}]",
                    f"no payee the pack's agents paid {span} matches {text!r}",
                )

"""One policy pack against another, field by field (for :mod:`paywarden.policy.diff`).

Each difference is (field, direction, description): ``WIDENS`` when the agent may do
something it could not, ``NARROWS`` for the reverse, ``NEUTRAL`` when it changes no
power. A field this module does not know is counted as widening. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from paywarden.policy.packs import (
    AssetRules,
    Breaker,
    Diversity,
    Hours,
    PayeeRules,
    PolicyPackModel,
    SessionLimits,
    Velocity,
)
from paywarden.policy.vocabulary import Direction, FirstPaymentMode
from pydantic import BaseModel

W, N, NEUTRAL = Direction.WIDENS, Direction.NARROWS, Direction.NEUTRAL

# The fields compared one by one below; any other field of a model is compared whole
# and, when it differs, counted as widening (fail closed).
_KNOWN: dict[type[BaseModel], frozenset[str]] = {
    PolicyPackModel: frozenset(
        {
            "id", "version", "description", "agents", "groups", "assets", "payees",
            "velocity", "diversity", "hours", "breaker", "sessions",
            "widening_needs_second_operator",
        }
    ),
    AssetRules: frozenset(
        {"keys", "max_per_payment", "daily_limit", "rolling_24h_limit", "approval_above",
         "approval_tiers"}
    ),
    PayeeRules: frozenset({"allow", "allow_patterns", "deny", "deny_patterns", "first_payment"}),
    Breaker: frozenset(
        {"window_seconds", "max_rejections", "max_rejection_rate", "min_decisions", "max_spend",
         "max_payees"}
    ),
    SessionLimits: frozenset({"max_ttl_seconds", "max_budget", "require_plan"}),
    Velocity: frozenset({"max_payments", "window_seconds"}),
    Diversity: frozenset({"max_payees_per_session", "max_payees_per_day"}),
    Hours: frozenset({"start", "end"}),
}  # fmt: skip

# How much a first payment to a new payee is let through, least first.
_FIRST_PAYMENT = {FirstPaymentMode.DENY: 0, FirstPaymentMode.APPROVE: 1, FirstPaymentMode.ALLOW: 2}


@dataclass
class _Changes:
    found: list[tuple[str, Direction, str]] = field(default_factory=list)

    def add(self, where: str, direction: Direction, text: str) -> None:
        self.found.append((where, direction, text))


def _dec(text: str) -> Decimal:
    return Decimal(text)  # packs hold plain decimals only (validated)


def _limit(out: _Changes, where: str, old: str | None, new: str | None) -> None:
    """An amount ceiling where None means no ceiling at all."""
    if old is None and new is None:
        return
    if old is None:
        out.add(where, N, f"limit added: {new}")
    elif new is None:
        out.add(where, W, f"limit removed (was {old})")
    elif _dec(new) > _dec(old):
        out.add(where, W, f"raised from {old} to {new}")
    elif _dec(new) < _dec(old):
        out.add(where, N, f"lowered from {old} to {new}")


def _count(out: _Changes, where: str, old: float | None, new: float | None, unit: str = "") -> None:
    """A count ceiling where None means no ceiling (more is wider)."""
    if old == new:
        return
    if old is None:
        out.add(where, N, f"limit added: {new}{unit}")
    elif new is None:
        out.add(where, W, f"limit removed (was {old}{unit})")
    else:
        out.add(where, W if new > old else N, f"from {old}{unit} to {new}{unit}")


def _entries(
    out: _Changes, where: str, old: Sequence[str], new: Sequence[str], added: Direction, what: str
) -> None:
    removed = N if added is W else W
    for entry in sorted(set(new) - set(old)):
        out.add(where, added, f"{what} added: {entry!r}")
    for entry in sorted(set(old) - set(new)):
        out.add(where, removed, f"{what} removed: {entry!r}")


def _unknown(out: _Changes, where: str, old: BaseModel | None, new: BaseModel | None) -> None:
    model_type = type(old) if old is not None else type(new) if new is not None else None
    known = _KNOWN.get(model_type, frozenset()) if model_type is not None else frozenset()
    names: set[str] = set()
    for model in (old, new):
        if model is not None:
            names |= set(type(model).model_fields)
    for name in sorted(names - known):
        before = getattr(old, name, None) if old is not None else None
        after = getattr(new, name, None) if new is not None else None
        if before != after:
            out.add(
                f"{where}{name}",
                W,
                f"changed from {before!r} to {after!r} (a field the diff does not judge: "
                "counted as widening)",
            )


# -- approvals ---------------------------------------------------------------------------


def _tiers(rules: AssetRules) -> list[tuple[Decimal, int]]:
    return [(_dec(above), n) for _, above, n in rules.approval_steps()]


def _approvers(tiers: Iterable[tuple[Decimal, int]], at_least_above: Decimal) -> int:
    """Approvals a payment just above ``at_least_above`` needs (0: none)."""
    return max((n for above, n in tiers if above <= at_least_above), default=0)


def _approvals(out: _Changes, where: str, old: AssetRules, new: AssetRules) -> None:
    """Compares the two step functions amount → approvals, interval by interval:
    a threshold moved up, or fewer approvers, widens."""
    before, after = _tiers(old), _tiers(new)
    points = sorted({t for t, _ in before} | {t for t, _ in after})
    runs: list[tuple[Decimal, Decimal | None, int, int]] = []
    for i, low in enumerate(points):
        high = points[i + 1] if i + 1 < len(points) else None
        was, now = _approvers(before, low), _approvers(after, low)
        if runs and runs[-1][2:] == (was, now) and runs[-1][1] == low:
            runs[-1] = (runs[-1][0], high, was, now)
        else:
            runs.append((low, high, was, now))
    for low, high, was, now in runs:
        if was == now:
            continue
        span = f"above {low}" + (f" up to {high}" if high is not None else "")
        out.add(
            where,
            W if now < was else N,
            f"payments {span} need {now} approval(s) instead of {was}",
        )


# -- one pack against another ------------------------------------------------------------


def _asset(out: _Changes, code: str, old: AssetRules, new: AssetRules) -> None:
    at = f"assets.{code}."
    _entries(out, at + "keys", old.keys, new.keys, W, "key")
    _limit(out, at + "max_per_payment", old.max_per_payment, new.max_per_payment)
    _limit(out, at + "daily_limit", old.daily_limit, new.daily_limit)
    _limit(out, at + "rolling_24h_limit", old.rolling_24h_limit, new.rolling_24h_limit)
    _approvals(out, at + "approvals", old, new)
    _unknown(out, at, old, new)


def _assets(out: _Changes, old: PolicyPackModel, new: PolicyPackModel) -> None:
    for code in sorted(set(new.assets) - set(old.assets)):
        rules = new.assets[code]
        out.add(
            f"assets.{code}",
            W,
            f"asset {code} newly allowed (keys {', '.join(rules.keys)}; at most "
            f"{rules.max_per_payment} per payment)",
        )
    for code in sorted(set(old.assets) - set(new.assets)):
        out.add(f"assets.{code}", N, f"asset {code} no longer allowed")
    for code in sorted(set(old.assets) & set(new.assets)):
        _asset(out, code, old.assets[code], new.assets[code])


def _payees(out: _Changes, old: PayeeRules, new: PayeeRules) -> None:
    _entries(out, "payees.allow", old.allow, new.allow, W, "allowed payee")
    _entries(out, "payees.allow_patterns", old.allow_patterns, new.allow_patterns, W, "pattern")
    _entries(out, "payees.deny", old.deny, new.deny, N, "denied payee")
    _entries(out, "payees.deny_patterns", old.deny_patterns, new.deny_patterns, N, "pattern")
    if old.first_payment != new.first_payment:
        # A mode this table lacks counts as the widest.
        wider = _FIRST_PAYMENT.get(new.first_payment, 3) > _FIRST_PAYMENT.get(old.first_payment, 3)
        out.add(
            "payees.first_payment",
            W if wider else N,
            f"a first payment to a new payee: {old.first_payment} -> {new.first_payment}",
        )
    _unknown(out, "payees.", old, new)


def _velocity(out: _Changes, old: Velocity | None, new: Velocity | None) -> None:
    if old is None and new is None:
        return
    if old is None or new is None:
        if new is not None:
            text = f"{new.max_payments} payments per {new.window_seconds} s"
            out.add("velocity", N, f"limit added: {text}")
        elif old is not None:
            text = f"{old.max_payments} payments per {old.window_seconds} s"
            out.add("velocity", W, f"limit removed (was {text})")
        return
    _count(out, "velocity.max_payments", old.max_payments, new.max_payments, " per window")
    if old.window_seconds != new.window_seconds:
        # A shorter window forgets payments sooner: more of them in any longer stretch.
        out.add(
            "velocity.window_seconds",
            W if new.window_seconds < old.window_seconds else N,
            f"from {old.window_seconds} s to {new.window_seconds} s",
        )
    _unknown(out, "velocity.", old, new)


def _minutes(hours: Hours | None) -> set[int]:
    if hours is None:
        return set(range(1440))
    start, end = hours.minutes()
    return set(range(start, end)) if start < end else set(range(start, 1440)) | set(range(end))


def _spans(minutes: set[int]) -> str:
    runs: list[list[int]] = []
    for m in sorted(minutes):
        if runs and runs[-1][1] == m:
            runs[-1][1] = m + 1
        else:
            runs.append([m, m + 1])
    return ", ".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in runs)


def _hours(out: _Changes, old: Hours | None, new: Hours | None) -> None:
    before, after = _minutes(old), _minutes(new)
    if after - before:
        out.add("hours", W, f"now also allowed {_spans(after - before)}")
    if before - after:
        out.add("hours", N, f"no longer allowed {_spans(before - after)}")
    if old is not None and new is not None:
        _unknown(out, "hours.", old, new)


def _breaker(out: _Changes, old: Breaker | None, new: Breaker | None) -> None:
    if old is None and new is None:
        return
    if old is None:
        out.add("breaker", N, "circuit breaker added")
        return
    if new is None:
        out.add("breaker", W, "circuit breaker removed")
        return
    if old.window_seconds != new.window_seconds:
        # A longer window counts more, so it trips sooner.
        out.add(
            "breaker.window_seconds",
            W if new.window_seconds < old.window_seconds else N,
            f"from {old.window_seconds} s to {new.window_seconds} s",
        )
    _count(out, "breaker.max_rejections", old.max_rejections, new.max_rejections)
    _count(out, "breaker.max_rejection_rate", old.max_rejection_rate, new.max_rejection_rate)
    _count(out, "breaker.min_decisions", old.min_decisions, new.min_decisions)
    for code in sorted(set(old.max_spend) | set(new.max_spend)):
        _limit(out, f"breaker.max_spend.{code}", old.max_spend.get(code), new.max_spend.get(code))
    _count(out, "breaker.max_payees", old.max_payees, new.max_payees)
    _unknown(out, "breaker.", old, new)


def _sessions(out: _Changes, old: SessionLimits, new: SessionLimits) -> None:
    _count(out, "sessions.max_ttl_seconds", old.max_ttl_seconds, new.max_ttl_seconds, " s")
    for code in sorted(set(old.max_budget) | set(new.max_budget)):
        # No ceiling for an asset means no session may hold a budget in it.
        before, after = old.max_budget.get(code), new.max_budget.get(code)
        where = f"sessions.max_budget.{code}"
        if before is None and after is not None:
            out.add(where, W, f"sessions may now hold a {code} budget, up to {after}")
        elif after is None and before is not None:
            out.add(where, N, f"sessions may no longer hold a {code} budget (was up to {before})")
        elif before is not None and after is not None:
            _limit(out, where, before, after)
    if old.require_plan != new.require_plan:
        out.add(
            "sessions.require_plan",
            N if new.require_plan else W,
            "plan-bound sessions now required" if new.require_plan else "plan no longer required",
        )
    _unknown(out, "sessions.", old, new)


def diff_models(old: PolicyPackModel, new: PolicyPackModel) -> list[tuple[str, Direction, str]]:
    """Every difference between two packs, as (field, direction, description)."""
    out = _Changes()
    if old.id != new.id:
        out.add(
            "id",
            NEUTRAL,
            f"now under pack {new.id} instead of {old.id}: sessions opened under {old.id} "
            "are refused (SESSION_PACK_CHANGED)",
        )
    elif old.version != new.version:
        out.add("version", NEUTRAL, f"version {old.version} -> {new.version}")
    if old.description != new.description:
        out.add("description", NEUTRAL, "description changed")
    _assets(out, old, new)
    _payees(out, old.payees, new.payees)
    _velocity(out, old.velocity, new.velocity)
    d_old, d_new = old.diversity, new.diversity
    _count(out, "diversity.max_payees_per_session", d_old.max_payees_per_session,
           d_new.max_payees_per_session)  # fmt: skip
    _count(out, "diversity.max_payees_per_day", d_old.max_payees_per_day,
           d_new.max_payees_per_day)  # fmt: skip
    _unknown(out, "diversity.", d_old, d_new)
    _hours(out, old.hours, new.hours)
    _breaker(out, old.breaker, new.breaker)
    _sessions(out, old.sessions, new.sessions)
    if old.widening_needs_second_operator != new.widening_needs_second_operator:
        out.add(
            "widening_needs_second_operator",
            N if new.widening_needs_second_operator else W,
            "a widening reload now needs a second operator"
            if new.widening_needs_second_operator
            else "a widening reload no longer needs a second operator",
        )
    _unknown(out, "", old, new)
    return out.found

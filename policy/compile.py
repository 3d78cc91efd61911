"""Turns a validated pack into rules over integer amounts, and checks sessions
against the pack (a session may only narrow what its pack allows)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from paywarden.policy.engine import AllOf, Rule
from paywarden.policy.packs import PackError, PolicyPack
from paywarden.policy.payees import (
    ADMITTED,
    PatternError,
    PayeeLists,
    compile_pattern,
    normalise,
)
from paywarden.policy.rules import (
    AllowedHours,
    ApprovalTiers,
    AssetAllowed,
    AssetInSession,
    DailyDiversity,
    DailyLimit,
    FirstPayment,
    KeyAllowed,
    MaxPerPayment,
    NoPack,
    PackChanged,
    PayeeAllowed,
    PayeeInSession,
    PayeeNotDenied,
    PlanLineAvailable,
    Rolling24hLimit,
    SessionDiversity,
    SessionNotExpired,
    SessionOpen,
    SessionPhase,
    Velocity,
    WithinSessionBudget,
)
from paywarden.policy.vocabulary import AmountError, Asset, Reason, parse_amount


def to_minor(text: str, decimals: int, where: str) -> int:
    """A pack's amount in minor units (:func:`~paywarden.policy.vocabulary.parse_amount`);
    :class:`PackError` names ``where``."""
    try:
        return parse_amount(text, decimals).minor
    except AmountError as exc:
        if exc.reason == Reason.AMOUNT_TOO_PRECISE:
            raise PackError(
                f"{where}: {text!r} has more than the asset's {decimals} decimals"
            ) from None
        raise PackError(f"{where}: {text!r} is not a plain decimal") from None


def session_rules() -> list[Rule]:
    """The session-binding rules every payment passes, before the pack's own."""
    return [SessionOpen(), SessionNotExpired(), SessionPhase(), AssetInSession(), PayeeInSession()]


def no_pack_policy() -> AllOf:
    return AllOf([*session_rules(), NoPack()])


def pack_changed_policy(
    pack: Mapping[str, str | int], why: str = "the session was opened under another policy pack"
) -> AllOf:
    """The policy of a session whose pack changed under it: it denies everything."""
    return AllOf([PackChanged(str(pack.get("id")), why)], pack)


def compile_pack(pack: PolicyPack, assets: Mapping[str, Asset]) -> AllOf:
    """Raises :class:`PackError` when the pack names an asset the signer lacks
    or an amount finer than the asset's decimals (fail closed at start-up)."""
    m = pack.model
    where = pack.path
    for code in m.assets:
        if code not in assets:
            raise PackError(f"{where}: field assets.{code}: the signer has no asset {code}")
    ci = {code: assets[code].case_insensitive for code in m.assets}

    def limits(attr: str) -> dict[str, int]:
        out = {}
        for code, rules in m.assets.items():
            value = getattr(rules, attr)
            if value is not None:
                out[code] = to_minor(value, assets[code].decimals, f"{where}: assets.{code}.{attr}")
        return out

    tiers: dict[str, tuple[tuple[int, int], ...]] = {}
    for code, rules in m.assets.items():
        decimals = assets[code].decimals
        tiers[code] = tuple(
            (to_minor(above, decimals, f"{where}: assets.{code}.{field}"), approvers)
            for field, above, approvers in rules.approval_steps()
        )
    for code, ceiling in m.sessions.max_budget.items():
        to_minor(ceiling, assets[code].decimals, f"{where}: sessions.max_budget.{code}")
    if m.breaker is not None:
        for code, ceiling in m.breaker.max_spend.items():
            if code not in assets:
                raise PackError(f"{where}: field breaker.max_spend.{code}: no asset {code}")
            to_minor(ceiling, assets[code].decimals, f"{where}: breaker.max_spend.{code}")
    payee_lists = {code: _payee_lists(pack, ci[code]) for code in m.assets}
    rules_: list[Rule] = [
        *session_rules(),
        AssetAllowed(frozenset(m.assets)),
        KeyAllowed({code: frozenset(r.keys) for code, r in m.assets.items()}),
        PayeeNotDenied(payee_lists),
        PayeeAllowed(payee_lists),
        MaxPerPayment(limits("max_per_payment")),
        DailyLimit(limits("daily_limit")),
        Rolling24hLimit(limits("rolling_24h_limit")),
    ]
    if m.velocity is not None:
        rules_.append(Velocity(m.velocity.max_payments, m.velocity.window_seconds))
    if m.diversity.max_payees_per_session is not None:
        rules_.append(SessionDiversity(m.diversity.max_payees_per_session))
    if m.diversity.max_payees_per_day is not None:
        rules_.append(DailyDiversity(m.diversity.max_payees_per_day))
    if m.hours is not None:
        start, end = m.hours.minutes()
        rules_.append(AllowedHours(start, end))
    rules_ += [
        WithinSessionBudget(),
        PlanLineAvailable(),
        FirstPayment(m.payees.first_payment),
        ApprovalTiers(tiers),
    ]
    return AllOf(rules_, pack.ref())


# -- sessions within their pack -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionViolation:
    reason: Reason
    message: str


def _payee_lists(pack: PolicyPack, case_insensitive: bool) -> PayeeLists:
    p = pack.model.payees
    for field in ("allow_patterns", "deny_patterns"):
        for i, pattern in enumerate(getattr(p, field)):
            try:
                compile_pattern(pattern, case_insensitive)
            except PatternError as exc:
                raise PackError(f"{pack.path}: field payees.{field}.{i}: {exc}") from None
    return PayeeLists.build(
        allow=p.allow,
        deny=p.deny,
        allow_patterns=p.allow_patterns,
        deny_patterns=p.deny_patterns,
        case_insensitive=case_insensitive,
    )


def payee_allowed_by_pack(pack: PolicyPack, payee: str, info: Asset) -> SessionViolation | None:
    """The pack's payee rules, as a payment to ``payee`` meets them, for a session's
    or a plan's payee list."""
    lists = _payee_lists(pack, info.case_insensitive)
    key = normalise(payee, case_insensitive=info.case_insensitive)
    denied = lists.denial(payee, key)
    if denied is not None:
        return SessionViolation(denied.reason, f"payee {payee!r}: {denied.detail}")
    admitted = lists.admission(payee, key)
    if admitted.reason in ADMITTED:
        return None
    return SessionViolation(admitted.reason, f"payee {payee!r}: {admitted.detail}")


def check_session(
    pack: PolicyPack,
    assets: Mapping[str, Asset],
    budgets_minor: Mapping[str, int],
    ttl_seconds: int,
    allowed_payees: Sequence[str],
    plan_bound: bool,
) -> SessionViolation | None:
    """A session may only narrow its pack: budgets, lifetime and payees within it."""
    s = pack.model.sessions
    if ttl_seconds > s.max_ttl_seconds:
        return SessionViolation(
            Reason.SESSION_TTL_ABOVE_PACK, f"ttl_seconds is above the pack's {s.max_ttl_seconds}"
        )
    if s.require_plan and not plan_bound:
        return SessionViolation(Reason.PLAN_REQUIRED, "the pack requires plan-bound sessions")
    for code, budget in budgets_minor.items():
        if code not in pack.model.assets:
            return SessionViolation(Reason.ASSET_NOT_ALLOWED, f"the pack does not allow {code}")
        ceiling = s.max_budget.get(code)
        if ceiling is None:
            return SessionViolation(
                Reason.SESSION_BUDGET_ABOVE_PACK, f"the pack sets no session budget for {code}"
            )
        if budget > to_minor(ceiling, assets[code].decimals, f"{pack.path}: max_budget.{code}"):
            return SessionViolation(
                Reason.SESSION_BUDGET_ABOVE_PACK, f"the {code} budget is above the pack's {ceiling}"
            )
    for payee in allowed_payees:
        for code in budgets_minor:
            violation = payee_allowed_by_pack(pack, payee, assets[code])
            if violation is not None:
                return violation
    return None


def compile_all(packs: Sequence[PolicyPack], assets: Mapping[str, Asset]) -> dict[str, AllOf]:
    return {pack.id: compile_pack(pack, assets) for pack in packs}

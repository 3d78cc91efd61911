"""The rules: one small class, one reason code each.

A rule reads :class:`Facts` and returns a :class:`RuleResult` with its
outcome, the limit it enforces and the value it observed. Limits are held in
the asset's smallest unit (integers), compiled from a pack by
:mod:`paywarden.policy.compile`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from paywarden.policy.engine import Facts, RuleResult
from paywarden.policy.payees import ADMITTED, PayeeLists
from paywarden.policy.vocabulary import FirstPaymentMode, Outcome, Phase, Reason, SessionState


def _ok(
    rule: str, reason: Reason, limit: str | None = None, observed: str | None = None, **kw: object
) -> RuleResult:
    return RuleResult(rule, Outcome.ALLOW, reason, limit, observed, **kw)  # type: ignore[arg-type]


def _deny(
    rule: str, reason: Reason, detail: str, limit: str | None = None, observed: str | None = None
) -> RuleResult:
    return RuleResult(rule, Outcome.DENY, reason, limit, observed, detail)


# -- session state -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionOpen:
    name: str = "session_open"

    def check(self, facts: Facts) -> RuleResult:
        state, open_ = facts.session.state, SessionState.OPEN
        if state != open_:
            return _deny(self.name, Reason.SESSION_CLOSED, "the session is closed", open_, state)
        return _ok(self.name, Reason.SESSION_OPEN, open_, state)


@dataclass(frozen=True, slots=True)
class SessionNotExpired:
    name: str = "session_not_expired"

    def check(self, facts: Facts) -> RuleResult:
        limit, now = str(facts.session.expires_at), str(facts.now)
        if facts.now >= facts.session.expires_at:
            return _deny(self.name, Reason.SESSION_EXPIRED, "the session has expired", limit, now)
        return _ok(self.name, Reason.SESSION_LIVE, limit, now)


@dataclass(frozen=True, slots=True)
class SessionPhase:
    """Nothing is signed while a plan-bound session is still exploring."""

    name: str = "session_phase"

    def check(self, facts: Facts) -> RuleResult:
        phase = facts.session.phase
        if phase == Phase.EXPLORE:
            return _deny(
                self.name,
                Reason.SESSION_IN_EXPLORE_PHASE,
                "the session has no committed plan yet; nothing can be signed",
                Phase.EXECUTE,
                phase,
            )
        return _ok(self.name, Reason.SESSION_PHASE_OK, None, phase)


@dataclass(frozen=True, slots=True)
class AssetInSession:
    name: str = "asset_in_session"

    def check(self, facts: Facts) -> RuleResult:
        budgets = ",".join(sorted(facts.session.budgets_minor))
        if facts.asset not in facts.session.budgets_minor:
            return _deny(
                self.name,
                Reason.ASSET_NOT_IN_SESSION,
                f"the session has no budget in {facts.asset}",
                budgets,
                facts.asset,
            )
        return _ok(self.name, Reason.ASSET_IN_SESSION, budgets, facts.asset)


@dataclass(frozen=True, slots=True)
class PayeeInSession:
    name: str = "payee_in_session"

    def check(self, facts: Facts) -> RuleResult:
        allowed = facts.session.allowed_payees
        if not allowed:
            return _ok(self.name, Reason.SESSION_ANY_PAYEE, None, facts.payee)
        if facts.payee not in allowed:
            return _deny(
                self.name,
                Reason.PAYEE_NOT_IN_SESSION,
                "the payee is not in the session's payee list",
                f"{len(allowed)} payees",
                facts.payee,
            )
        return _ok(self.name, Reason.PAYEE_IN_SESSION, f"{len(allowed)} payees", facts.payee)


@dataclass(frozen=True, slots=True)
class WithinSessionBudget:
    """Spent (and held) so far plus this amount must not exceed the session budget."""

    name: str = "session_budget"

    def check(self, facts: Facts) -> RuleResult:
        budget = facts.session.budgets_minor.get(facts.asset)
        if budget is None:
            return _deny(self.name, Reason.ASSET_NOT_IN_SESSION, f"no budget in {facts.asset}")
        after = facts.session.spent_minor.get(facts.asset, 0) + facts.amount_minor
        if after > budget:
            return _deny(
                self.name,
                Reason.BUDGET_EXCEEDED,
                "the payment would exceed the session's budget",
                facts.units(budget),
                facts.units(after),
            )
        return _ok(self.name, Reason.WITHIN_BUDGET, facts.units(budget), facts.units(after))


@dataclass(frozen=True, slots=True)
class PlanLineAvailable:
    """In the execute phase a payment must match an unused line of the committed plan."""

    name: str = "plan_line"

    def check(self, facts: Facts) -> RuleResult:
        if facts.session.phase != Phase.EXECUTE:
            return _ok(self.name, Reason.NO_PLAN, None, facts.session.phase)
        matching = [
            (i, line)
            for i, line in enumerate(facts.session.plan)
            if line.payee_key == facts.payee and line.asset == facts.asset
        ]
        # Best fit: the unused line with the smallest maximum that covers the
        # amount, so that a small payment never uses up a line a larger one needs.
        fitting = [
            (line.max_amount_minor, i, line)
            for i, line in matching
            if facts.amount_minor <= line.max_amount_minor and line.used < line.count
        ]
        if fitting:
            _, i, line = min(fitting, key=lambda t: (t[0], t[1]))
            return _ok(
                self.name,
                Reason.PLAN_LINE_MATCHED,
                f"line {i}: {line.used}/{line.count} used, "
                f"max {facts.units(line.max_amount_minor)}",
                facts.units(facts.amount_minor),
                plan_line=i,
            )
        if not matching:
            detail = "no plan line names this payee and asset"
        elif any(facts.amount_minor <= line.max_amount_minor for _, line in matching):
            detail = "the plan lines that cover this amount are used up"
        else:
            detail = "the amount is above every matching plan line's maximum"
        return _deny(
            self.name, Reason.PLAN_NO_MATCH, detail, f"{len(facts.session.plan)} lines", facts.payee
        )


# -- what the pack grants ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssetAllowed:
    assets: frozenset[str]
    name: str = "asset_allowed"

    def check(self, facts: Facts) -> RuleResult:
        limit = ",".join(sorted(self.assets))
        if facts.asset not in self.assets:
            return _deny(
                self.name,
                Reason.ASSET_NOT_ALLOWED,
                "the pack does not allow this asset",
                limit,
                facts.asset,
            )
        return _ok(self.name, Reason.ASSET_ALLOWED, limit, facts.asset)


@dataclass(frozen=True, slots=True)
class KeyAllowed:
    keys_by_asset: Mapping[str, frozenset[str]]
    name: str = "key_allowed"

    def check(self, facts: Facts) -> RuleResult:
        keys = self.keys_by_asset.get(facts.asset, frozenset())
        limit = ",".join(sorted(keys))
        # facts.key_id is the exact version signing; a pack grants it by that id, or by
        # its label (the label's active version: the signer resolved it so).
        label = facts.key_id.rpartition(".v")[0]
        if facts.key_id not in keys and label not in keys:
            return _deny(
                self.name,
                Reason.KEY_NOT_ALLOWED,
                f"the pack does not allow key {facts.key_id} for {facts.asset}",
                limit,
                facts.key_id,
            )
        return _ok(self.name, Reason.KEY_ALLOWED, limit, facts.key_id)


def _payee_text(facts: Facts) -> str:
    """The payee as the agent wrote it (NFC): what is signed. Facts built without
    it carry only the key, which then stands for itself."""
    return facts.payee_text or facts.payee


_NO_LISTS = PayeeLists.build(
    allow=(), deny=(), allow_patterns=(), deny_patterns=(), case_insensitive=False
)


@dataclass(frozen=True, slots=True)
class PayeeNotDenied:
    """Deny entries and deny patterns catch the payee as written, its key and its
    look-alikes (``PAYEE_LOOKS_DENYLISTED``)."""

    lists: Mapping[str, PayeeLists]  # asset -> the pack's payee lists for it
    name: str = "payee_denylist"

    def check(self, facts: Facts) -> RuleResult:
        lists = self.lists.get(facts.asset, _NO_LISTS)
        found = lists.denial(_payee_text(facts), facts.payee)
        if found is not None:
            return _deny(self.name, found.reason, found.detail, found.limit, facts.payee)
        return _ok(self.name, Reason.PAYEE_NOT_DENYLISTED, None, facts.payee)


@dataclass(frozen=True, slots=True)
class PayeeAllowed:
    """Named payees, then patterns (ASCII payees only), each in its canonical
    spelling only; a look-alike of a named payee is refused even if a pattern
    matches it."""

    lists: Mapping[str, PayeeLists]  # asset -> the pack's payee lists for it
    name: str = "payee_allowlist"

    def check(self, facts: Facts) -> RuleResult:
        lists = self.lists.get(facts.asset, _NO_LISTS)
        found = lists.admission(_payee_text(facts), facts.payee)
        if found.reason in ADMITTED:
            return _ok(self.name, found.reason, found.limit, facts.payee)
        return _deny(self.name, found.reason, found.detail, found.limit, facts.payee)


# -- limits ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaxPerPayment:
    limits: Mapping[str, int]
    name: str = "max_per_payment"

    def check(self, facts: Facts) -> RuleResult:
        limit = self.limits.get(facts.asset)
        if limit is None:
            return _deny(self.name, Reason.ASSET_NOT_ALLOWED, "no per-payment limit for this asset")
        if facts.amount_minor > limit:
            return _deny(
                self.name,
                Reason.AMOUNT_ABOVE_MAX,
                "the amount is above the per-payment maximum",
                facts.units(limit),
                facts.units(facts.amount_minor),
            )
        return _ok(
            self.name, Reason.AMOUNT_WITHIN_MAX, facts.units(limit), facts.units(facts.amount_minor)
        )


@dataclass(frozen=True, slots=True)
class DailyLimit:
    """Per agent and asset, over the calendar day in the policy time zone."""

    limits: Mapping[str, int]
    name: str = "daily_limit"

    def check(self, facts: Facts) -> RuleResult:
        limit = self.limits.get(facts.asset)
        if limit is None:
            return _ok(self.name, Reason.NO_DAILY_LIMIT)
        after = facts.agent.spent_today_minor + facts.amount_minor
        if after > limit:
            return _deny(
                self.name,
                Reason.DAILY_LIMIT_EXCEEDED,
                "the agent's spend today would exceed the daily limit",
                facts.units(limit),
                facts.units(after),
            )
        return _ok(self.name, Reason.WITHIN_DAILY_LIMIT, facts.units(limit), facts.units(after))


@dataclass(frozen=True, slots=True)
class Rolling24hLimit:
    limits: Mapping[str, int]
    name: str = "rolling_24h_limit"

    def check(self, facts: Facts) -> RuleResult:
        limit = self.limits.get(facts.asset)
        if limit is None:
            return _ok(self.name, Reason.NO_ROLLING_LIMIT)
        after = facts.agent.spent_24h_minor + facts.amount_minor
        if after > limit:
            return _deny(
                self.name,
                Reason.ROLLING_LIMIT_EXCEEDED,
                "the agent's spend over the last 24 hours would exceed the limit",
                facts.units(limit),
                facts.units(after),
            )
        return _ok(self.name, Reason.WITHIN_ROLLING_LIMIT, facts.units(limit), facts.units(after))


@dataclass(frozen=True, slots=True)
class Velocity:
    max_payments: int
    window_seconds: int
    name: str = "velocity"

    def check(self, facts: Facts) -> RuleResult:
        after = facts.agent.payments_in_window + 1
        limit = f"{self.max_payments} per {self.window_seconds}s"
        if after > self.max_payments:
            return _deny(
                self.name,
                Reason.VELOCITY_EXCEEDED,
                "too many payments by this agent in the window",
                limit,
                str(after),
            )
        return _ok(self.name, Reason.WITHIN_VELOCITY, limit, str(after))


@dataclass(frozen=True, slots=True)
class SessionDiversity:
    max_payees: int
    name: str = "session_diversity"

    def check(self, facts: Facts) -> RuleResult:
        after = facts.session.payees_after()
        if not facts.session.payee_seen and after > self.max_payees:
            return _deny(
                self.name,
                Reason.SESSION_DIVERSITY_EXCEEDED,
                "too many distinct payees in this session",
                str(self.max_payees),
                str(after),
            )
        return _ok(self.name, Reason.WITHIN_SESSION_DIVERSITY, str(self.max_payees), str(after))


@dataclass(frozen=True, slots=True)
class DailyDiversity:
    max_payees: int
    name: str = "daily_diversity"

    def check(self, facts: Facts) -> RuleResult:
        after = facts.agent.payees_today_after()
        if not facts.agent.payee_seen_today and after > self.max_payees:
            return _deny(
                self.name,
                Reason.DAILY_DIVERSITY_EXCEEDED,
                "too many distinct payees for this agent today",
                str(self.max_payees),
                str(after),
            )
        return _ok(self.name, Reason.WITHIN_DAILY_DIVERSITY, str(self.max_payees), str(after))


@dataclass(frozen=True, slots=True)
class AllowedHours:
    start_minute: int
    end_minute: int  # exclusive; end < start spans midnight
    name: str = "allowed_hours"

    def check(self, facts: Facts) -> RuleResult:
        m, s, e = facts.minute_of_day, self.start_minute, self.end_minute
        inside = s <= m < e if s <= e else (m >= s or m < e)
        limit = f"{s // 60:02d}:{s % 60:02d}-{e // 60:02d}:{e % 60:02d}"
        observed = f"{m // 60:02d}:{m % 60:02d}"
        if not inside:
            return _deny(
                self.name,
                Reason.OUTSIDE_ALLOWED_HOURS,
                "payments are not allowed now",
                limit,
                observed,
            )
        return _ok(self.name, Reason.WITHIN_ALLOWED_HOURS, limit, observed)


# -- human approval ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FirstPayment:
    """A payee this agent has never paid: allow, require approval, or deny."""

    mode: FirstPaymentMode
    name: str = "first_payment"

    def check(self, facts: Facts) -> RuleResult:
        if facts.agent.payee_paid_before:
            return _ok(self.name, Reason.PAYEE_PAID_BEFORE, self.mode, "paid before")
        if self.mode == FirstPaymentMode.DENY:
            return _deny(
                self.name,
                Reason.FIRST_PAYMENT_DENIED,
                "the agent has never paid this payee and the pack denies first payments",
                self.mode,
                "first payment",
            )
        if self.mode == FirstPaymentMode.APPROVE:
            return RuleResult(
                self.name,
                Outcome.APPROVE,
                Reason.FIRST_PAYMENT_NEEDS_APPROVAL,
                self.mode,
                "first payment",
                "a first payment to this payee needs human approval",
                approvers=1,
            )
        return _ok(self.name, Reason.FIRST_PAYMENT_ALLOWED, self.mode, "first payment")


@dataclass(frozen=True, slots=True)
class ApprovalTiers:
    """Amounts above a tier's threshold need that tier's number of approvers."""

    tiers: Mapping[str, tuple[tuple[int, int], ...]]  # asset -> ((above_minor, approvers), ...)
    name: str = "approval_threshold"

    def check(self, facts: Facts) -> RuleResult:
        tiers = self.tiers.get(facts.asset, ())
        needed = [(above, k) for above, k in tiers if facts.amount_minor > above]
        if not needed:
            lowest = min((above for above, _ in tiers), default=None)
            return _ok(
                self.name,
                Reason.BELOW_APPROVAL_THRESHOLD,
                None if lowest is None else facts.units(lowest),
                facts.units(facts.amount_minor),
            )
        above, k = max(needed, key=lambda t: (t[1], t[0]))
        return RuleResult(
            self.name,
            Outcome.APPROVE,
            Reason.AMOUNT_NEEDS_APPROVAL,
            facts.units(above),
            facts.units(facts.amount_minor),
            f"payments above {facts.units(above)} need {k} distinct approver(s)",
            approvers=k,
        )


@dataclass(frozen=True, slots=True)
class NoPack:
    """The agent has no policy pack: nothing is allowed."""

    name: str = "policy_pack"

    def check(self, facts: Facts) -> RuleResult:
        return _deny(self.name, Reason.NO_POLICY_PACK, "no policy pack applies to this agent")


@dataclass(frozen=True, slots=True)
class PackChanged:
    """The session was opened under another pack, or under a version of this pack it
    no longer fits: nothing is allowed in it."""

    pack_id: str
    why: str
    name: str = "policy_pack"

    def check(self, facts: Facts) -> RuleResult:
        return _deny(self.name, Reason.SESSION_PACK_CHANGED, self.why, self.pack_id)

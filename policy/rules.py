"""Session rules: one class, one reason code each."""

from __future__ import annotations

from dataclasses import dataclass

from paywarden.policy.engine import AllOf, Facts, Outcome, RuleResult


def _ok(
    rule: str, reason: str, limit: str | None = None, observed: str | None = None
) -> RuleResult:
    return RuleResult(rule, Outcome.ALLOW, reason, limit, observed)


def _deny(
    rule: str, reason: str, detail: str, limit: str | None = None, observed: str | None = None
) -> RuleResult:
    return RuleResult(rule, Outcome.DENY, reason, limit, observed, detail)


@dataclass(frozen=True, slots=True)
class SessionOpen:
    name: str = "session_open"

    def check(self, facts: Facts) -> RuleResult:
        if facts.session.state != "open":
            return _deny(
                self.name, "SESSION_CLOSED", "the session is closed", "open", facts.session.state
            )
        return _ok(self.name, "SESSION_OPEN", "open", facts.session.state)


@dataclass(frozen=True, slots=True)
class SessionNotExpired:
    name: str = "session_not_expired"

    def check(self, facts: Facts) -> RuleResult:
        limit, now = str(facts.session.expires_at), str(facts.now)
        if facts.now >= facts.session.expires_at:
            return _deny(self.name, "SESSION_EXPIRED", "the session has expired", limit, now)
        return _ok(self.name, "SESSION_LIVE", limit, now)


@dataclass(frozen=True, slots=True)
class AssetInSession:
    name: str = "asset_in_session"

    def check(self, facts: Facts) -> RuleResult:
        budgets = sorted(facts.session.budgets_minor)
        if facts.asset not in facts.session.budgets_minor:
            return _deny(
                self.name,
                "ASSET_NOT_IN_SESSION",
                f"the session has no budget in {facts.asset}",
                ",".join(budgets),
                facts.asset,
            )
        return _ok(self.name, "ASSET_IN_SESSION", ",".join(budgets), facts.asset)


@dataclass(frozen=True, slots=True)
class PayeeInSession:
    name: str = "payee_in_session"

    def check(self, facts: Facts) -> RuleResult:
        allowed = facts.session.allowed_payees
        if not allowed:
            return _ok(self.name, "SESSION_ANY_PAYEE", None, facts.payee)
        if facts.payee not in allowed:
            return _deny(
                self.name,
                "PAYEE_NOT_IN_SESSION",
                "the payee is not in the session's payee list",
                f"{len(allowed)} payees",
                facts.payee,
            )
        return _ok(self.name, "PAYEE_IN_SESSION", f"{len(allowed)} payees", facts.payee)


@dataclass(frozen=True, slots=True)
class WithinSessionBudget:
    """Spent so far plus this amount must not exceed the session's budget."""

    name: str = "session_budget"

    def check(self, facts: Facts) -> RuleResult:
        budget = facts.session.budgets_minor.get(facts.asset)
        if budget is None:
            return _deny(self.name, "ASSET_NOT_IN_SESSION", f"no budget in {facts.asset}")
        after = facts.session.spent_minor.get(facts.asset, 0) + facts.amount_minor
        if after > budget:
            return _deny(
                self.name,
                "BUDGET_EXCEEDED",
                "the payment would exceed the session's budget",
                str(budget),
                str(after),
            )
        return _ok(self.name, "WITHIN_BUDGET", str(budget), str(after))


def session_policy() -> AllOf:
    """The rules every payment passes today (later issues add policy packs)."""
    return AllOf(
        (
            SessionOpen(),
            SessionNotExpired(),
            AssetInSession(),
            PayeeInSession(),
            WithinSessionBudget(),
        )
    )

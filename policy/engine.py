"""Decisions, facts and the evaluation loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class SessionFacts:
    session_id: str
    agent_id: str
    state: str  # "open" or "closed"
    expires_at: int
    budgets_minor: Mapping[str, int]
    spent_minor: Mapping[str, int]
    allowed_payees: frozenset[str]


@dataclass(frozen=True, slots=True)
class Facts:
    """What the signer read (inside the deciding transaction) about one payment."""

    now: int
    agent_id: str
    payee: str
    asset: str
    amount_minor: int
    key_id: str
    session: SessionFacts


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    outcome: Outcome
    reason: str
    limit: str | None = None
    observed: str | None = None
    detail: str = ""

    def as_json(self) -> dict[str, str | None]:
        return {
            "rule": self.rule,
            "outcome": str(self.outcome),
            "reason": self.reason,
            "limit": self.limit,
            "observed": self.observed,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str
    message: str
    trace: tuple[RuleResult, ...] = field(default_factory=tuple)

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


class Rule(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, facts: Facts) -> RuleResult: ...


@dataclass(frozen=True, slots=True)
class AllOf:
    """Allows only when every rule allows. An empty list is refused."""

    rules: Sequence[Rule]

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("an empty policy allows nothing and is refused")


Policy = AllOf

NO_RULE_ALLOWED = "POLICY_NO_RULE_ALLOWED"


def evaluate(policy: Policy, facts: Facts) -> Decision:
    """Runs every rule in order (the trace is complete even after a denial).

    The first denying rule gives the decision's reason. A rule that raises
    is a bug: the exception propagates and the caller denies.
    """
    trace = tuple(rule.check(facts) for rule in policy.rules)
    for result in trace:
        if result.outcome is not Outcome.ALLOW:
            return Decision(Outcome.DENY, result.reason, result.detail, trace)
    if not trace:
        return Decision(Outcome.DENY, NO_RULE_ALLOWED, "no rule allowed the payment", trace)
    return Decision(Outcome.ALLOW, "ALLOWED", "every rule allowed the payment", trace)

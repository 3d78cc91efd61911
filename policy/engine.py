"""Decisions, facts and the evaluation loop.

Deny by default: a payment is allowed only when the rules that grant (asset,
key, payee) allow it explicitly and no rule denies. A rule may also ask for
human approval; then the decision is NEEDS_APPROVAL with the largest number
of approvers any rule asked for. Every rule runs, so the trace is complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from paywarden.policy.vocabulary import (
    Outcome,
    Phase,
    PlanLine,
    Reason,
    SessionState,
    Verdict,
    format_amount,
)


@dataclass(frozen=True, slots=True)
class SessionFacts:
    session_id: str
    agent_id: str
    state: SessionState
    phase: Phase
    expires_at: int
    budgets_minor: Mapping[str, int]
    spent_minor: Mapping[str, int]
    allowed_payees: frozenset[str]  # normalised keys; empty: any payee the pack allows
    payees: int = 0  # how many distinct payees were paid or held in the session
    payee_seen: bool = False  # this payment's payee is one of them
    plan: tuple[PlanLine, ...] = ()

    def payees_after(self) -> int:
        """Distinct payees of the session with this payment's counted in."""
        return self.payees if self.payee_seen else self.payees + 1


@dataclass(frozen=True, slots=True)
class AgentFacts:
    spent_24h_minor: int = 0  # in this payment's asset, signed or held
    spent_today_minor: int = 0  # calendar day in the policy time zone
    payments_in_window: int = 0  # velocity window of the agent's pack
    payee_paid_before: bool = False  # this payee was paid (signed, or allowed and live)
    payees_today: int = 0  # how many distinct payees were paid or held today
    payee_seen_today: bool = False  # this payment's payee is one of them

    def payees_today_after(self) -> int:
        """Distinct payees of the day with this payment's counted in."""
        return self.payees_today if self.payee_seen_today else self.payees_today + 1


@dataclass(frozen=True, slots=True)
class Facts:
    """What the signer read, inside the deciding transaction, about one payment."""

    now: int
    minute_of_day: int  # local time in the policy time zone, 0..1439
    agent_id: str
    payee: str  # normalised key (NFC, case-folded if the asset is case-insensitive)
    asset: str
    amount_minor: int
    key_id: str
    session: SessionFacts
    agent: AgentFacts = field(default_factory=AgentFacts)
    decimals: int = 0  # of the asset: traces show amounts in its units ("12.50")
    # The payee as written (NFC), as it is signed: deny patterns see it as well as the
    # key, and the payee is matched only if folding it changes nothing but ASCII case.
    payee_text: str = ""

    def units(self, minor: int) -> str:
        return format_amount(minor, self.decimals)


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    outcome: Outcome
    reason: Reason
    limit: str | None = None
    observed: str | None = None
    detail: str = ""
    approvers: int = 0  # with Outcome.APPROVE: how many distinct approvers
    plan_line: int | None = None  # the plan line this payment uses

    def as_json(self) -> dict[str, str | int | None]:
        out: dict[str, str | int | None] = {
            "rule": self.rule,
            "outcome": str(self.outcome),
            "reason": str(self.reason),
            "limit": self.limit,
            "observed": self.observed,
            "detail": self.detail,
        }
        if self.approvers:
            out["approvers"] = self.approvers
        if self.plan_line is not None:
            out["plan_line"] = self.plan_line
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: Reason
    message: str
    trace: tuple[RuleResult, ...] = ()
    approvers: int = 0
    plan_line: int | None = None
    pack: Mapping[str, str | int] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    def trace_json(self) -> list[dict[str, str | int | None]]:
        return [r.as_json() for r in self.trace]


class Rule(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, facts: Facts) -> RuleResult: ...


@dataclass(frozen=True, slots=True)
class AllOf:
    """Allows only when every rule allows. An empty list is refused."""

    rules: Sequence[Rule]
    pack: Mapping[str, str | int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rules:
            raise ValueError("an empty policy allows nothing and is refused")


Policy = AllOf


def evaluate(policy: Policy, facts: Facts) -> Decision:
    """Runs every rule in order; the first denial gives the reason.

    A rule that raises is a bug: the exception propagates and the caller denies.
    """
    trace = tuple(rule.check(facts) for rule in policy.rules)
    if not trace:
        return Decision(
            Verdict.DENY, Reason.POLICY_NO_RULE_ALLOWED, "no rule allowed the payment", trace
        )
    plan_line = next((r.plan_line for r in trace if r.plan_line is not None), None)
    for result in trace:
        if result.outcome is Outcome.DENY:
            return Decision(Verdict.DENY, result.reason, result.detail, trace, pack=policy.pack)
    approvals = [r for r in trace if r.outcome is Outcome.APPROVE]
    if approvals:
        top = max(approvals, key=lambda r: r.approvers)
        return Decision(
            Verdict.NEEDS_APPROVAL,
            top.reason,
            top.detail,
            trace,
            approvers=max(1, top.approvers),
            plan_line=plan_line,
            pack=policy.pack,
        )
    for result in trace:
        if result.outcome is not Outcome.ALLOW:
            return Decision(
                Verdict.DENY, Reason.POLICY_NO_RULE_ALLOWED, "unknown rule outcome", trace
            )
    return Decision(
        Verdict.ALLOW,
        Reason.ALLOWED,
        "every rule allowed the payment",
        trace,
        plan_line=plan_line,
        pack=policy.pack,
    )

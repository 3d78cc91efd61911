"""The circuit breaker's judgement: does an agent's recent activity, with the
payment being decided counted in, pass one of its pack's thresholds?

Pure, like the rules: the signer reads the window's counts from its store and
passes them in; a tripped breaker turns the decision into a denial
(``BREAKER_TRIPPED``) and the signer freezes the agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from paywarden.policy.compile import to_minor
from paywarden.policy.engine import Decision, RuleResult
from paywarden.policy.packs import Breaker
from paywarden.policy.vocabulary import Asset, Outcome, Reason, Verdict, format_amount


class WindowCounts(Protocol):
    """An agent's activity over the breaker's window."""

    @property
    def decisions(self) -> int: ...
    @property
    def denials(self) -> int: ...
    @property
    def spend_minor(self) -> Mapping[str, int]: ...
    @property
    def payees(self) -> int: ...  # how many distinct payees


def breaker_trips(
    breaker: Breaker, window: WindowCounts, assets: Mapping[str, Asset]
) -> str | None:
    """Why the breaker trips on ``window`` (None: it does not)."""
    span = f"in {breaker.window_seconds} s"
    if breaker.max_rejections is not None and window.denials > breaker.max_rejections:
        return f"{window.denials} rejections {span} (more than {breaker.max_rejections})"
    if (
        breaker.max_rejection_rate is not None
        and window.decisions >= breaker.min_decisions
        and window.denials / window.decisions > breaker.max_rejection_rate
    ):
        rate = window.denials / window.decisions
        return f"rejection rate {rate:.2f} {span} (above {breaker.max_rejection_rate})"
    for asset, ceiling in sorted(breaker.max_spend.items()):
        info = assets.get(asset)
        if info is None:
            continue
        limit = to_minor(ceiling, info.decimals, f"breaker.max_spend.{asset}")
        if window.spend_minor.get(asset, 0) > limit:
            spent = format_amount(window.spend_minor[asset], info.decimals)
            return f"{asset} spend {spent} {span} (above {ceiling})"
    if breaker.max_payees is not None and window.payees > breaker.max_payees:
        return f"{window.payees} distinct payees {span} (more than {breaker.max_payees})"
    return None


def breaker_denial(decision: Decision, why: str) -> Decision:
    """``decision`` denied by the breaker, its trace ending with the breaker's result."""
    result = RuleResult(
        "circuit_breaker",
        Outcome.DENY,
        Reason.BREAKER_TRIPPED,
        None,
        None,
        f"this payment would trip the agent's circuit breaker: {why}",
    )
    return Decision(
        Verdict.DENY, result.reason, result.detail, (*decision.trace, result), pack=decision.pack
    )

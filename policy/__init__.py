"""The embedded policy engine: pure rules over facts, deny by default.

A rule reads the :class:`Facts` it is given and returns a :class:`RuleResult`;
:func:`evaluate` runs a :class:`Policy` (all its rules, in order) and returns a
:class:`Decision` whose trace lists every rule with its outcome, reason code,
limit and observed value. Nothing here does I/O or knows about gRPC.
"""

from paywarden.policy.engine import (
    AllOf,
    Decision,
    Facts,
    Outcome,
    Policy,
    Rule,
    RuleResult,
    SessionFacts,
    evaluate,
)
from paywarden.policy.rules import (
    AssetInSession,
    PayeeInSession,
    SessionNotExpired,
    SessionOpen,
    WithinSessionBudget,
    session_policy,
)

__all__ = [
    "AllOf",
    "AssetInSession",
    "Decision",
    "Facts",
    "Outcome",
    "PayeeInSession",
    "Policy",
    "Rule",
    "RuleResult",
    "SessionFacts",
    "SessionNotExpired",
    "SessionOpen",
    "WithinSessionBudget",
    "evaluate",
    "session_policy",
]

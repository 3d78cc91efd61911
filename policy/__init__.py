"""The embedded policy engine: pure rules over facts, deny by default.

Packs (TOML, :mod:`paywarden.policy.packs`) are compiled into an
:class:`AllOf` of small rules (:mod:`paywarden.policy.rules`). :func:`evaluate`
runs every rule over the :class:`Facts` the signer read inside its deciding
transaction and returns a :class:`Decision` whose trace lists each rule with
its outcome, reason code, limit and observed value. Nothing here does I/O
beyond reading pack files, and nothing knows about gRPC or the store.

The words every layer shares (reason codes, outcomes and states, amounts,
assets, plan lines) live in :mod:`paywarden.policy.vocabulary`, the bottom of
the stack.
"""

from paywarden.policy.compile import (
    SessionViolation,
    check_session,
    compile_all,
    compile_pack,
    no_pack_policy,
    pack_changed_policy,
    payee_allowed_by_pack,
    to_minor,
)
from paywarden.policy.engine import (
    AgentFacts,
    AllOf,
    Decision,
    Facts,
    Policy,
    Rule,
    RuleResult,
    SessionFacts,
    evaluate,
)
from paywarden.policy.packs import PackError, PackSet, PolicyPack, load_pack, load_pack_dir
from paywarden.policy.payees import normalise
from paywarden.policy.vocabulary import Asset, Outcome, PlanLine, Reason, Verdict

__all__ = [
    "AgentFacts",
    "AllOf",
    "Asset",
    "Decision",
    "Facts",
    "Outcome",
    "PackError",
    "PackSet",
    "PlanLine",
    "Policy",
    "PolicyPack",
    "Reason",
    "Rule",
    "RuleResult",
    "SessionFacts",
    "SessionViolation",
    "Verdict",
    "check_session",
    "compile_all",
    "compile_pack",
    "evaluate",
    "load_pack",
    "load_pack_dir",
    "no_pack_policy",
    "normalise",
    "pack_changed_policy",
    "payee_allowed_by_pack",
    "to_minor",
]

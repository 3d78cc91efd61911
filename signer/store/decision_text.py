"""A decision's trace and pack reference as the store keeps them: JSON text.

Only the store serialises them; everywhere else they are typed values
(:class:`~paywarden.policy.engine.RuleResult`, :class:`~.records.PackRef`). The text
is what the signer has always written, so stored rows read back unchanged:
the trace as ``json.dumps`` of each rule's ``as_json()``, the pack with sorted keys.
"""

from __future__ import annotations

import json
from typing import Any

from paywarden.policy.engine import RuleResult
from paywarden.policy.vocabulary import Outcome, Reason
from paywarden.signer.store.records import PackRef


def trace_text(trace: tuple[RuleResult, ...]) -> str:
    return json.dumps([r.as_json() for r in trace])


def pack_text(pack: PackRef | None) -> str:
    return json.dumps(pack.as_json() if pack is not None else {}, sort_keys=True)


def trace_of(text: str) -> tuple[RuleResult, ...]:
    return tuple(_rule_result(step) for step in json.loads(text or "[]"))


def pack_of(text: str) -> PackRef | None:
    return PackRef.of(json.loads(text or "{}"))


def _rule_result(step: dict[str, Any]) -> RuleResult:
    return RuleResult(
        rule=str(step["rule"]),
        outcome=Outcome(step["outcome"]),
        reason=Reason(step["reason"]),
        limit=step["limit"],
        observed=step["observed"],
        detail=str(step["detail"]),
        approvers=int(step.get("approvers", 0)),
        plan_line=step.get("plan_line"),
    )

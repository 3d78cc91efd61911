"""Plans of plan-bound sessions: validated against the session and its pack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from paywarden.policy import PolicyPack, normalise, payee_allowed_by_pack
from paywarden.policy.vocabulary import Asset, PlanLine
from paywarden.signer.core.payments import MAX_PAYEE
from paywarden.signer.core.validation import clean_text, parse_amount
from paywarden.signer.errors import Denied, InvalidInput, Reason
from paywarden.signer.store.records import SessionRecord

MAX_PLAN_LINES = 100
MAX_LINE_COUNT = 1000

PlanInput = tuple[str, str, str, int]  # payee, asset, max_amount, count


def validate_plan(
    session: SessionRecord,
    lines: Sequence[PlanInput],
    pack: PolicyPack,
    assets: Mapping[str, Asset],
) -> tuple[PlanLine, ...]:
    """A plan may only narrow its session and pack; raises on the first bad line."""
    if not 1 <= len(lines) <= MAX_PLAN_LINES:
        raise InvalidInput(Reason.PLAN_INVALID, f"a plan has 1 to {MAX_PLAN_LINES} lines")
    out: list[PlanLine] = []
    for i, (payee, asset, max_amount, count) in enumerate(lines):
        where = f"lines[{i}]"
        if asset not in session.budgets_minor:
            raise InvalidInput(Reason.PLAN_INVALID, f"{where}: the session has no {asset} budget")
        info = assets[asset]
        name = clean_text(f"{where}.payee", payee, max_len=MAX_PAYEE)
        key = normalise(name, case_insensitive=info.case_insensitive)
        limit = parse_amount(f"{where}.max_amount", max_amount, info)
        if limit.minor > session.budgets_minor[asset]:
            raise InvalidInput(Reason.PLAN_INVALID, f"{where}: max_amount is above the budget")
        if not 1 <= count <= MAX_LINE_COUNT:
            raise InvalidInput(Reason.PLAN_INVALID, f"{where}: count must be 1 to {MAX_LINE_COUNT}")
        listed = {
            normalise(p, case_insensitive=info.case_insensitive) for p in session.allowed_payees
        }
        if listed and key not in listed:
            raise Denied(
                Reason.PAYEE_NOT_IN_SESSION, f"{where}: the payee is not in the session's list"
            )
        violation = payee_allowed_by_pack(pack, name, info)
        if violation is not None:
            raise Denied(violation.reason, f"{where}: {violation.message}")
        out.append(PlanLine(name, key, asset, limit.minor, count))
    return tuple(out)

"""The ``mandate`` rule, pure: every bound a mandate sets on one payment, at its edge."""

from __future__ import annotations

from dataclasses import replace

import pytest
from paywarden.policy.engine import Decision, RuleResult
from paywarden.policy.vocabulary import Outcome, Reason, Verdict
from paywarden.signer.core.mandate_checks import (
    MandatePayment,
    mandate_result,
    with_mandate,
)
from paywarden.signer.store.records import MandateRecord, MandateUse

NOW = 1_800_000_000
MANDATE = MandateRecord(
    id="ab" * 32,
    agent_id="agent-1",
    holder_jkt="x" * 43,
    issuer="bank-1",
    asset="USD",
    terms_sha256="00" * 32,
    terms="{}",
    min_minor=100,
    max_minor=5_000,
    budget_minor=10_000,
    max_uses=3,
    spacing_seconds=86_400,
    not_before=NOW - 10,
    reference="order-7",
    expires_at=NOW + 3_600,
    created_at=NOW - 100,
)
PAY = MandatePayment("USD", 3_000, "order-7")


def test_a_payment_inside_every_bound_is_allowed_with_what_it_brings_the_mandate_to() -> None:
    result = mandate_result(MANDATE, MandateUse(6_000, 2, NOW - 86_400), PAY, NOW)
    assert (result.outcome, result.reason) == (Outcome.ALLOW, Reason.WITHIN_MANDATE)
    assert (result.limit, result.observed) == ("10000", "9000")


@pytest.mark.parametrize(
    ("mandate", "use", "payment", "now", "reason"),
    [
        (replace(MANDATE, revoked_at=NOW - 1), MandateUse(), PAY, NOW, Reason.MANDATE_REVOKED),
        (MANDATE, MandateUse(), PAY, NOW + 3_600, Reason.MANDATE_EXPIRED),
        (MANDATE, MandateUse(), replace(PAY, asset="EUR"), NOW, Reason.ASSET_NOT_IN_SESSION),
        (MANDATE, MandateUse(), PAY, NOW - 11, Reason.MANDATE_NOT_YET_EXECUTABLE),
        (
            MANDATE,
            MandateUse(),
            replace(PAY, amount_minor=99),
            NOW,
            Reason.MANDATE_AMOUNT_OUT_OF_RANGE,
        ),
        (
            MANDATE,
            MandateUse(),
            replace(PAY, amount_minor=5_001),
            NOW,
            Reason.MANDATE_AMOUNT_OUT_OF_RANGE,
        ),
        (
            MANDATE,
            MandateUse(),
            replace(PAY, reference="order-8"),
            NOW,
            Reason.MANDATE_REFERENCE_MISMATCH,
        ),
        (MANDATE, MandateUse(0, 3, None), PAY, NOW, Reason.MANDATE_USES_EXHAUSTED),
        (MANDATE, MandateUse(0, 1, NOW - 86_399), PAY, NOW, Reason.MANDATE_TOO_SOON),
        (MANDATE, MandateUse(7_001, 1, NOW - 86_400), PAY, NOW, Reason.MANDATE_BUDGET_EXCEEDED),
    ],
)
def test_each_bound_denies_just_past_its_edge(
    mandate: MandateRecord, use: MandateUse, payment: MandatePayment, now: int, reason: Reason
) -> None:
    result = mandate_result(mandate, use, payment, now)
    assert (result.outcome, result.reason) == (Outcome.DENY, reason)


def test_the_edges_themselves_are_inside() -> None:
    at_edges = [
        (MandateUse(7_000, 2, NOW - 86_400), PAY),  # budget reached exactly
        (MandateUse(), replace(PAY, amount_minor=100)),
        (MandateUse(), replace(PAY, amount_minor=5_000)),
    ]
    for use, payment in at_edges:
        assert mandate_result(MANDATE, use, payment, NOW).outcome is Outcome.ALLOW
    assert mandate_result(MANDATE, MandateUse(), PAY, NOW - 10).outcome is Outcome.ALLOW


def test_a_mandate_without_optional_bounds_checks_only_budget_and_expiry() -> None:
    open_ended = replace(
        MANDATE,
        min_minor=None,
        max_minor=None,
        max_uses=None,
        spacing_seconds=None,
        not_before=None,
        reference=None,
    )
    payment = MandatePayment("USD", 10_000, "")
    assert mandate_result(open_ended, MandateUse(0, 99, NOW), payment, NOW).outcome is Outcome.ALLOW
    over = replace(payment, amount_minor=10_001)
    assert (
        mandate_result(open_ended, MandateUse(), over, NOW).reason is Reason.MANDATE_BUDGET_EXCEEDED
    )


def test_the_mandate_denies_over_an_allowing_or_approving_policy_and_never_allows_a_denial() -> (
    None
):
    deny = RuleResult("mandate", Outcome.DENY, Reason.MANDATE_BUDGET_EXCEEDED, detail="over")
    allow = RuleResult("mandate", Outcome.ALLOW, Reason.WITHIN_MANDATE)
    approving = Decision(Verdict.NEEDS_APPROVAL, Reason.AMOUNT_NEEDS_APPROVAL, "ask", approvers=1)
    denied = with_mandate(approving, deny)
    assert (denied.verdict, denied.reason) == (Verdict.DENY, Reason.MANDATE_BUDGET_EXCEEDED)
    assert denied.trace[-1] is deny
    kept = with_mandate(approving, allow)
    assert (kept.verdict, kept.approvers, kept.trace[-1]) == (Verdict.NEEDS_APPROVAL, 1, allow)
    policy_denial = Decision(Verdict.DENY, Reason.BUDGET_EXCEEDED, "no")
    still = with_mandate(policy_denial, allow)
    assert (still.verdict, still.reason) == (Verdict.DENY, Reason.BUDGET_EXCEEDED)

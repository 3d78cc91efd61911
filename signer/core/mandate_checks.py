"""A payment held to the mandate its session was opened from, in the deciding transaction.

The mandate's row and its use over every session opened from it are read under the
write lock of the transaction that records the decision (:meth:`PaymentTx.mandate`),
and the reservation this decision makes carries the mandate's id: the next decision,
in any session of the same mandate and on any replica, counts it. So a mandate's
budget, its number of uses and its spacing hold whatever the concurrency.

The result is one more rule in the decision's trace (``mandate``): a payment outside
the mandate is denied and recorded like any other denial, with its reason code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from paywarden.policy.engine import Decision, RuleResult
from paywarden.policy.vocabulary import Outcome, Reason, Verdict
from paywarden.signer.store.mandate_protocols import MandateTx
from paywarden.signer.store.records import (
    InvariantBroken,
    MandateRecord,
    MandateUse,
    SessionRecord,
)

RULE = "mandate"


@dataclass(frozen=True, slots=True)
class MandatePayment:
    """What the mandate judges of one payment (amounts in the asset's minor units)."""

    asset: str
    amount_minor: int
    reference: str


def _deny(
    reason: Reason, detail: str, limit: str | None = None, observed: str | None = None
) -> RuleResult:
    return RuleResult(RULE, Outcome.DENY, reason, limit, observed, detail)


def mandate_ended(mandate: MandateRecord, now: int) -> tuple[Reason, str] | None:
    """Why nothing more of ``mandate`` may be signed: it is revoked (or its agent key is),
    or it has expired. None: neither."""
    if mandate.revoked_at is not None:
        return Reason.MANDATE_REVOKED, "the session's mandate was revoked"
    if now >= mandate.expires_at:
        return Reason.MANDATE_EXPIRED, "the session's mandate has expired"
    return None


def mandate_gone(tx: MandateTx, session: SessionRecord, now: int) -> tuple[Reason, str] | None:
    """:func:`mandate_ended` for the session's mandate, read in the caller's transaction
    (None as well for a session without one): an unsigned payment whose mandate ended
    is not signed on retry, and no vote is taken on it."""
    if session.mandate_id is None:
        return None
    found = tx.mandate(session.mandate_id, now)
    if found is None:
        raise InvariantBroken(f"the session's mandate {session.mandate_id} is not stored")
    return mandate_ended(found[0], now)


def mandate_result(
    mandate: MandateRecord, use: MandateUse, payment: MandatePayment, now: int
) -> RuleResult:
    """The ``mandate`` rule's result for ``payment`` at ``now``, given what already
    counts against the mandate (``use``)."""
    m = mandate
    ended = mandate_ended(m, now)
    if ended is not None:
        return _deny(*ended)
    if payment.asset != m.asset:
        return _deny(Reason.ASSET_NOT_IN_SESSION, f"the mandate bounds payments in {m.asset} only")
    if m.not_before is not None and now < m.not_before:
        return _deny(
            Reason.MANDATE_NOT_YET_EXECUTABLE,
            "the mandate's execution date has not come yet",
            str(m.not_before),
            str(now),
        )
    amount = payment.amount_minor
    if (m.min_minor is not None and amount < m.min_minor) or (
        m.max_minor is not None and amount > m.max_minor
    ):
        return _deny(
            Reason.MANDATE_AMOUNT_OUT_OF_RANGE,
            "the amount is outside the mandate's range for one payment",
            f"{m.min_minor}..{m.max_minor}",
            str(amount),
        )
    if m.reference is not None and payment.reference != m.reference:
        return _deny(
            Reason.MANDATE_REFERENCE_MISMATCH,
            "the payment's ref is not the reference the mandate names",
        )
    if m.max_uses is not None and use.uses >= m.max_uses:
        return _deny(
            Reason.MANDATE_USES_EXHAUSTED,
            "the mandate's payments are used up",
            str(m.max_uses),
            str(use.uses),
        )
    if m.spacing_seconds and use.last_use_at is not None:
        if now - use.last_use_at < m.spacing_seconds:
            return _deny(
                Reason.MANDATE_TOO_SOON,
                "the mandate's recurrence does not allow another payment yet",
                str(m.spacing_seconds),
                str(now - use.last_use_at),
            )
    if use.spent_minor + amount > m.budget_minor:
        return _deny(
            Reason.MANDATE_BUDGET_EXCEEDED,
            "the payment would take the mandate past its budget",
            str(m.budget_minor),
            str(use.spent_minor + amount),
        )
    return RuleResult(
        RULE,
        Outcome.ALLOW,
        Reason.WITHIN_MANDATE,
        str(m.budget_minor),
        str(use.spent_minor + amount),
        f"within mandate {m.id[:16]}",
    )


def with_mandate(decision: Decision, result: RuleResult) -> Decision:
    """``decision`` with the mandate's result last in its trace: denied if the mandate
    denies (whatever the policy said), unchanged otherwise."""
    trace = (*decision.trace, result)
    if result.outcome is Outcome.DENY and decision.verdict is not Verdict.DENY:
        return Decision(Verdict.DENY, result.reason, result.detail, trace, pack=decision.pack)
    return replace(decision, trace=trace)

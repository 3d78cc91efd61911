"""A session opened from a human-signed mandate: the chain verified, the agent bound to
its key, and the session's bounds derived from the constraints, never widened.

:func:`paywarden.verify.mandates.verify_mandate` checks the chain (signatures, links,
disclosures, times, ``vct``, constraints). Here the mandate is held to this signer: the
agent the session is for must hold the mandate's key (its RFC 7638 thumbprint is
registered for the agent in ``[mandates.agent_keys]``), and the session's expiry, budget
and payees are the mandate's, cut down to the agent's pack where the pack is stricter
(the pack still decides every payment too). What bounds the mandate as a whole (its
budget, uses, spacing, per-payment range, execution date and reference) goes into the
mandate's own record, shared by every session opened from it and enforced in the
deciding transaction (:mod:`.mandate_checks`).

Every refusal carries an AP2 error receipt signed by the audit key (:mod:`.mandate_receipts`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from paywarden.policy import Asset, PolicyPack, payee_allowed_by_pack, to_minor
from paywarden.signer.core.deps import Deps
from paywarden.signer.core.mandate_receipts import MandateReceipts, chain_reference
from paywarden.signer.core.validation import clean_text
from paywarden.signer.encoding import jcs, sha256_hex
from paywarden.signer.errors import (
    Denied,
    Forbidden,
    InvalidInput,
    PaywardenError,
    PreconditionFailed,
    Reason,
    Replayed,
)
from paywarden.signer.mandate_config import MandateSettings
from paywarden.signer.store.records import MandateRecord
from paywarden.verify.mandates import (
    MandateCode,
    MandateError,
    VerifiedMandate,
    verify_mandate,
)

# How each refusal is answered: bad input, a credential or mandate this signer will not
# honour, or one that no longer (or not yet) fits.
_INVALID = frozenset(
    {
        Reason.MANDATE_MALFORMED,
        Reason.MANDATE_DISCLOSURE_INVALID,
        Reason.MANDATE_CONSTRAINT_INVALID,
    }
)
_LATER = frozenset(
    {
        Reason.MANDATE_EXPIRED,
        Reason.MANDATE_NOT_YET_VALID,
        Reason.MANDATE_REVOKED,
        Reason.MANDATE_MISMATCH,
    }
)


def refusal(reason: Reason, message: str) -> PaywardenError:
    """The exception that answers a refused mandate with ``reason``."""
    if reason in _INVALID:
        return InvalidInput(reason, message)
    if reason in _LATER:
        return PreconditionFailed(reason, message)
    if reason is Reason.MANDATE_HOP_REPLAYED:
        return Replayed(reason, message)
    return Forbidden(reason, message)


MAX_MESSAGE = 512  # characters of a refusal's message (and its receipt's description)
MAX_MINOR = 10**18  # the largest total a mandate may bound, in minor units
# ISO 4217 minor units of the currencies whose configured decimals must agree with them.
ISO_4217_DIGITS = {
    "AUD": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2, "CNY": 2, "DKK": 2, "EUR": 2,
    "GBP": 2, "HKD": 2, "IDR": 2, "INR": 2, "ISK": 0, "JOD": 3, "JPY": 0, "KRW": 0,
    "KWD": 3, "MXN": 2, "NOK": 2, "NZD": 2, "OMR": 3, "PLN": 2, "SEK": 2, "SGD": 2,
    "TND": 3, "TRY": 2, "TWD": 2, "USD": 2, "VND": 0, "ZAR": 2,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class MandateCall:
    """One OpenSession's mandate: the chain as presented and who presented it (whose
    refusals' receipts count against the refusal budget)."""

    chain: str
    asker: str


@dataclass(frozen=True, slots=True)
class MandateSession:
    """What a verified mandate gives the session opened from it."""

    mandate: MandateRecord
    budget_minor: int  # the session's budget in the mandate's asset
    expires_at: int
    payees: tuple[str, ...]
    presentation: str | None  # the closed agent hop's hash, recorded once
    audit: dict[str, Any]  # what the session.open record says of the mandate


class MandateOpening:
    def __init__(self, deps: Deps, settings: MandateSettings) -> None:
        self._deps = deps
        self._settings = settings
        self.receipts = MandateReceipts(deps, settings.audience)

    def refused(
        self,
        reason: Reason,
        message: str,
        code: MandateCode,
        call: MandateCall,
        mandate_id: str | None = None,
        *,
        denied: bool = False,
    ) -> PaywardenError:
        """The refusal, with its AP2 error receipt (``denied``: the agent's pack refused
        the session the mandate asks for). The message is cut to
        :data:`MAX_MESSAGE` characters: it may echo the chain."""
        message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
        error = Denied(reason, message) if denied else refusal(reason, message)
        error.receipt = self.receipts.refusal(
            code,
            reason,
            message,
            reference=chain_reference(call.chain),
            mandate_id=mandate_id,
            asker=call.asker,
        )
        return error

    def verify(self, call: MandateCall, agent_id: str, now: int) -> VerifiedMandate:
        s = self._settings
        chain = call.chain
        if not s.configured:
            raise PreconditionFailed(
                Reason.MANDATES_NOT_CONFIGURED, "this signer trusts no mandate issuer"
            )
        try:
            verified = verify_mandate(
                chain,
                s.issuers,
                now=now,
                decimals=self._decimals,
                vct=s.vct,
                audience=s.audience,
                max_bytes=s.max_chain_bytes,
            )
        except MandateError as exc:
            raise self.refused(Reason(exc.reason), exc.message, exc.code, call) from None
        if s.holders.get(verified.holder_jkt) != agent_id:
            raise self.refused(
                Reason.MANDATE_HOLDER_MISMATCH,
                "the mandate is bound to a key not registered for this agent",
                MandateCode.INVALID_MANDATE,
                call,
                verified.id,
            )
        if verified.user_jkt is not None and (
            verified.user_jkt == verified.holder_jkt or verified.user_jkt in s.holders
        ):
            raise self.refused(
                Reason.MANDATE_SELF_DELEGATED,
                "the credential is held by an agent's key: an agent cannot sign its own mandate",
                MandateCode.INVALID_MANDATE,
                call,
                verified.id,
            )
        if s.require_agent_hop and verified.presentation is None:
            raise self.refused(
                Reason.MANDATE_AGENT_HOP_MISSING,
                "this signer opens a session from a mandate only with the agent's closed hop",
                MandateCode.INVALID_MANDATE,
                call,
                verified.id,
            )
        return verified

    def _decimals(self, currency: str) -> int | None:
        """The configured asset's decimals for ``currency``; None (refused) for a currency
        that is no asset here, or whose decimals differ from its ISO 4217 minor unit
        (AP2's amounts are in ISO minor units: USD configured with 0 decimals would read
        every cent bound as a dollar)."""
        asset = self._deps.assets.get(currency)
        if asset is None:
            return None
        iso = ISO_4217_DIGITS.get(currency)
        return None if iso is not None and iso != asset.decimals else asset.decimals

    def derive(
        self,
        verified: VerifiedMandate,
        call: MandateCall,
        agent_id: str,
        pack: PolicyPack,
        ttl_seconds: int,
        now: int,
    ) -> MandateSession:
        """The session's bounds: the mandate's, cut down to the pack's and the
        signer's limits (the stricter wins)."""
        c = verified.constraints
        asset = self._deps.assets[c.currency]  # verify_mandate knew its decimals
        budget = c.total_minor
        if budget is None:  # verify_mandate refuses it first: never an unbounded session
            raise self.refused(
                Reason.MANDATE_UNBOUNDED,
                "the mandate bounds no total",
                MandateCode.UNRESOLVED_CONSTRAINT,
                call,
                verified.id,
            )
        if budget > MAX_MINOR:
            raise self.refused(
                Reason.MANDATE_CONSTRAINT_INVALID,
                "the mandate's total is beyond what this signer records",
                MandateCode.UNRESOLVED_CONSTRAINT,
                call,
                verified.id,
            )
        ceiling = pack.model.sessions.max_budget.get(asset.code)
        session_budget = budget
        if ceiling is not None:
            ceiling_minor = to_minor(ceiling, asset.decimals, f"{pack.path}: max_budget")
            session_budget = min(budget, ceiling_minor)
        ends = [verified.expires_at, now + self._deps.limits.max_session_ttl_seconds]
        ends.append(now + pack.model.sessions.max_ttl_seconds)
        if c.not_after is not None:
            ends.append(c.not_after + 1)
        if ttl_seconds:
            ends.append(now + ttl_seconds)
        expires_at = min(ends)
        if expires_at <= now:  # its execution window closed already
            raise self.refused(
                Reason.MANDATE_EXPIRED,
                "the mandate's execution date has passed",
                MandateCode.INVALID_MANDATE,
                call,
                verified.id,
            )
        payees = self._payees(verified, call, pack, asset)
        mandate = MandateRecord(
            id=verified.id,
            agent_id=agent_id,
            holder_jkt=verified.holder_jkt,
            issuer=verified.issuer,
            asset=asset.code,
            terms_sha256="",
            terms="",
            min_minor=c.min_minor,
            max_minor=c.max_minor,
            budget_minor=budget,
            max_uses=c.max_uses,
            spacing_seconds=c.spacing_seconds,
            not_before=c.not_before,
            reference=c.reference,
            expires_at=verified.mandate_expires_at,
            created_at=now,
        )
        terms = _terms(mandate, verified)
        text = jcs(terms).decode()
        mandate = replace(mandate, terms=text, terms_sha256=sha256_hex(text))
        audit = {
            "mandate_id": verified.id,
            "issuer": verified.issuer,
            "holder_jkt": verified.holder_jkt,
            "hops": verified.hops,
            "terms": terms,
        }
        return MandateSession(
            mandate, session_budget, expires_at, payees, verified.presentation, audit
        )

    def _payees(
        self, verified: VerifiedMandate, call: MandateCall, pack: PolicyPack, asset: Asset
    ) -> tuple[str, ...]:
        named = verified.constraints.payees
        if named is None:
            return ()
        try:
            payees = {clean_text("allowed_payees[]", p, max_len=256) for p in named}
        except InvalidInput as exc:
            raise self.refused(
                Reason.MANDATE_CONSTRAINT_INVALID,
                f"a payee the mandate allows cannot be used here: {exc.message}",
                MandateCode.UNRESOLVED_CONSTRAINT,
                call,
                verified.id,
            ) from None
        kept = tuple(sorted(p for p in payees if payee_allowed_by_pack(pack, p, asset) is None))
        if not kept:
            raise self.refused(
                Reason.MANDATE_PAYEES_OUTSIDE_PACK,
                "the agent's pack allows none of the payees the mandate allows",
                MandateCode.INVALID_MANDATE,
                call,
                verified.id,
            )
        return kept


def _terms(m: MandateRecord, verified: VerifiedMandate) -> dict[str, Any]:
    """What bounds the mandate as a whole: equal for every session opened from it."""
    return {
        "asset": m.asset,
        "budget_minor": str(m.budget_minor),
        "expires_at": m.expires_at,
        "issuer": m.issuer,
        "max_minor": None if m.max_minor is None else str(m.max_minor),
        "max_uses": m.max_uses,
        "min_minor": None if m.min_minor is None else str(m.min_minor),
        "not_after": verified.constraints.not_after,
        "not_before": m.not_before,
        "reference": m.reference,
        "spacing_seconds": m.spacing_seconds,
        "vct": verified.vct,
    }

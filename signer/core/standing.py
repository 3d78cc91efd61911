"""CheckPayment: whether a signed payment still stands, asked by its payee before it settles.

A payment is VOIDED while something since its signature says it must not be paid: its key
version revoked or destroyed, or a freeze that covers it now (the kill switch, its agent,
its session or its key version; lifted, the payment stands again until its ``exp``).
Else it is EXPIRED from its ``exp`` on, else VALID. Voided comes first: it says more.

Who may ask: an operator about any payment; a payee only about a payment whose signed
payee is, code point for code point, its principal id (the payee text is signed in NFC and
a principal id is lower-case ASCII, so no normalisation or case folding can make two
spellings meet). Everything else that is not a signed payment naming the caller (an
unknown id, a refusal, a payment held for approval or never signed, another payee's
payment) gets the same NOT_FOUND, word for word: a payee learns nothing of others.

One read transaction of three index probes (:mod:`paywarden.signer.store.payment_reads`),
nothing written: asking costs the same whatever the history.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from enum import StrEnum

from paywarden.policy.vocabulary import KeyState
from paywarden.signer.core.deps import Deps, store_call
from paywarden.signer.core.x402 import PAYLOAD_TYPE as X402_PAYLOAD_TYPE
from paywarden.signer.errors import Forbidden, Internal, InvalidInput, NotFound, Reason
from paywarden.signer.identity import Principal, Role

log = logging.getLogger("paywarden.signer.core.standing")

_DECISION_ID = re.compile(r"^dec_[A-Za-z0-9_-]{22}$")
_ASKING = frozenset({Role.PAYEE, Role.OPERATOR})
_VOIDING_KEY_STATES = {
    KeyState.REVOKED: Reason.KEY_REVOKED,
    KeyState.DESTROYED: Reason.KEY_DESTROYED,
}


class Standing(StrEnum):
    VALID = "valid"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class PaymentStanding:
    """The answer: the standing, its reason and detail (VOIDED, EXPIRED), and the payment
    as signed."""

    standing: Standing
    reason: Reason | None
    detail: str
    decision_id: str
    payee: str
    amount: str
    asset: str
    key_id: str
    expires_at: int
    checked_at: int


def _not_found() -> NotFound:
    # One sentence for every case: the answer must not tell them apart.
    return NotFound(Reason.PAYMENT_NOT_FOUND, "no signed payment with this decision id names you")


class PaymentChecks:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._store = deps.store

    def check(self, caller: Principal, decision_id: str) -> PaymentStanding:
        if caller.role not in _ASKING:  # the gRPC table says so too
            raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"role {caller.role} may not do this")
        if not decision_id:
            raise InvalidInput(Reason.FIELD_MISSING, "decision_id is required")
        if not _DECISION_ID.fullmatch(decision_id):
            raise InvalidInput(Reason.STRING_INVALID, "decision_id is not a decision id")
        facts = store_call(lambda: self._store.payment_facts(decision_id))
        now = self._deps.now()
        if facts is None or facts.decision.jws is None or facts.decision.payload is None:
            raise _not_found()
        claims = json.loads(facts.decision.payload)
        if caller.role is Role.PAYEE and claims["payee"] != caller.id:
            raise _not_found()
        if facts.key is None:
            log.error("a payment's key is not in the store", extra={"decision_id": decision_id})
            raise Internal(Reason.INTERNAL, "internal error")
        standing, reason, detail = Standing.VALID, None, "nothing voids this payment"
        ends = int(claims["exp"])
        if claims.get("typ") == X402_PAYLOAD_TYPE:  # no chain takes it after validBefore
            ends = min(ends, int(claims["authorization"]["validBefore"]))
        key_reason = _VOIDING_KEY_STATES.get(facts.key.state)
        if key_reason is not None:
            standing, reason = Standing.VOIDED, key_reason
            detail = f"key {facts.key.key_id} is {facts.key.state}"
        elif facts.freeze is not None:
            # The scope only: an operator's reason for a freeze is not the payee's to read.
            standing, reason = Standing.VOIDED, Reason.FROZEN
            detail = f"a freeze of its {facts.freeze.scope} covers this payment"
        elif now >= ends:
            standing, reason = Standing.EXPIRED, Reason.PAYMENT_EXPIRED
            detail = "the payment is past its exp"
            if ends < int(claims["exp"]):
                detail = "the authorisation is past its validBefore"
        return PaymentStanding(
            standing,
            reason,
            detail,
            decision_id,
            str(claims["payee"]),
            str(claims["amount"]),
            str(claims["asset"]),
            facts.decision.key_id,
            ends,
            now,
        )

"""Sign: the path of one payment, from the agent's request to its signature.

``sign`` is that path: early refusals (frozen, refusal budget spent) → validate →
the deciding transaction (:mod:`paywarden.signer.core.deciding`: bind → guard →
facts → evaluate → commit) → HSM → answer. Every branch that does not end in a
signature or a pending approval raises a :class:`PaywardenError`; every refusal
goes through :class:`Refusals`. A signature is never returned unless the decision
that allowed it is durably recorded and still stands.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import NoReturn

from paywarden.hsm import HsmError, HsmUnavailable
from paywarden.policy.vocabulary import ApprovalStatus, FreezeScope, Verdict
from paywarden.signer.core import committed
from paywarden.signer.core.deciding import Decider
from paywarden.signer.core.deps import Deps, require, store_call
from paywarden.signer.core.disclosure import agent_facing
from paywarden.signer.core.payments import (
    IntentFields,
    jws_compact,
    jws_signing_input,
    validate_intent,
)
from paywarden.signer.core.refusing import Refusals
from paywarden.signer.core.views import SignResult, SignStatus
from paywarden.signer.deadlines import NO_DEADLINE, Deadline
from paywarden.signer.errors import (
    Denied,
    PaywardenError,
    Reason,
    SessionNotUsable,
    Unavailable,
)
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import DecisionRecord

log = logging.getLogger("paywarden.signer")

_SESSION_REASONS = {
    Reason.SESSION_CLOSED,
    Reason.SESSION_EXPIRED,
    Reason.SESSION_IN_EXPLORE_PHASE,
}


class Signing:
    def __init__(self, deps: Deps, refusals: Refusals) -> None:
        self._deps = deps
        self._store = deps.store
        self._hsm = deps.hsm
        self._metrics = deps.metrics
        self._refusals = refusals
        self._key_ids = set(deps.hsm.key_ids())
        self._decider = Decider(deps, refusals)

    def sign(
        self, caller: Principal, fields: IntentFields, deadline: Deadline = NO_DEADLINE
    ) -> SignResult:
        """Every call leaves one audit record, whatever its answer; a repeat of the
        caller's refusal (same reason) within the summary window is counted into one
        ``sign.refused.summary`` record instead, so that refusals cannot fill the log.
        A call whose caller is gone, or whose store is unusable, decided nothing and
        leaves none.

        ``deadline``: when the caller stops waiting. Nothing is decided, signed or
        answered once it has passed, and the store's lock wait ends before it."""
        started = time.monotonic()
        early = True
        try:
            self._refusals.flush()
            self._refusals.refuse_early(caller, fields)
            early = False
            result = self._sign(caller, fields, deadline)
        except PaywardenError as exc:
            self._refusals.refused(caller, fields, exc, early=early)
            self._metrics.sign_answered("refused", str(exc.reason), time.monotonic() - started)
            # The audit record keeps the detailed message; the agent gets the reason code.
            agent_facing(exc)
            raise
        self._metrics.sign_answered(str(result.status), "OK", time.monotonic() - started)
        return result

    def _sign(self, caller: Principal, fields: IntentFields, deadline: Deadline) -> SignResult:
        require(caller, Role.AGENT)
        intent = validate_intent(fields, self._deps.assets, self._key_ids)
        request_hash = hashlib.sha256(intent.request_digest_input(caller.id)).hexdigest()
        try:
            self._hsm.ensure_available()
        except HsmUnavailable:
            raise Unavailable(
                Reason.HSM_UNAVAILABLE, "the HSM is unavailable; nothing was signed"
            ) from None
        deadline.check()
        decided = store_call(lambda: self._decider.decide(caller, intent, request_hash, deadline))
        record, approval, seq = decided.record, decided.approval, decided.audit_seq
        if decided.retry is not None:
            self._refusals.retries.recorded(caller, decided.retry, seq)
        if (
            record.outcome == Verdict.NEEDS_APPROVAL
            and approval is not None
            and approval.status == ApprovalStatus.PENDING
        ):
            return SignResult(
                SignStatus.PENDING_APPROVAL,
                record.id,
                record.key_id,
                record.payload or b"",
                decided.replayed,
                approval_id=approval.id,
                audit_seq=seq,
            )
        return self._issue(record, replayed=decided.replayed, audit_seq=seq, deadline=deadline)

    def _issue(
        self, record: DecisionRecord, *, replayed: bool, audit_seq: int, deadline: Deadline
    ) -> SignResult:
        """A committed decision answered: its denial raised, its signature (made
        now by the HSM and attached to the decision, or attached already) returned."""
        if record.outcome == Verdict.DENY or record.payload is None:
            _raise_denial(record, audit_seq)
        log.info(
            "payment allowed",
            extra={"decision_id": record.id, "session_id": record.session_id, "replayed": replayed},
        )
        if record.jws is not None:  # signed already: the payment is spent, so it is answered
            return SignResult(
                SignStatus.SIGNED,
                record.id,
                record.key_id,
                record.payload,
                replayed,
                record.jws,
                audit_seq=audit_seq,
            )
        # Committed but not signed yet: a caller gone now gets nothing signed (a retry
        # of the same request completes it, as after an HSM failure).
        deadline.check(0.0)
        signing_input = jws_signing_input(record.key_id, record.payload)
        started = time.monotonic()
        try:
            signature = self._hsm.sign_es256(record.key_id, signing_input)
        except HsmError:
            log.warning(
                "HSM failed after the decision was recorded", extra={"decision_id": record.id}
            )
            raise Unavailable(
                Reason.HSM_UNAVAILABLE,
                "the HSM is unavailable; the decision is recorded and a retry with the "
                "same request completes it",
                decision_id=record.id,
                audit_seq=audit_seq,
            ) from None
        self._metrics.hsm_latency.observe(time.monotonic() - started)
        compact = jws_compact(signing_input, signature)
        # A caller gone while the HSM signed gets nothing stored (the same check runs
        # just before the commit); once stored, the token is always answered.
        attached = store_call(
            lambda: committed.attach_signature(
                self._store,
                record.id,
                compact,
                self._deps.now,
                wait=deadline.remaining(),
                check=lambda: deadline.check(0.0),
            )
        )
        if attached is None:
            # The payment was withdrawn (session closed, payment expired) or frozen
            # while the HSM signed: the signature is discarded, never returned.
            if self._frozen_now(record):
                raise SessionNotUsable(
                    Reason.FROZEN,
                    "signing was frozen while the payment was being signed; nothing was signed",
                    decision_id=record.id,
                    audit_seq=audit_seq,
                )
            raise SessionNotUsable(
                Reason.PAYMENT_WITHDRAWN,
                "the payment was withdrawn (session closed or payment expired) before it was "
                "signed; nothing was signed",
                decision_id=record.id,
                audit_seq=audit_seq,
            )
        jws, first = attached
        if first:  # concurrent identical retries: only the signature kept counts
            units = float(self._deps.amount(record.amount_minor, record.asset))
            self._metrics.signed(
                record.asset, units, record.session_id, record.agent_id, record.key_id
            )
        return SignResult(
            SignStatus.SIGNED,
            record.id,
            record.key_id,
            record.payload,
            replayed,
            jws,
            audit_seq=audit_seq,
        )

    def _frozen_now(self, record: DecisionRecord) -> bool:
        targets = {
            FreezeScope.GLOBAL: "",
            FreezeScope.AGENT: record.agent_id,
            FreezeScope.SESSION: record.session_id,
            FreezeScope.KEY: record.key_id,
        }
        freezes = store_call(self._store.freezes)
        return any(targets.get(f.scope) == f.target for f in freezes)


def _raise_denial(record: DecisionRecord, audit_seq: int) -> NoReturn:
    # A recorded reason is the text of a Reason member (every code ever written is one).
    reason = Reason(record.reason)
    kind = SessionNotUsable if reason in _SESSION_REASONS else Denied
    raise kind(reason, record.message, decision_id=record.id, audit_seq=audit_seq)

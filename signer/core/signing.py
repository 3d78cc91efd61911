"""Sign: the path of one payment, from the agent's request to its signature.

``sign`` is that path: early refusals (frozen, refusal budget spent) → validate →
one item of a group commit (:mod:`paywarden.signer.core.batching`): the deciding
transaction (:mod:`paywarden.signer.core.deciding`: bind → guard → facts → evaluate
→ record) and, for an allowed payment, the HSM's signature attached to it → the
batch's commit → answer. The decision, its spend, its audit record and its
signature are committed together, and the signature leaves only after that commit.
Every branch that does not end in a signature or a pending approval raises a
:class:`PaywardenError`; every refusal goes through :class:`Refusals`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NoReturn

from paywarden.hsm import HsmError, HsmUnavailable, UnsafeKey
from paywarden.policy.vocabulary import ApprovalStatus, KeyProfile, KeyState, Verdict
from paywarden.signer.core import committed
from paywarden.signer.core.batching import GroupCommit
from paywarden.signer.core.deciding import Decided, Decider
from paywarden.signer.core.deps import Deps, require, store_call
from paywarden.signer.core.disclosure import agent_facing
from paywarden.signer.core.keys import KeyView, label_of
from paywarden.signer.core.mandate_receipts import MandateReceipts
from paywarden.signer.core.payments import (
    Intent,
    IntentFields,
    jws_compact,
    jws_signing_input,
    validate_intent,
)
from paywarden.signer.core.refusing import Refusals
from paywarden.signer.core.views import SignResult, SignStatus
from paywarden.signer.core.x402 import (
    MIN_WINDOW_SECONDS,
    X402Fields,
    is_x402,
    map_requirements,
    matches_decision,
    signable,
)
from paywarden.signer.deadlines import NO_DEADLINE, Deadline
from paywarden.signer.errors import (
    Denied,
    InvalidInput,
    KeyNotActive,
    PaywardenError,
    Reason,
    SessionNotUsable,
    Unavailable,
)
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.protocols import PaymentTx
from paywarden.signer.store.records import DecisionRecord, InvariantBroken

log = logging.getLogger("paywarden.signer")

_SESSION_REASONS = {
    Reason.SESSION_CLOSED,
    Reason.SESSION_EXPIRED,
    Reason.SESSION_IN_EXPLORE_PHASE,
    Reason.PAYMENT_WITHDRAWN,  # an x402 authorisation whose window closed unsigned
}


class Signing:
    def __init__(self, deps: Deps, refusals: Refusals, keys: KeyView) -> None:
        self._deps = deps
        self._store = deps.store
        self._hsm = deps.hsm
        self._metrics = deps.metrics
        self._refusals = refusals
        self._keys = keys
        self._decider = Decider(deps, refusals, keys)
        self._receipts = MandateReceipts(deps, deps.mandates.audience)
        self._batches = GroupCommit(deps.store)

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
        return self._answered(caller, fields, lambda: self._sign(caller, fields, None, deadline))

    def sign_x402(
        self, caller: Principal, request: X402Fields, deadline: Deadline = NO_DEADLINE
    ) -> SignResult:
        """SignX402: as :meth:`sign`, the payment being an x402 resource server's
        requirements (:mod:`paywarden.signer.core.x402`); a signed result's ``jws`` is
        the authorisation's Ethereum signature (0x, 65 bytes hex) and its ``payload``
        the recorded authorisation."""
        shadow = request.as_arrived()
        return self._answered(caller, shadow, lambda: self._sign(caller, shadow, request, deadline))

    def _answered(
        self, caller: Principal, fields: IntentFields, run: Callable[[], SignResult]
    ) -> SignResult:
        started = time.monotonic()
        early = True
        try:
            self._refusals.flush()
            self._refusals.refuse_early(caller, fields)
            early = False
            result = run()
        except PaywardenError as exc:
            self._refusals.refused(caller, fields, exc, early=early)
            self._metrics.sign_answered("refused", str(exc.reason), time.monotonic() - started)
            # The audit record keeps the detailed message; the agent gets the reason code.
            agent_facing(exc)
            raise
        self._metrics.sign_answered(str(result.status), "OK", time.monotonic() - started)
        return result

    def _intent(self, fields: IntentFields, request: X402Fields | None) -> Intent:
        """The validated intent: a Sign's names a jws-es256 key and an asset paid with
        a JWS, a SignX402's an x402-exact-evm key and an x402 asset."""
        deps = self._deps
        x402 = deps.key_profiles.get(label_of(fields.key_id)) is KeyProfile.X402_EXACT_EVM
        if request is None:
            if x402:
                raise InvalidInput(Reason.UNKNOWN_KEY, "key_id is an x402 key: use SignX402")
            if fields.asset in deps.x402:
                raise InvalidInput(Reason.UNKNOWN_ASSET, "asset is paid with x402: use SignX402")
            return validate_intent(fields, deps.assets, self._keys)
        mapped, terms = map_requirements(
            request, deps.x402, {code: a.decimals for code, a in deps.assets.items()}
        )
        if not x402:
            raise InvalidInput(Reason.UNKNOWN_KEY, "key_id is not an x402-exact-evm key")
        return replace(validate_intent(mapped, deps.assets, self._keys), x402=terms)

    def _sign(
        self,
        caller: Principal,
        fields: IntentFields,
        request: X402Fields | None,
        deadline: Deadline,
    ) -> SignResult:
        require(caller, Role.AGENT)
        intent = self._intent(fields, request)
        self._keys.check(intent.key_id)  # early; the decision reads the state again
        request_hash = hashlib.sha256(intent.request_digest_input(caller.id)).hexdigest()
        try:
            self._hsm.ensure_available()
        except HsmUnavailable:
            raise Unavailable(
                Reason.HSM_UNAVAILABLE, "the HSM is unavailable; nothing was signed"
            ) from None
        deadline.check()
        done = store_call(
            lambda: self._batches.run(
                lambda tx: self._decide_and_sign(tx, caller, intent, request_hash, deadline),
                wait=deadline.lock_wait(),
            )
        )
        # Committed (with its signature, if it has one): now the caller may learn of it.
        done.report()
        decided = done.decided
        if decided.retry is not None:
            self._refusals.retries.recorded(caller, decided.retry, decided.audit_seq)
        return self._answer(done)

    def _decide_and_sign(
        self,
        tx: PaymentTx,
        caller: Principal,
        intent: Intent,
        request_hash: str,
        deadline: Deadline,
    ) -> _Done:
        """One item of a group commit: the decision and, if it allows a payment not
        signed yet, its signature, in the same transaction (a new decision is written
        once, with its JWS). A caller gone before the decision has nothing decided;
        one gone while the HSM signs has the decision kept and nothing signed (an
        identical retry completes it)."""
        deadline.check()
        attempt = _Attempt()
        decided, report = self._decider.decide(
            tx, caller, intent, request_hash, lambda r: self._sign_new(r, deadline, attempt)
        )
        if attempt.tried or not _to_sign(decided):
            return _Done(decided, report, attempt)
        # A retry completes an earlier decision: whatever became of it is judged.
        record = decided.record
        key = tx.key_version(record.key_id)
        if key is None or key.state is not KeyState.ACTIVE:
            self._keys.invalidate()
            raise KeyNotActive(
                Reason.KEY_NOT_ACTIVE,
                f"key {record.key_id} is {key.state if key else 'unknown'} now: the earlier "
                "decision stays unsigned",
                decision_id=record.id,
            )
        compact = self._signature(record, deadline, attempt)
        if compact is None:
            return _Done(decided, report, attempt)
        attached = committed.attach_signature(tx, record.id, compact, self._deps.now())
        if attached is None:
            attempt.withdrawn = True
            attempt.frozen = (
                tx.frozen(record.agent_id, record.session_id, record.key_id) is not None
            )
        else:
            attempt.jws, attempt.first = attached
        return _Done(decided, report, attempt)

    def _sign_new(
        self, record: DecisionRecord, deadline: Deadline, attempt: _Attempt
    ) -> str | None:
        """The JWS to record with a new allowed decision, or None (recorded unsigned)."""
        attempt.tried = True
        compact = self._signature(record, deadline, attempt)
        if compact is None:
            return None
        # The clock is read again: the payment may have expired while the HSM signed.
        if not committed.new_decision_signable(record, self._deps.now()):
            attempt.withdrawn = True
            return None
        attempt.jws, attempt.first = compact, True
        return compact

    def _signature(
        self, record: DecisionRecord, deadline: Deadline, attempt: _Attempt
    ) -> str | None:
        """The HSM's JWS over ``record``'s payload (an x402 authorisation's signature),
        or None with the reason in ``attempt``: the caller is gone (before or while the
        HSM signs), the HSM failed, or an x402 window closed while it waited (approval)."""
        try:
            deadline.check(0.0)
        except PaywardenError as exc:
            attempt.gone = exc
            return None
        payload = record.payload or b""
        x402 = signable(payload) if is_x402(payload) else None
        if x402 is not None and not matches_decision(record, *x402, self._deps.x402):
            attempt.broken = True  # its payload was changed in the store: never signed
            return None
        if x402 is not None and x402[1].valid_before < self._deps.now() + MIN_WINDOW_SECONDS:
            attempt.withdrawn = True  # never hand out an authorisation no chain accepts
            return None
        started = time.monotonic()
        try:
            if x402 is not None:  # an EIP-3009 authorisation: its Ethereum signature
                domain, authorization = x402
                evm = self._hsm.sign_transfer_authorization(record.key_id, domain, authorization)
                compact = "0x" + evm.to_bytes().hex()
            else:
                signing_input = jws_signing_input(record.key_id, payload)
                compact = jws_compact(
                    signing_input, self._hsm.sign_es256(record.key_id, signing_input)
                )
        except HsmError as exc:  # UnsafeKey: the token's key is not the one recorded
            log.error("the HSM did not sign: %s", exc, extra={"decision_id": record.id})
            attempt.broken = isinstance(exc, UnsafeKey)
            attempt.hsm_failed = not attempt.broken
            return None
        self._metrics.hsm_latency.observe(time.monotonic() - started)
        try:  # a caller gone while the HSM signed gets nothing stored
            deadline.check(0.0)
        except PaywardenError as exc:
            attempt.gone = exc
            return None
        return compact

    def _answer(self, done: _Done) -> SignResult:
        """A committed decision answered: pending, its denial raised, or its signature."""
        decided = done.decided
        record, approval, seq, replayed = (
            decided.record,
            decided.approval,
            decided.audit_seq,
            decided.replayed,
        )
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
                replayed,
                approval_id=approval.id,
                audit_seq=seq,
            )
        if record.outcome == Verdict.DENY or record.payload is None:
            _raise_denial(record, seq, self._receipts)
        if done.signing.gone is not None:
            raise done.signing.gone
        if done.signing.hsm_failed:
            log.warning(
                "HSM failed after the decision was recorded", extra={"decision_id": record.id}
            )
            raise Unavailable(
                Reason.HSM_UNAVAILABLE,
                "the HSM is unavailable; the decision is recorded and a retry with the "
                "same request completes it",
                decision_id=record.id,
                audit_seq=seq,
            )
        if done.signing.broken:  # never "retry": no retry can sign it
            raise InvariantBroken(f"decision {record.id} cannot be signed as recorded")
        if done.signing.withdrawn:
            # The payment expired (or was withdrawn or frozen) while the HSM signed:
            # the signature is discarded, never returned.
            if done.signing.frozen:
                raise SessionNotUsable(
                    Reason.FROZEN,
                    "signing was frozen while the payment was being signed; nothing was signed",
                    decision_id=record.id,
                    audit_seq=seq,
                )
            raise SessionNotUsable(
                Reason.PAYMENT_WITHDRAWN,
                "the payment was withdrawn (session closed or payment expired) before it was "
                "signed; nothing was signed",
                decision_id=record.id,
                audit_seq=seq,
            )
        jws = done.signing.jws if done.signing.jws is not None else record.jws
        if jws is None:  # neither signed now nor before: never answered as signed
            raise InvariantBroken(f"decision {record.id} has no signature to answer")
        log.info(
            "payment allowed",
            extra={"decision_id": record.id, "session_id": record.session_id, "replayed": replayed},
        )
        if done.signing.first:  # concurrent identical retries: only the signature kept counts
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
            audit_seq=seq,
        )


@dataclass(slots=True)
class _Attempt:
    """What the signing asked for in one item came to, as it goes."""

    tried: bool = False  # a new decision asked for its signature
    jws: str | None = None  # the signature stored with the decision
    first: bool = False  # this call stored it (not a concurrent identical retry)
    hsm_failed: bool = False  # the decision is kept, unsigned
    broken: bool = False  # its recorded x402 authorisation is not the decision's: unsigned
    gone: PaywardenError | None = None  # the caller left; the decision is kept, unsigned
    withdrawn: bool = False  # the payment could no longer be signed once the HSM had signed
    frozen: bool = False  # ... because signing is frozen


@dataclass(frozen=True, slots=True)
class _Done:
    """What one Sign's item of a group commit decided and signed, for its caller to
    answer once the batch has committed."""

    decided: Decided
    report: Callable[[], None]
    signing: _Attempt


def _to_sign(decided: Decided) -> bool:
    """Does this decision need its signature now? An allowed (or approved) payment
    with a payload and none stored yet."""
    record, approval = decided.record, decided.approval
    if record.outcome == Verdict.DENY or record.payload is None or record.jws is not None:
        return False
    return not (
        record.outcome == Verdict.NEEDS_APPROVAL
        and (approval is None or approval.status == ApprovalStatus.PENDING)
    )


def _raise_denial(record: DecisionRecord, audit_seq: int, receipts: MandateReceipts) -> NoReturn:
    # A recorded reason is the text of a Reason member (every code ever written is one).
    reason = Reason(record.reason)
    kind = SessionNotUsable if reason in _SESSION_REASONS else Denied
    error = kind(reason, record.message, decision_id=record.id, audit_seq=audit_seq)
    error.receipt = receipts.of_denial(reason, record)  # a mandate's: AP2's error receipt
    raise error

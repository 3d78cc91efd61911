"""The deciding transaction of one Sign: bind → guard → facts → evaluate → commit.

Everything a decision reads and writes happens in one store transaction under
the write lock (an item of a group commit: :mod:`paywarden.signer.core.batching`):
the session it is bound to, the freezes, the agent's nonces and spend, and then the
decision, its reservation or approval, and its audit record.
:mod:`paywarden.signer.core.signing` signs in the same transaction, so that the
decision and its signature are committed together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from paywarden.policy import AllOf, Decision, Facts, PolicyPack, Verdict, evaluate, normalise
from paywarden.policy.breaker import breaker_denial, breaker_trips
from paywarden.policy.engine import RuleResult
from paywarden.policy.vocabulary import (
    FreezeScope,
    FreezeSource,
    SessionState,
)
from paywarden.signer.core import audit_events
from paywarden.signer.core.backstop import check_budget, check_mandate
from paywarden.signer.core.deps import Deps
from paywarden.signer.core.facts import day_start, payment_facts
from paywarden.signer.core.keys import KeyView, evm_address, resolve
from paywarden.signer.core.mandate_checks import MandatePayment, mandate_result, with_mandate
from paywarden.signer.core.payments import Intent, check_expiry, claims
from paywarden.signer.core.recording import holds, new_record
from paywarden.signer.core.refusing import Refusals, RetryKind, breaker_freeze
from paywarden.signer.core.retries import answer_retry
from paywarden.signer.core.session_input import new_decision_id
from paywarden.signer.core.x402 import authorization_payload
from paywarden.signer.encoding import jcs
from paywarden.signer.errors import (
    Forbidden,
    KeyNotActive,
    NotFound,
    Reason,
    Replayed,
    SessionNotUsable,
)
from paywarden.signer.identity import Principal
from paywarden.signer.store.protocols import PaymentTx
from paywarden.signer.store.records import (
    AgentUsage,
    ApprovalRecord,
    DecisionRecord,
    InvariantBroken,
    SessionRecord,
)

log = logging.getLogger("paywarden.signer")


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Decided:
    """What the deciding transaction committed, or answered a retry from."""

    record: DecisionRecord
    approval: ApprovalRecord | None
    replayed: bool  # answered from an earlier decision
    audit_seq: int  # this call's audit record (a counted retry: the record it repeats)
    retry: RetryKind | None = None  # a retry recorded in full: its window counts repeats


@dataclass(frozen=True, slots=True)
class _Read:
    """What the facts step read for a new decision."""

    pack: PolicyPack | None  # the agent's pack, looked up once per decision
    policy: AllOf  # the pack's policy, or one that denies (see core/policies.py)
    payee_key: str
    usage: AgentUsage
    facts: Facts


class Decider:
    def __init__(self, deps: Deps, refusals: Refusals, keys: KeyView) -> None:
        self._deps = deps
        self._keys = keys
        self._store = deps.store
        self._metrics = deps.metrics
        self._refusals = refusals

    def decide(
        self,
        tx: PaymentTx,
        caller: Principal,
        intent: Intent,
        request_hash: str,
        sign: Callable[[DecisionRecord], str | None],
    ) -> tuple[Decided, Callable[[], None]]:
        """The decision, made and recorded in ``tx`` (one item of a group commit), and
        what to report once its transaction has committed (metrics, the freeze view).
        ``sign``: the JWS of a new allowed decision (None: it is recorded unsigned),
        made before it is recorded so that the decision is written once, signed."""
        # Read the clock once the transaction holds the write lock, so that a
        # request that waited for the lock is not decided on a stale time.
        now = self._deps.now()
        session = self._bind(tx, caller, intent, now)
        intent = self._key(tx, intent)
        previous = self._guard(tx, caller, intent, session, request_hash, now)
        if previous is not None:
            return self._answer_retry(tx, caller, previous, session, now), _nothing
        read = self._facts(tx, caller, intent, session, now)
        decision, tripped = self._evaluate(tx, caller, intent, session, read, now)
        decided, froze = self._commit(
            tx, caller, intent, request_hash, session, read, decision, tripped, now, sign
        )
        froze_why = tripped if froze else None
        return decided, lambda: self._report(caller, session, read, decided, froze_why, now)

    def _bind(self, tx: PaymentTx, caller: Principal, intent: Intent, now: int) -> SessionRecord:
        """The session the payment is bound to: it exists and is the caller's."""
        session = tx.session(intent.session_id, now)
        if session is None:
            raise NotFound(Reason.SESSION_NOT_FOUND, "no such session")
        if session.agent_id != caller.id:
            raise Forbidden(Reason.SESSION_AGENT_MISMATCH, "the session belongs to another agent")
        return session

    def _key(self, tx: PaymentTx, intent: Intent) -> Intent:
        """The intent with the exact version it signs with: the one named, or the label's
        active version, read in this transaction (a version revoked a moment ago by
        another process is refused here)."""
        try:
            version = resolve(tx, intent.key_id)
        except KeyNotActive:
            self._keys.invalidate()  # the view believed otherwise
            raise
        self._keys.saw(version)
        if intent.x402 is not None:  # the authorisation is from the version's address
            terms = replace(intent.x402, from_address=evm_address(version))
            return replace(intent, key_id=version.key_id, x402=terms)
        return replace(intent, key_id=version.key_id)

    def _guard(
        self,
        tx: PaymentTx,
        caller: Principal,
        intent: Intent,
        session: SessionRecord,
        request_hash: str,
        now: int,
    ) -> DecisionRecord | None:
        """Freezes, the replay guard and the expiry window. Returns the earlier
        decision when this request was seen before (a retry, answered from it)."""
        # A freeze stops every signature not yet issued, retries included.
        freeze = tx.frozen(caller.id, session.id, intent.key_id)
        if freeze is not None:
            # The agent learns the scope, never the operator's reason (which may
            # well be about the agent) nor other principals' names.
            by = "the circuit breaker" if freeze.source == FreezeSource.BREAKER else "an operator"
            raise SessionNotUsable(Reason.FROZEN, f"signing is frozen ({freeze.scope}) by {by}")
        # Only after session binding, and only the caller's own nonces: an agent
        # learns nothing about other agents' nonces. A nonce is still signed at
        # most once per agent, and the claims name the agent ("sub"), so no two
        # signed payloads share (sub, nonce).
        previous = tx.decision_for_nonce(caller.id, intent.nonce)
        if previous is not None:
            if previous.request_hash != request_hash:
                raise Replayed(
                    Reason.NONCE_REPLAYED,
                    "this nonce was already used for a different request",
                )
            return previous
        if session.state(now) == SessionState.OPEN:
            check_expiry(
                intent.expires_at, now, self._deps.limits.max_expiry_seconds, session.expires_at
            )
        return None

    def _answer_retry(
        self,
        tx: PaymentTx,
        caller: Principal,
        previous: DecisionRecord,
        session: SessionRecord,
        now: int,
    ) -> Decided:
        answer, approval, replayed, changed = answer_retry(tx, previous, session, now)
        status = approval.status if approval is not None else None
        kind: RetryKind = (previous.id, answer.outcome, answer.reason, status)
        # A retry that changes nothing (same decision, same answer) within the
        # window is counted into one sign.retry.summary, so that replaying an
        # answered request cannot fill the log; the first of the window, and
        # every retry that changes state or signs, is recorded in full.
        retries = self._refusals.retries
        if changed:  # later repeats of this answer are counted against it
            retries.opens(caller, kind, now)
        elif (repeats := retries.counts(caller, kind, now)) is not None:
            return Decided(answer, approval, replayed, repeats)
        seq = tx.audit(
            audit_events.event(
                "sign.retry",
                caller,
                now,
                decision_id=previous.id,
                answer=answer.outcome,
                reason=answer.reason,
                approval=status,
            )
        )
        # once committed, later repeats are counted against this record
        return Decided(answer, approval, replayed, seq, kind)

    def _facts(
        self, tx: PaymentTx, caller: Principal, intent: Intent, session: SessionRecord, now: int
    ) -> _Read:
        # The set in force, taken once: a reload meanwhile does not change this decision.
        in_force = self._deps.policy.current()
        pack = in_force.packs.for_agent(caller.id)
        policy, window = in_force.policies.for_session(pack, session)
        info = self._deps.assets[intent.asset]
        payee_key = normalise(intent.payee, case_insensitive=info.case_insensitive)
        tz = self._deps.tz
        usage = tx.agent_usage(caller.id, intent.asset, payee_key, now, day_start(now, tz), window)
        facts = payment_facts(
            now,
            tz,
            caller.id,
            intent,
            payee_key,
            session,
            usage,
            payee_in_session=tx.payee_in_session(session.id, payee_key, now),
            decimals=self._deps.decimals(intent.asset),
            case_insensitive=info.case_insensitive,
        )
        return _Read(pack, policy, payee_key, usage, facts)

    def _evaluate(
        self,
        tx: PaymentTx,
        caller: Principal,
        intent: Intent,
        session: SessionRecord,
        read: _Read,
        now: int,
    ) -> tuple[Decision, str | None]:
        """The policy's decision, held to the session's mandate if it has one, and why
        the agent's breaker trips with it (None: it does not)."""
        decision = evaluate(read.policy, read.facts)
        if session.mandate_id is not None:
            decision = with_mandate(decision, self._mandate(tx, session.mandate_id, intent, now))
        # The breaker judges the window as it would be with this payment in it:
        # the payment that would cross its threshold is denied, not signed.
        tripped = self._breaker_trip(tx, read.pack, caller, now, decision, intent, read.payee_key)
        if tripped is not None and decision.verdict is not Verdict.DENY:
            decision = breaker_denial(decision, tripped)
        return decision, tripped

    def _mandate(self, tx: PaymentTx, mandate_id: str, intent: Intent, now: int) -> RuleResult:
        """The ``mandate`` rule, on the mandate's row and use read in this transaction."""
        found = tx.mandate(mandate_id, now)
        if found is None:  # a session names a mandate the store lacks: never sign
            raise InvariantBroken(f"the session's mandate {mandate_id} is not stored")
        mandate, use = found
        payment = MandatePayment(intent.asset, intent.amount.minor, intent.reference)
        return mandate_result(mandate, use, payment, now)

    def _breaker_trip(
        self,
        tx: PaymentTx,
        pack: PolicyPack | None,
        caller: Principal,
        now: int,
        decision: Decision,
        intent: Intent,
        payee_key: str,
    ) -> str | None:
        """Why the agent's breaker trips with this decision counted (None: it does not)."""
        breaker = pack.model.breaker if pack is not None else None
        if breaker is None:
            return None
        stats = tx.window_stats(caller.id, now - breaker.window_seconds, payee_key)
        # Refusals count as rejected requests too (held in memory, O(1) to read).
        refused = self._refusals.refused_in_window(caller.id, breaker.window_seconds, now)
        stats = replace(stats, decisions=stats.decisions + refused, denials=stats.denials + refused)
        if decision.verdict is Verdict.DENY:
            projected = replace(stats, decisions=stats.decisions + 1, denials=stats.denials + 1)
        else:
            spend = dict(stats.spend_minor)
            spend[intent.asset] = spend.get(intent.asset, 0) + intent.amount.minor
            projected = replace(
                stats,
                decisions=stats.decisions + 1,
                spend_minor=spend,
                payees=stats.payees if stats.payee_seen else stats.payees + 1,
            )
        return breaker_trips(breaker, projected, self._deps.assets)

    def _commit(
        self,
        tx: PaymentTx,
        caller: Principal,
        intent: Intent,
        request_hash: str,
        session: SessionRecord,
        read: _Read,
        decision: Decision,
        tripped: str | None,
        now: int,
        sign: Callable[[DecisionRecord], str | None],
    ) -> tuple[Decided, bool]:
        """Records the decision, its nonce, its reservation or approval and its audit
        record, and the breaker's freeze if it tripped (whether it froze the agent
        now is the second value)."""
        decision_id = new_decision_id()
        payload = None
        if decision.verdict is not Verdict.DENY and intent.x402 is not None:
            payload = authorization_payload(
                intent,
                intent.x402,
                agent_id=caller.id,
                task_digest=session.task_digest,
                now=now,
                decision_id=decision_id,
            )
        elif decision.verdict is not Verdict.DENY:
            payload = jcs(
                claims(
                    intent,
                    agent_id=caller.id,
                    task_digest=session.task_digest,
                    issued_at=now,
                    decision_id=decision_id,
                )
            )
        record = new_record(decision_id, now, caller, intent, request_hash, decision, payload)
        reservation, approval = holds(record, session, read.payee_key, decision)
        if reservation is not None:
            check_budget(tx, reservation)
            check_mandate(tx, reservation)
        if decision.verdict is Verdict.ALLOW:  # signed last: nothing left to refuse it
            record = replace(record, jws=sign(record))
        tx.record_decision(record, consume_nonce=True, reservation=reservation, approval=approval)
        amount = self._deps.amount(intent.amount.minor, intent.asset)
        seq = tx.audit(
            audit_events.event(
                "sign.decision",
                caller,
                now,
                decision=audit_events.decision_fields(record, amount),
                approval_id=approval.id if approval is not None else None,
                approvals_required=approval.required if approval is not None else None,
                payload=audit_events.payload_text(record),
                untrusted=audit_events.untrusted(intent.purpose),
            )
        )
        tx.decision_audited(record.id, seq)  # its receipts find the record by the id
        froze = tripped is not None and self._freeze_by_breaker(tx, read.pack, caller, now, tripped)
        return Decided(record, approval, False, seq), froze

    def _freeze_by_breaker(
        self, tx: PaymentTx, pack: PolicyPack | None, caller: Principal, now: int, why: str
    ) -> bool:
        freeze, event = breaker_freeze(caller, now, why, pack.id if pack is not None else None)
        if not tx.freeze(freeze):
            return False
        tx.audit(event)
        return True

    def _report(
        self,
        caller: Principal,
        session: SessionRecord,
        read: _Read,
        decided: Decided,
        froze: str | None,
        now: int,
    ) -> None:
        """Once committed: the metrics, and the freeze view if the breaker froze."""
        if froze is not None:
            self._refusals.freezes_changed()
            self._metrics.froze(FreezeScope.AGENT, caller.id, FreezeSource.BREAKER, now)
            log.warning("circuit breaker froze an agent", extra={"reason": froze})
        record = decided.record
        self._metrics.decided(record.outcome, record.reason)
        if decided.approval is not None:
            self._metrics.approval("requested")
        facts = read.facts
        self._metrics.payees(
            caller.id, facts.session.payees_after(), facts.agent.payees_today_after()
        )

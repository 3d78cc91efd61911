"""The signer service: plain Python that knows nothing about gRPC.

``sign`` is the path of one payment: validate → session binding → replay
guard → policy (facts read in the deciding transaction) → durable commit →
HSM → answer. Every branch that does not end in a signature or a pending
approval raises a :class:`PaywardenError`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import NoReturn, TypeVar

from paywarden.hsm import Hsm, HsmError, HsmUnavailable
from paywarden.policy import (
    AgentFacts,
    AllOf,
    Decision,
    Facts,
    PackSet,
    PlanLine,
    SessionFacts,
    Verdict,
    check_session,
    compile_all,
    evaluate,
    no_pack_policy,
    normalise,
    pack_changed_policy,
)
from paywarden.policy.breaker import breaker_denial, breaker_trips
from paywarden.policy.packs import PolicyPack
from paywarden.signer.api.calls import NO_DEADLINE, Deadline
from paywarden.signer.config import Config
from paywarden.signer.core import audit_events
from paywarden.signer.core.approvals import Approvals
from paywarden.signer.core.canonical import jcs
from paywarden.signer.core.checkpoints import Checkpoints
from paywarden.signer.core.deps import Deps, amount_text, require, store_call
from paywarden.signer.core.disclosure import agent_facing
from paywarden.signer.core.freezes import Freezes
from paywarden.signer.core.keys import PublicKeys
from paywarden.signer.core.payments import (
    Intent,
    IntentFields,
    check_expiry,
    claims,
    jws_compact,
    jws_signing_input,
    validate_intent,
)
from paywarden.signer.core.refusing import Refusals, RetryKind, breaker_freeze
from paywarden.signer.core.session_input import (
    new_decision_id,
)
from paywarden.signer.core.sessions import Sessions
from paywarden.signer.core.views import SessionView, SignResult, SignStatus
from paywarden.signer.errors import (
    Denied,
    Forbidden,
    NotFound,
    PaywardenError,
    Reason,
    Replayed,
    SessionNotUsable,
    Unavailable,
)
from paywarden.signer.identity import Principal, Role
from paywarden.signer.metrics import Metrics
from paywarden.signer.store.records import (
    AgentUsage,
    ApprovalRecord,
    DecisionRecord,
    InvariantBroken,
    PaymentTx,
    Reservation,
    SessionRecord,
    Store,
)

log = logging.getLogger("paywarden.signer")
T = TypeVar("T")

_SESSION_REASONS = {"SESSION_CLOSED", "SESSION_EXPIRED", "SESSION_IN_EXPLORE_PHASE"}
_MAX_SESSION_FITS = 10_000  # (session, pack) checks remembered


class SigningService:
    def __init__(
        self,
        config: Config,
        store: Store,
        hsm: Hsm,
        packs: PackSet,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        deps = Deps.from_config(config, store, hsm, packs, clock=clock, metrics=metrics)
        self.deps = deps
        self._store = store
        self._hsm = hsm
        self._packs = packs
        self._key_ids = set(hsm.key_ids())
        self._assets = deps.assets
        self._policies: dict[str, AllOf] = compile_all(packs.packs, self._assets)
        self.metrics = deps.metrics
        self.refusals = Refusals(deps)
        self._session_fits: dict[tuple[str, str], str | None] = {}
        self.freezes = Freezes(deps, unfrozen=self.refusals.operator_unfroze)
        self.checkpoints = Checkpoints(deps)
        self.approvals = Approvals(deps)
        self.sessions = Sessions(deps)
        self.keys = PublicKeys(hsm)

    def _now(self) -> int:
        return self.deps.now()

    # What tests and tools that drive the core directly call.

    def open_session(
        self,
        caller: Principal,
        agent_id: str,
        task_description: str,
        budgets: list[tuple[str, str]],
        ttl_seconds: int,
        allowed_payees: list[str],
        plan_bound: bool = False,
    ) -> SessionView:
        return self.sessions.open_session(
            caller, agent_id, task_description, budgets, ttl_seconds, allowed_payees, plan_bound
        )

    def get_session(self, caller: Principal, session_id: str) -> SessionView:
        return self.sessions.get_session(caller, session_id)

    def close_session(self, caller: Principal, session_id: str) -> SessionView:
        return self.sessions.close_session(caller, session_id)

    # -- signing ---------------------------------------------------------

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
            self.refusals.flush()
            self.refusals.refuse_early(caller, fields)
            early = False
            result = self._sign(caller, fields, deadline)
        except PaywardenError as exc:
            self.refusals.refused(caller, fields, exc, early=early)
            self.metrics.sign_answered("refused", str(exc.reason), time.monotonic() - started)
            # The audit record keeps the detailed message; the agent gets the reason code.
            agent_facing(exc)
            raise
        self.metrics.sign_answered(str(result.status), "OK", time.monotonic() - started)
        return result

    def _sign(self, caller: Principal, fields: IntentFields, deadline: Deadline) -> SignResult:
        require(caller, Role.AGENT)
        intent = validate_intent(fields, self.deps.asset_config, self._key_ids)
        request_hash = hashlib.sha256(intent.request_digest_input(caller.id)).hexdigest()
        try:
            self._hsm.ensure_available()
        except HsmUnavailable:
            raise Unavailable(
                Reason.HSM_UNAVAILABLE, "the HSM is unavailable; nothing was signed"
            ) from None
        deadline.check()
        record, approval, replayed, seq, confirm = store_call(
            lambda: self._decide(caller, intent, request_hash, deadline)
        )
        if confirm is not None:
            self.refusals.retries.recorded(caller, confirm, seq)
        if record.outcome == "pending" and approval is not None and approval.status == "pending":
            return SignResult(
                SignStatus.PENDING_APPROVAL,
                record.id,
                record.key_id,
                record.payload or b"",
                replayed,
                approval_id=approval.id,
                audit_seq=seq,
            )
        return self._finish(record, replayed=replayed, audit_seq=seq, deadline=deadline)

    def _decide(
        self, caller: Principal, intent: Intent, request_hash: str, deadline: Deadline
    ) -> tuple[DecisionRecord, ApprovalRecord | None, bool, int, RetryKind | None]:
        """The deciding transaction: (decision, its approval, answered from an earlier
        one, the sequence number of this call's audit record — for a counted retry,
        the record it repeats —, and the retry recorded in full, whose window counts
        repeats once that record is committed)."""
        # The lock wait ends before the caller's deadline, and a caller gone by the
        # time the lock is taken, or by the commit, has nothing decided for it.
        with self._store.payment_tx(wait=deadline.lock_wait(), check=deadline.check) as tx:
            # Read the clock once the transaction holds the write lock, so that a
            # request that waited for the lock is not decided on a stale time.
            now = self._now()
            session = tx.session(intent.session_id, now)
            if session is None:
                raise NotFound(Reason.SESSION_NOT_FOUND, "no such session")
            if session.agent_id != caller.id:
                raise Forbidden(
                    Reason.SESSION_AGENT_MISMATCH, "the session belongs to another agent"
                )
            # A freeze stops every signature not yet issued, retries included.
            freeze = tx.frozen(caller.id, session.id, intent.key_id)
            if freeze is not None:
                # The agent learns the scope, never the operator's reason (which may
                # well be about the agent) nor other principals' names.
                by = "the circuit breaker" if freeze.source == "breaker" else "an operator"
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
                answer, approval, replayed, changed = self._retry(tx, previous, session, now)
                status = approval.status if approval is not None else None
                kind: RetryKind = (previous.id, answer.outcome, answer.reason, status)
                # A retry that changes nothing (same decision, same answer) within the
                # window is counted into one sign.retry.summary, so that replaying an
                # answered request cannot fill the log; the first of the window, and
                # every retry that changes state or signs, is recorded in full.
                if changed:  # later repeats of this answer are counted against it
                    self.refusals.retries.opens(caller, kind, now)
                elif (repeats := self.refusals.retries.counts(caller, kind, now)) is not None:
                    return answer, approval, replayed, repeats, None
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
                return answer, approval, replayed, seq, kind
            if session.state(now) == "open":
                check_expiry(
                    intent.expires_at,
                    now,
                    self.deps.limits.max_expiry_seconds,
                    session.expires_at,
                )
            pack = self._packs.for_agent(caller.id)  # looked up once per decision
            policy, window = self._policy_for(pack, session)
            info = self._assets[intent.asset]
            payee_key = normalise(intent.payee, case_insensitive=info.case_insensitive)
            usage = tx.agent_usage(caller.id, intent.asset, now, self._day_start(now), window)
            facts = self._facts(now, caller, intent, payee_key, session, usage)
            decision = evaluate(policy, facts)
            # The breaker judges the window as it would be with this payment in it:
            # the payment that would cross its threshold is denied, not signed.
            tripped = self._breaker_trip(tx, pack, caller, now, decision, intent, payee_key)
            if tripped is not None and decision.verdict is not Verdict.DENY:
                decision = breaker_denial(decision, tripped)
            decision_id = new_decision_id()
            payload = None
            if decision.verdict is not Verdict.DENY:
                payload = jcs(
                    claims(
                        intent,
                        agent_id=caller.id,
                        task_digest=session.task_digest,
                        issued_at=now,
                        decision_id=decision_id,
                    )
                )
            record = _record(decision_id, now, caller, intent, request_hash, decision, payload)
            reservation = None
            approval = None
            if decision.verdict is not Verdict.DENY:
                held = decision.verdict is Verdict.NEEDS_APPROVAL
                reservation = Reservation(
                    decision_id=decision_id,
                    agent_id=caller.id,
                    session_id=session.id,
                    asset=intent.asset,
                    payee_key=payee_key,
                    amount_minor=intent.amount.minor,
                    created_at=now,
                    expires_at=intent.expires_at,
                    status="held" if held else "spent",
                    plan_line=decision.plan_line,
                )
                if held:
                    approval = ApprovalRecord(
                        id="apr_" + decision_id[4:],
                        decision_id=decision_id,
                        required=decision.approvers,
                        status="pending",
                        created_at=now,
                        expires_at=intent.expires_at,
                    )
            tx.record_decision(
                record, consume_nonce=True, reservation=reservation, approval=approval
            )
            amount = amount_text(intent.amount.minor, self.deps.decimals(intent.asset))
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
            froze = tripped is not None and self._freeze_by_breaker(tx, pack, caller, now, tripped)
        if froze:
            self.refusals.freezes_changed()
            self.metrics.froze("agent", caller.id, "breaker", now)
            log.warning("circuit breaker froze an agent", extra={"reason": tripped})
        self.metrics.decided(record.outcome, record.reason)
        if approval is not None:
            self.metrics.approval("requested")
        self.metrics.payees(
            caller.id, len(session.payees | {payee_key}), len(usage.payees_today | {payee_key})
        )
        return record, approval, False, seq, None

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
        stats = tx.window_stats(caller.id, now - breaker.window_seconds)
        # Refusals count as rejected requests too (held in memory, O(1) to read).
        refused = self.refusals.refused_in_window(caller.id, breaker.window_seconds, now)
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
                payees=stats.payees | {payee_key},
            )
        return breaker_trips(breaker, projected, self._assets)

    def _freeze_by_breaker(
        self, tx: PaymentTx, pack: PolicyPack | None, caller: Principal, now: int, why: str
    ) -> bool:
        freeze, event = breaker_freeze(caller, now, why, pack.id if pack is not None else None)
        if not tx.freeze(freeze):
            return False
        tx.audit(event)
        return True

    def _retry(
        self, tx: PaymentTx, previous: DecisionRecord, session: SessionRecord, now: int
    ) -> tuple[DecisionRecord, ApprovalRecord | None, bool, bool]:
        """The same request again: the same answer, or the approval's outcome, and
        whether this retry changes state (releases, expires or spends a reservation
        or an approval, or goes on to be signed).

        A decision that was allowed but never signed (the HSM failed) is signed
        on retry only while its session is open and its payload unexpired;
        otherwise its reservation is released and the retry is denied.
        """
        if previous.outcome == "deny" or previous.jws is not None:
            return previous, None, True, False
        approval = None
        if previous.outcome == "pending":
            approval = tx.approval_for_decision(previous.id)
            if approval is None:
                raise InvariantBroken(f"pending decision {previous.id} has no approval")
            if approval.status == "denied":
                # Who denied it and why are for humans (approvers' views, the vote's
                # audit record): neither goes into the answer, even before redaction.
                reason, message = Reason.APPROVAL_DENIED, "an approver denied it"
                return _denied(previous, reason, message), approval, True, False
        held = approval is not None
        refusal = _unsignable(session, previous, now, held=held)
        if approval is not None and approval.status == "expired":
            refusal = refusal or (Reason.APPROVAL_EXPIRED, "approval expired")
            return _denied(previous, *refusal), approval, True, False
        if refusal is not None:
            # closed or expired session, or the payment's exp passed: never signable again
            changed = False
            if approval is not None:
                tx.set_approval_status(approval.id, "expired", now)
                approval = replace(approval, status="expired")
                changed = True
            changed = tx.set_reservation(previous.id, "released") or changed
            return _denied(previous, *refusal), approval, True, changed
        if approval is not None and approval.status == "pending":
            return previous, approval, True, False
        tx.set_reservation(previous.id, "spent")  # an approved hold becomes spend
        return previous, approval, True, True  # and is signed now

    def _policy_for(self, pack: PolicyPack | None, session: SessionRecord) -> tuple[AllOf, int]:
        if pack is None:
            return no_pack_policy(), 0
        if pack.id != session.pack_id:
            return pack_changed_policy(pack.ref()), 0
        if (pack.version, pack.sha256) != (session.pack_version, session.pack_sha256):
            # Same id, another text: the session must still fit the pack now in force
            # (a session opened under a looser version keeps none of its limits).
            why = self._session_outgrew(pack, session)
            if why is not None:
                return pack_changed_policy(pack.ref(), why), 0
        velocity = pack.model.velocity
        return self._policies[pack.id], velocity.window_seconds if velocity else 0

    def _session_outgrew(self, pack: PolicyPack, session: SessionRecord) -> str | None:
        """Why the session no longer fits ``pack`` (None: it does). A session and a
        pack never change, so each pair is checked once."""
        key = (session.id, pack.sha256)
        if key in self._session_fits:
            return self._session_fits[key]
        violation = check_session(
            pack,
            self._assets,
            session.budgets_minor,
            session.expires_at - session.created_at,
            session.allowed_payees,
            session.phase != "normal",
        )
        why = None
        if violation is not None:
            why = (
                f"the session was opened under version {session.pack_version or '?'} of pack "
                f"{pack.id} and does not fit version {pack.version}: {violation.message}"
            )
        if len(self._session_fits) >= _MAX_SESSION_FITS:
            self._session_fits.pop(next(iter(self._session_fits)))
        self._session_fits[key] = why
        return why

    def _day_start(self, now: int) -> int:
        return day_start(now, self.deps.tz)

    def _facts(
        self,
        now: int,
        caller: Principal,
        intent: Intent,
        payee_key: str,
        session: SessionRecord,
        usage: AgentUsage,
    ) -> Facts:
        ci = self._assets[intent.asset].case_insensitive
        local = dt.datetime.fromtimestamp(now, self.deps.tz)
        return Facts(
            now=now,
            minute_of_day=local.hour * 60 + local.minute,
            agent_id=caller.id,
            payee=payee_key,
            asset=intent.asset,
            amount_minor=intent.amount.minor,
            key_id=intent.key_id,
            session=SessionFacts(
                session_id=session.id,
                agent_id=session.agent_id,
                state="closed" if session.closed_at is not None else "open",
                phase=session.phase,
                expires_at=session.expires_at,
                budgets_minor=session.budgets_minor,
                spent_minor=session.spent_minor,
                allowed_payees=frozenset(
                    normalise(p, case_insensitive=ci) for p in session.allowed_payees
                ),
                payees=session.payees,
                plan=tuple(
                    PlanLine(
                        line.payee_key, line.asset, line.max_amount_minor, line.count, line.used
                    )
                    for line in session.plan
                ),
            ),
            decimals=self.deps.decimals(intent.asset),
            payee_text=intent.payee,
            agent=AgentFacts(
                spent_24h_minor=usage.spent_24h_minor,
                spent_today_minor=usage.spent_today_minor,
                payments_in_window=usage.payments_in_window,
                payees_paid=usage.payees_paid,
                payees_today=usage.payees_today,
            ),
        )

    def _finish(
        self, record: DecisionRecord, *, replayed: bool, audit_seq: int, deadline: Deadline
    ) -> SignResult:
        if record.outcome == "deny" or record.payload is None:
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
        self.metrics.hsm_latency.observe(time.monotonic() - started)
        compact = jws_compact(signing_input, signature)
        # A caller gone while the HSM signed gets nothing stored (the same check runs
        # just before the commit); once stored, the token is always answered.
        attached = store_call(
            lambda: self._store.attach_signature(
                record.id,
                compact,
                self._now,
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
            units = float(amount_text(record.amount_minor, self.deps.decimals(record.asset)))
            self.metrics.signed(
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
            "global": "",
            "agent": record.agent_id,
            "session": record.session_id,
            "key": record.key_id,
        }
        freezes = store_call(self._store.freezes)
        return any(targets.get(f.scope) == f.target for f in freezes)


def day_start(now: int, tz: dt.tzinfo) -> int:
    """Start of the calendar day of ``now`` in ``tz``. combine() gives fold=0: on a
    day whose clocks go back over midnight the day starts at the first midnight,
    never the repeated one."""
    local = dt.datetime.fromtimestamp(now, tz)
    return int(dt.datetime.combine(local.date(), dt.time(0), tzinfo=tz).timestamp())


def _unsignable(
    session: SessionRecord, decision: DecisionRecord, now: int, *, held: bool
) -> tuple[str, str] | None:
    """Why a recorded, unsigned decision can no longer be signed (or None)."""
    state = session.state(now)
    if state == "closed":
        return "SESSION_CLOSED", "the session was closed before the payment was signed"
    if state == "expired":
        return "SESSION_EXPIRED", "the session expired before the payment was signed"
    if now >= decision.expires_at:
        if held:
            return Reason.APPROVAL_EXPIRED, "approval expired with the payment"
        return "EXPIRY_IN_PAST", "the payment expired before it was signed"
    return None


def _denied(record: DecisionRecord, reason: str, message: str) -> DecisionRecord:
    return replace(record, outcome="deny", reason=reason, message=message)


def _record(
    decision_id: str,
    now: int,
    caller: Principal,
    intent: Intent,
    request_hash: str,
    decision: Decision,
    payload: bytes | None,
) -> DecisionRecord:
    return DecisionRecord(
        id=decision_id,
        created_at=now,
        agent_id=caller.id,
        session_id=intent.session_id,
        nonce=intent.nonce,
        request_hash=request_hash,
        outcome=str(decision.verdict),
        reason=decision.reason,
        message=decision.message,
        key_id=intent.key_id,
        asset=intent.asset,
        amount_minor=intent.amount.minor,
        payload=payload,
        trace_json=json.dumps(decision.trace_json()),
        purpose=intent.purpose,
        pack_json=json.dumps(dict(decision.pack), sort_keys=True),
        payee=intent.payee,
        expires_at=intent.expires_at,
    )


def _raise_denial(record: DecisionRecord, audit_seq: int) -> NoReturn:
    kind = SessionNotUsable if record.reason in _SESSION_REASONS else Denied
    raise kind(record.reason, record.message, decision_id=record.id, audit_seq=audit_seq)

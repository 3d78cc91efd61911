"""The signer service: plain Python that knows nothing about gRPC.

``sign`` is the path of one payment: validate → session binding → replay
guard → policy → durable commit → HSM → answer. Every branch that does not
end in a signature raises a :class:`PaywardenError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from paywarden.hsm import Hsm, HsmError, HsmUnavailable, KeyNotFound, PublicKeyInfo
from paywarden.policy import Decision, Facts, Policy, SessionFacts, evaluate, session_policy
from paywarden.signer.canonical import jcs, sha256_hex
from paywarden.signer.config import Config
from paywarden.signer.errors import (
    Denied,
    Forbidden,
    NotFound,
    Reason,
    Replayed,
    SessionNotUsable,
    Unavailable,
)
from paywarden.signer.identity import Principal, Role
from paywarden.signer.payments import (
    Intent,
    IntentFields,
    check_expiry,
    claims,
    jws_compact,
    jws_signing_input,
    validate_intent,
)
from paywarden.signer.sessions import (
    new_decision_id,
    new_session_id,
    parse_session_id,
    validate_session_request,
)
from paywarden.signer.store import DecisionRecord, SessionRecord, Store, StoreError

log = logging.getLogger("paywarden.signer")
T = TypeVar("T")

_SESSION_REASONS = {Reason.SESSION_CLOSED.value, Reason.SESSION_EXPIRED.value}


@dataclass(frozen=True, slots=True)
class SignResult:
    jws: str
    decision_id: str
    key_id: str
    payload: bytes
    replayed: bool


@dataclass(frozen=True, slots=True)
class SessionView:
    record: SessionRecord
    state: str
    decimals: Mapping[str, int]


class SigningService:
    def __init__(
        self,
        config: Config,
        store: Store,
        hsm: Hsm,
        *,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._store = store
        self._hsm = hsm
        self._policy = policy or session_policy()
        self._clock = clock
        self._key_ids = set(hsm.key_ids())

    def _now(self) -> int:
        return int(self._clock())

    # -- sessions --------------------------------------------------------

    def open_session(
        self,
        caller: Principal,
        agent_id: str,
        task_description: str,
        budgets: list[tuple[str, str]],
        ttl_seconds: int,
        allowed_payees: list[str],
    ) -> SessionView:
        _require(caller, Role.PLANNER)
        spec = validate_session_request(
            agent_id,
            task_description,
            budgets,
            ttl_seconds,
            allowed_payees,
            assets=self._config.assets,
            max_ttl=self._config.limits.max_session_ttl_seconds,
        )
        now = self._now()
        record = SessionRecord(
            id=new_session_id(),
            agent_id=spec.agent_id,
            planner_id=caller.id,
            task_digest=sha256_hex(spec.task_description),
            created_at=now,
            expires_at=now + spec.ttl_seconds,
            closed_at=None,
            budgets_minor=spec.budgets_minor,
            spent_minor={a: 0 for a in spec.budgets_minor},
            allowed_payees=spec.allowed_payees,
        )
        _store_call(lambda: self._store.create_session(record))
        log.info("session opened", extra={"session_id": record.id, "planner": caller.id})
        return self._view(record, now)

    def _view(self, record: SessionRecord, now: int) -> SessionView:
        assets = self._config.assets
        decimals = {a: assets[a].decimals if a in assets else 0 for a in record.budgets_minor}
        return SessionView(record, record.state(now), decimals)

    def _visible_session(self, caller: Principal, session_id: str) -> SessionRecord:
        sid = parse_session_id(session_id)
        record = _store_call(lambda: self._store.get_session(sid))
        if record is None:
            raise NotFound(Reason.SESSION_NOT_FOUND, "no such session")
        if caller.role is Role.AGENT and record.agent_id != caller.id:
            raise Forbidden(Reason.SESSION_AGENT_MISMATCH, "the session belongs to another agent")
        if caller.role is Role.PLANNER and record.planner_id != caller.id:
            raise Forbidden(
                Reason.SESSION_PLANNER_MISMATCH, "the session was opened by another planner"
            )
        if caller.role not in (Role.AGENT, Role.PLANNER):
            raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"role {caller.role} may not read sessions")
        return record

    def get_session(self, caller: Principal, session_id: str) -> SessionView:
        record = self._visible_session(caller, session_id)
        return self._view(record, self._now())

    def close_session(self, caller: Principal, session_id: str) -> SessionView:
        _require(caller, Role.PLANNER)
        record = self._visible_session(caller, session_id)
        now = self._now()
        closed = _store_call(lambda: self._store.close_session(record.id, now))
        if closed is None:
            raise NotFound(Reason.SESSION_NOT_FOUND, "no such session")
        log.info("session closed", extra={"session_id": record.id, "planner": caller.id})
        return self._view(closed, now)

    # -- keys ------------------------------------------------------------

    def public_keys(self) -> list[PublicKeyInfo]:
        keys = self._hsm.public_keys()
        if not keys:
            raise Unavailable(Reason.HSM_UNAVAILABLE, "the public keys have not been read yet")
        return keys

    def jwks(self) -> str:
        return json.dumps({"keys": [k.jwk() for k in self.public_keys()]}, sort_keys=True)

    # -- signing ---------------------------------------------------------

    def sign(self, caller: Principal, fields: IntentFields) -> SignResult:
        _require(caller, Role.AGENT)
        intent = validate_intent(fields, self._config.assets, self._key_ids)
        request_hash = hashlib.sha256(intent.request_digest_input(caller.id)).hexdigest()
        try:
            self._hsm.ensure_available()
        except HsmUnavailable:
            raise Unavailable(
                Reason.HSM_UNAVAILABLE, "the HSM is unavailable; nothing was signed"
            ) from None
        record, replayed = _store_call(lambda: self._decide(caller, intent, request_hash))
        return self._finish(record, replayed=replayed)

    def _decide(
        self, caller: Principal, intent: Intent, request_hash: str
    ) -> tuple[DecisionRecord, bool]:
        """The deciding transaction: (decision, answered from an earlier one)."""
        now = self._now()
        decision_id = new_decision_id()
        with self._store.payment_tx() as tx:
            previous = tx.decision_for_nonce(intent.nonce)
            if previous is not None:
                if previous.request_hash != request_hash:
                    raise Replayed(
                        Reason.NONCE_REPLAYED,
                        "this nonce was already used for a different request",
                    )
                return previous, True
            session = tx.session(intent.session_id)
            if session is None:
                raise NotFound(Reason.SESSION_NOT_FOUND, "no such session")
            if session.agent_id != caller.id:
                raise Forbidden(
                    Reason.SESSION_AGENT_MISMATCH, "the session belongs to another agent"
                )
            state = session.state(now)
            if state == "open":
                check_expiry(
                    intent.expires_at,
                    now,
                    self._config.limits.max_expiry_seconds,
                    session.expires_at,
                )
            decision = evaluate(self._policy, _facts(now, caller, intent, session))
            payload = None
            if decision.allowed:
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
            tx.record_decision(record, consume_nonce=True)
        return record, False

    def _finish(self, record: DecisionRecord, *, replayed: bool) -> SignResult:
        if record.outcome != "allow" or record.payload is None:
            _raise_denial(record)
        log.info(
            "payment allowed",
            extra={"decision_id": record.id, "session_id": record.session_id, "replayed": replayed},
        )
        if record.jws is not None:
            return SignResult(record.jws, record.id, record.key_id, record.payload, replayed)
        signing_input = jws_signing_input(record.key_id, record.payload)
        try:
            signature = self._hsm.sign_es256(record.key_id, signing_input)
        except KeyNotFound:
            raise Unavailable(Reason.HSM_UNAVAILABLE, "the key is not usable now") from None
        except HsmError:
            log.warning(
                "HSM failed after the decision was recorded", extra={"decision_id": record.id}
            )
            raise Unavailable(
                Reason.HSM_UNAVAILABLE,
                "the HSM is unavailable; the decision is recorded and a retry with the "
                "same request completes it",
                decision_id=record.id,
            ) from None
        jws = _store_call(
            lambda: self._store.attach_signature(record.id, jws_compact(signing_input, signature))
        )
        return SignResult(jws, record.id, record.key_id, record.payload, replayed)


def _require(caller: Principal, role: Role) -> None:
    # The gRPC layer checks roles from its table; this second check keeps the
    # service safe when it is called directly.
    if caller.role is not role:
        raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"role {caller.role} may not do this")


def _store_call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except StoreError as exc:
        log.error("store error: %s", exc)
        raise Unavailable(
            Reason.STORE_UNAVAILABLE, "the state store is unavailable; nothing was signed"
        ) from None


def _facts(now: int, caller: Principal, intent: Intent, session: SessionRecord) -> Facts:
    return Facts(
        now=now,
        agent_id=caller.id,
        payee=intent.payee,
        asset=intent.asset,
        amount_minor=intent.amount.minor,
        key_id=intent.key_id,
        session=SessionFacts(
            session_id=session.id,
            agent_id=session.agent_id,
            state="closed" if session.closed_at is not None else "open",
            expires_at=session.expires_at,
            budgets_minor=session.budgets_minor,
            spent_minor=session.spent_minor,
            allowed_payees=frozenset(session.allowed_payees),
        ),
    )


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
        outcome=str(decision.outcome),
        reason=decision.reason,
        message=decision.message,
        key_id=intent.key_id,
        asset=intent.asset,
        amount_minor=intent.amount.minor,
        payload=payload,
        trace_json=json.dumps([r.as_json() for r in decision.trace]),
        purpose=intent.purpose,
    )


def _raise_denial(record: DecisionRecord) -> NoReturn:
    try:
        reason = Reason(record.reason)
    except ValueError:
        reason = Reason.POLICY_NO_RULE_ALLOWED
    if record.reason in _SESSION_REASONS:
        raise SessionNotUsable(reason, record.message, decision_id=record.id)
    raise Denied(reason, record.message, decision_id=record.id)

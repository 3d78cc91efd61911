"""Sessions: what a planner opens, reads, closes and commits a plan to for an agent.

A session binds an agent to a task, budgets, payees and the policy pack in force
when it was opened; an agent may only read its own sessions, a planner the ones
it opened.
"""

from __future__ import annotations

import logging
from typing import Any

from paywarden.policy import PolicyPack, check_session
from paywarden.policy.vocabulary import Phase, SessionState
from paywarden.signer.core import audit_events, withdrawal
from paywarden.signer.core.deps import Deps, amount_text, require, store_call
from paywarden.signer.core.mandate_sessions import MandateCall, MandateOpening
from paywarden.signer.core.plans import PlanInput, validate_plan
from paywarden.signer.core.session_input import (
    new_session_id,
    parse_session_id,
    validate_agent_and_task,
    validate_session_request,
)
from paywarden.signer.core.views import SessionView
from paywarden.signer.encoding import sha256_hex
from paywarden.signer.errors import (
    Denied,
    Forbidden,
    Internal,
    InvalidInput,
    NotFound,
    Reason,
    SessionNotUsable,
)
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import (
    MandateMismatch,
    MandateReplayed,
    MandateRevoked,
    SessionRecord,
)
from paywarden.verify.mandates import MandateCode

log = logging.getLogger("paywarden.signer")


class Sessions:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._mandates = MandateOpening(deps, deps.mandates)
        self._store = deps.store
        self._assets = deps.assets
        self._metrics = deps.metrics

    def open_session(
        self,
        caller: Principal,
        agent_id: str,
        task_description: str,
        budgets: list[tuple[str, str]],
        ttl_seconds: int,
        allowed_payees: list[str],
        plan_bound: bool = False,
        mandate: str = "",
    ) -> SessionView:
        require(caller, Role.PLANNER)
        if mandate:
            return self._open_from_mandate(
                caller, agent_id, task_description, budgets, ttl_seconds, allowed_payees,
                plan_bound, mandate,
            )  # fmt: skip
        spec = validate_session_request(
            agent_id,
            task_description,
            budgets,
            ttl_seconds,
            allowed_payees,
            assets=self._assets,
            max_ttl=self._deps.limits.max_session_ttl_seconds,
        )
        pack = self._pack(spec.agent_id)
        violation = check_session(
            pack,
            self._assets,
            spec.budgets_minor,
            spec.ttl_seconds,
            spec.allowed_payees,
            plan_bound,
        )
        if violation is not None:
            raise Denied(violation.reason, violation.message)
        now = self._deps.now()
        record = self._record(
            caller, spec.agent_id, spec.task_description, pack, plan_bound, now,
            now + spec.ttl_seconds, spec.budgets_minor, spec.allowed_payees,
        )  # fmt: skip
        opened = self._opened(caller, record, now)
        store_call(lambda: self._store.create_session(record, self._decimals(record), opened))
        log.info("session opened", extra={"session_id": record.id, "planner": caller.id})
        return self._view(record, now)

    def _open_from_mandate(
        self,
        caller: Principal,
        agent_id: str,
        task_description: str,
        budgets: list[tuple[str, str]],
        ttl_seconds: int,
        allowed_payees: list[str],
        plan_bound: bool,
        chain: str,
    ) -> SessionView:
        """A session bounded by a human-signed mandate (:mod:`.mandate_sessions`)."""
        if budgets or allowed_payees:
            raise InvalidInput(
                Reason.BUDGET_INVALID,
                "a session opened from a mandate takes its budget and payees from the mandate",
            )
        max_ttl = self._deps.limits.max_session_ttl_seconds
        if not 0 <= ttl_seconds <= max_ttl:
            raise InvalidInput(Reason.TTL_INVALID, f"ttl_seconds must be between 0 and {max_ttl}")
        agent, task = validate_agent_and_task(agent_id, task_description)
        pack = self._pack(agent)
        now = self._deps.now()
        opening = self._mandates
        call = MandateCall(chain, str(caller))
        verified = opening.verify(call, agent, now)
        derived = opening.derive(verified, call, agent, pack, ttl_seconds, now)
        budgets_minor = {derived.mandate.asset: derived.budget_minor}
        violation = check_session(
            pack, self._assets, budgets_minor, derived.expires_at - now, derived.payees, plan_bound
        )
        if violation is not None:
            raise opening.refused(
                violation.reason, violation.message, MandateCode.INVALID_MANDATE, call,
                verified.id, denied=True,
            )  # fmt: skip
        record = self._record(
            caller, agent, task, pack, plan_bound, now, derived.expires_at, budgets_minor,
            derived.payees, mandate_id=verified.id,
        )  # fmt: skip
        opened = self._opened(caller, record, now, mandate=derived.audit)
        decimals = self._decimals(record)

        def create() -> tuple[Reason, str] | None:
            try:
                self._store.create_session(
                    record, decimals, opened, derived.mandate, derived.presentation
                )
            except MandateRevoked:
                return Reason.MANDATE_REVOKED, "the mandate, or the agent key it binds, is revoked"
            except MandateMismatch:
                return (
                    Reason.MANDATE_MISMATCH,
                    "a session was opened from this mandate on other terms",
                )
            except MandateReplayed:
                return Reason.MANDATE_HOP_REPLAYED, "this closed agent hop was presented before"
            return None

        refused = store_call(create)
        if refused is not None:
            raise opening.refused(*refused, MandateCode.INVALID_MANDATE, call, verified.id)
        log.info(
            "session opened from a mandate",
            extra={"session_id": record.id, "planner": caller.id, "mandate_id": verified.id},
        )
        return self._view(record, now)

    def _pack(self, agent_id: str) -> PolicyPack:
        pack = self._deps.packs.for_agent(agent_id)
        if pack is None:
            raise Denied(Reason.NO_POLICY_PACK, "no policy pack applies to this agent")
        return pack

    def _record(
        self,
        caller: Principal,
        agent_id: str,
        task: str,
        pack: PolicyPack,
        plan_bound: bool,
        now: int,
        expires_at: int,
        budgets_minor: dict[str, int],
        payees: tuple[str, ...],
        mandate_id: str | None = None,
    ) -> SessionRecord:
        return SessionRecord(
            id=new_session_id(),
            agent_id=agent_id,
            planner_id=caller.id,
            task_digest=sha256_hex(task),
            created_at=now,
            expires_at=expires_at,
            closed_at=None,
            budgets_minor=budgets_minor,
            spent_minor=dict.fromkeys(budgets_minor, 0),
            allowed_payees=payees,
            phase=Phase.EXPLORE if plan_bound else Phase.NORMAL,
            pack_id=pack.id,
            pack_version=pack.version,
            pack_sha256=pack.sha256,
            mandate_id=mandate_id,
        )

    def _decimals(self, record: SessionRecord) -> dict[str, int]:
        return {a: self._deps.decimals(a) for a in record.budgets_minor}

    def _opened(
        self,
        caller: Principal,
        record: SessionRecord,
        now: int,
        mandate: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        decimals = self._decimals(record)
        fields: dict[str, Any] = {"mandate": mandate} if mandate is not None else {}
        return audit_events.event(
            "session.open",
            caller,
            now,
            session_id=record.id,
            agent_id=record.agent_id,
            task_digest=record.task_digest,
            budgets={
                a: amount_text(m, decimals[a]) for a, m in sorted(record.budgets_minor.items())
            },
            expires_at=record.expires_at,
            allowed_payees=list(record.allowed_payees),
            phase=record.phase,
            pack_id=record.pack_id,
            pack_version=record.pack_version,
            pack_sha256=record.pack_sha256,
            **fields,
        )

    def _view(self, record: SessionRecord, now: int) -> SessionView:
        decimals = {a: self._deps.decimals(a) for a in record.budgets_minor}
        mandate = None
        if record.mandate_id is not None:
            mandate_id = record.mandate_id
            mandate = store_call(lambda: self._store.mandate(mandate_id, now))
            if mandate is None:  # a session names a mandate the store lacks
                raise Internal(Reason.INTERNAL, "internal error")
        return SessionView(record, record.state(now), decimals, mandate)

    def _visible_session(self, caller: Principal, session_id: str, now: int) -> SessionRecord:
        sid = parse_session_id(session_id)
        record = store_call(lambda: self._store.get_session(sid, now))
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
        now = self._deps.now()
        return self._view(self._visible_session(caller, session_id, now), now)

    def close_session(self, caller: Principal, session_id: str) -> SessionView:
        require(caller, Role.PLANNER)
        now = self._deps.now()
        record = self._visible_session(caller, session_id, now)
        closing = audit_events.event("session.close", caller, now, session_id=record.id)
        closed = store_call(lambda: withdrawal.close_session(self._store, record.id, now, closing))
        if closed is None:
            raise NotFound(Reason.SESSION_NOT_FOUND, "no such session")
        self._metrics.session_ended(record.id)
        log.info("session closed", extra={"session_id": record.id, "planner": caller.id})
        return self._view(closed, now)

    def commit_plan(
        self, caller: Principal, session_id: str, lines: list[PlanInput]
    ) -> SessionView:
        """``lines``: (payee, asset, max_amount, count) each."""
        require(caller, Role.PLANNER)
        now = self._deps.now()
        record = self._visible_session(caller, session_id, now)
        if record.phase != Phase.EXPLORE or record.state(now) != SessionState.OPEN:
            raise SessionNotUsable(
                Reason.SESSION_NOT_EXPLORING,
                "only an open plan-bound session in its explore phase can commit a plan",
            )
        pack = self._deps.packs.for_agent(record.agent_id)
        if pack is None or pack.id != record.pack_id:
            raise Denied(Reason.SESSION_PACK_CHANGED, "the session's policy pack no longer applies")
        out = validate_plan(record, lines, pack, self._assets)
        plan = [
            {
                "payee": ln.payee,
                "asset": ln.asset,
                "max_amount": amount_text(ln.max_amount_minor, self._deps.decimals(ln.asset)),
                "count": ln.count,
            }
            for ln in out
        ]
        committing = audit_events.event("plan.commit", caller, now, session_id=record.id, plan=plan)
        committed = store_call(lambda: self._store.commit_plan(record.id, out, now, committing))
        if committed is None:
            raise SessionNotUsable(Reason.SESSION_NOT_EXPLORING, "the plan was already committed")
        log.info("plan committed", extra={"session_id": record.id, "planner": caller.id})
        return self._view(committed, now)

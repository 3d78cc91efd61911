"""Refused Sign calls: recorded, summarised, charged to the caller, counted by the breaker.

Every refusal is audited (the first of its caller and reason in a window in full,
later ones counted into a ``sign.refused.summary``), takes one token of the
caller's refusal budget unless the signer itself failed, and counts in the
agent's circuit-breaker window, which freezes the agent once it is past the
pack's ``max_rejections``. Identical retries of an answered request are counted
the same way (``retries``, ``sign.retry.summary``). What is counted lives in
memory (:mod:`paywarden.signer.core.refusals`); only records and freezes reach
the store.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from paywarden.policy.vocabulary import FreezeScope, FreezeSource
from paywarden.signer.core import audit_events
from paywarden.signer.core.deps import Deps, require
from paywarden.signer.core.payments import MAX_EXPIRES_AT, IntentFields
from paywarden.signer.core.refusals import (
    FreezeView,
    RefusalBudget,
    RefusalCounter,
    RefusalLog,
    Summary,
)
from paywarden.signer.errors import PaywardenError, RateLimited, Reason, SessionNotUsable
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import Freeze, StoreError

log = logging.getLogger("paywarden.signer")

# Refusals that are not the caller's doing: they take no refusal budget and are not
# counted by the circuit breaker (they are still recorded, and summarised).
_NOT_THE_CALLERS = {
    Reason.STORE_UNAVAILABLE,
    Reason.HSM_UNAVAILABLE,
    Reason.INTERNAL,
    Reason.DEADLINE_EXCEEDED,
    Reason.CALL_CANCELLED,
    Reason.SHUTTING_DOWN,
}
# What makes two retries the same: the decision they answer from, and the answer
# (outcome, reason, approval state). A new answer is a new kind, recorded in full.
RetryKind = tuple[str, str, str, str | None]


class Refusals:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._store = deps.store
        self._metrics = deps.metrics
        limits = deps.limits
        store = deps.store
        self._freeze_view = FreezeView(
            store.freezes, store.freeze_generation, limits.freeze_cache_seconds, time.monotonic
        )
        self._budget = RefusalBudget(limits.refusal_burst, limits.refusal_rate_per_second)
        self._log: RefusalLog[str] = RefusalLog(limits.refusal_summary_seconds)
        # Identical retries of an answered request, counted by the deciding transaction.
        self.retries: RefusalLog[RetryKind] = RefusalLog(limits.refusal_summary_seconds)
        self._count = RefusalCounter()

    def refused_in_window(self, agent_id: str, window: int, now: int) -> int:
        """The agent's refusals in its breaker window (O(1)): they count as
        rejected requests when the breaker judges a decision."""
        return self._count.count(agent_id, window, now)

    def freezes_changed(self) -> None:
        """This process set a freeze: the cached view reloads before the next call."""
        self._freeze_view.invalidate()

    def refuse_early(self, caller: Principal, fields: IntentFields) -> None:
        """Before the request is read: a frozen agent or key (the cached view of the
        freezes), or a caller whose refusal budget is spent, is refused at once."""
        require(caller, Role.AGENT)
        try:
            self._freeze_view.refresh()
        except StoreError as exc:  # the deciding transaction will meet it too
            log.error("cannot read the freezes: %s", exc)
        scope = self._freeze_view.frozen(caller.id, fields.key_id)
        if scope is not None:
            raise SessionNotUsable(
                Reason.FROZEN, f"signing is frozen ({scope}); refused before the request was read"
            )
        if self._budget.exhausted(str(caller), time.monotonic()):
            raise RateLimited(
                Reason.RATE_LIMITED,
                "the caller's refusal budget is spent; refused before the request was read",
            )

    def refused(
        self, caller: Principal, fields: IntentFields, exc: PaywardenError, *, early: bool
    ) -> None:
        """Charges the refusal to the caller and records it: in full if it is the first
        of its (caller, reason) in the window, otherwise counted into a summary.

        A refusal made before the request was read (``early``) costs next to nothing
        and takes no budget: an agent is not rate-limited for having been frozen."""
        reason = str(exc.reason)
        now = self._deps.now()
        ours = exc.reason in _NOT_THE_CALLERS
        if not ours and not early:
            self._budget.spend(str(caller), time.monotonic())
        if exc.audit_seq is None:
            if self._log.admit(caller, reason, now):
                self._audit_refusal(caller, fields, exc)
                self._log.recorded(caller, reason, exc.audit_seq)
        # A decision is counted by the breaker from the store; a freeze's refusals
        # are the freeze's doing, not the agent's.
        if not ours and exc.decision_id is None and exc.reason != Reason.FROZEN:
            self._breaker_counts_refusal(caller, now)

    def flush(self, *, everything: bool = False) -> None:
        """Writes a summary for each refusal or retry window that is over (every open
        one with ``everything``, e.g. at shutdown): the calls counted there rather than
        recorded in full. ``sign.refused.summary`` counts one (caller, reason);
        ``sign.retry.summary`` the identical retries of one decision with one answer
        that changed nothing."""
        now = self._deps.now()
        for s in self._log.due(now, everything=everything):
            self._write_summary("sign.refused.summary", s, now, reason=s.kind)
        for r in self.retries.due(now, everything=everything):
            decision_id, outcome, reason, approval = r.kind
            self._write_summary(
                "sign.retry.summary",
                r,
                now,
                decision_id=decision_id,
                answer=outcome,
                reason=reason,
                approval=approval,
            )

    def _write_summary(self, action: str, s: Summary[Any], now: int, **fields: Any) -> None:
        summary = audit_events.event(
            action,
            s.principal,
            now,
            **fields,
            count=s.count,
            since=s.since,
            until=s.until,
            first_seq=s.first_seq,
        )
        try:
            self._store.audit_event(summary)
        except StoreError as err:
            log.error("cannot audit %s of %d calls: %s", action, s.count, err)

    def flush_due(self) -> None:
        """Records the refusal and retry summaries whose window is over (the
        checkpointer calls it on every tick, before it seals: a quiet agent's counts
        reach the log)."""
        self.flush()

    def flush_all(self) -> None:
        """Records every pending refusal and retry summary now (call before the final
        checkpoint)."""
        self.flush(everything=True)

    def operator_unfroze(self, scope: FreezeScope, target: str) -> None:
        """An operator lifted a freeze (told by :class:`Freezes`, after the store
        recorded it): an agent's breaker window starts afresh, the refusals counted
        before the unfreeze included, as the store restarts the window of its decisions.
        Only the operator's act says so: the cached freeze view may never have seen
        the breaker's freeze at all."""
        if scope == FreezeScope.AGENT:
            self._count.reset(target)
        self._freeze_view.invalidate()

    def _breaker_counts_refusal(self, caller: Principal, now: int) -> None:
        """Counts a refusal in the agent's breaker window (O(1)); past the breaker's
        max_rejections the agent is frozen, as a denial past it would."""
        if caller.role is not Role.AGENT:
            return
        pack = self._deps.packs.for_agent(caller.id)
        breaker = pack.model.breaker if pack is not None else None
        if pack is None or breaker is None:
            return
        count = self._count.add(caller.id, breaker.window_seconds, now)
        if breaker.max_rejections is None or count <= breaker.max_rejections:
            return
        why = f"{count} refusals in {breaker.window_seconds} s (more than {breaker.max_rejections})"
        freeze, event = breaker_freeze(caller, now, why, pack.id)
        try:
            created = self._store.set_freeze(freeze, event)
        except StoreError as err:
            log.error("cannot freeze an agent for its refusals: %s", err)
            return
        self._freeze_view.invalidate()
        if created:
            self._metrics.froze(FreezeScope.AGENT, caller.id, FreezeSource.BREAKER, now)
            log.warning("circuit breaker froze an agent", extra={"reason": freeze.reason})

    def _audit_refusal(self, caller: Principal, fields: IntentFields, exc: PaywardenError) -> None:
        """A refusal that no decision recorded (bad input, binding, replay, HSM, freeze).

        The request as the agent sent it is untrusted text: it goes under ``untrusted``,
        bounded, and numbers JSON cannot carry exactly are kept as strings.
        """
        if exc.reason == Reason.STORE_UNAVAILABLE:
            return  # the store just failed; waiting on it again helps nobody
        if exc.reason in (Reason.DEADLINE_EXCEEDED, Reason.CALL_CANCELLED, Reason.SHUTTING_DOWN):
            return  # the caller is gone and nothing was decided; nobody waits on a record
        expires = fields.expires_at
        refused = audit_events.event(
            "sign.refused",
            caller,
            self._deps.now(),
            reason=str(exc.reason),
            message=exc.message,
            untrusted={
                "purpose": fields.purpose[:2048],
                "request": {
                    "session_id": fields.session_id[:100],
                    "key_id": fields.key_id[:100],
                    "payee": fields.payee[:300],
                    "amount": fields.amount[:60],
                    "asset": fields.asset[:100],  # an x402 network/contract too
                    "nonce": fields.nonce[:100],
                    "expires_at": expires if abs(expires) <= MAX_EXPIRES_AT else str(expires),
                    **({} if fields.x402 is None else {"x402": dict(fields.x402)}),
                },
            },
        )
        try:
            exc.audit_seq = self._store.audit_event(refused)
        except (StoreError, ValueError, TypeError) as err:
            log.error("cannot audit a refused Sign: %s", err)


def breaker_freeze(
    caller: Principal, now: int, why: str, pack_id: str | None
) -> tuple[Freeze, audit_events.Event]:
    """The agent freeze a tripped breaker sets, and its audit record."""
    freeze = Freeze(
        FreezeScope.AGENT,
        caller.id,
        f"circuit breaker: {why}",
        FreezeSource.BREAKER,  # the actor
        FreezeSource.BREAKER,
        now,
    )
    event = audit_events.event(
        "breaker.freeze",
        None,
        now,
        scope=FreezeScope.AGENT,
        target=caller.id,
        reason=freeze.reason,
        pack_id=pack_id,
    )
    return freeze, event

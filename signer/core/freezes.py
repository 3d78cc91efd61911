"""The operator's kill switch: freezes of the whole signer, an agent, a session or a key.

Operators cannot sign or approve; nothing here touches a payment key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from paywarden.policy.vocabulary import FreezeScope, FreezeSource
from paywarden.signer.core import audit_events
from paywarden.signer.core.deps import Deps, control_store_call
from paywarden.signer.core.session_input import parse_session_id
from paywarden.signer.core.validation import clean_text
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.signer.identity import PRINCIPAL_ID, Principal
from paywarden.signer.store.records import Freeze

# The kill switch and the checkpoints log under the name they had before the split.
log = logging.getLogger("paywarden.signer.core.control")

SCOPES = tuple(FreezeScope)
MAX_REASON = 1024


class Freezes:
    def __init__(
        self,
        deps: Deps,
        *,
        unfrozen: Callable[[FreezeScope, str], None] | None = None,
        key_ids: Callable[[], Collection[str]] | None = None,
    ) -> None:
        """``unfrozen(scope, target)`` is called after a freeze is lifted: the signing
        path resets what it counted for the breaker (``Refusals.operator_unfroze``).
        ``key_ids``: the payment key versions a key freeze may name (default: the
        configured ones); a version rotated in later may be frozen too."""
        self._deps = deps
        self._key_ids = key_ids
        self._store = deps.store
        self._metrics = deps.metrics
        self._unfrozen = unfrozen

    def _target(self, scope: str, target: str) -> tuple[FreezeScope, str]:
        """The scope and the target, checked."""
        if scope not in SCOPES:
            raise InvalidInput(Reason.STRING_INVALID, f"scope must be one of {', '.join(SCOPES)}")
        return FreezeScope(scope), self._checked_target(FreezeScope(scope), target)

    def _checked_target(self, scope: FreezeScope, target: str) -> str:
        if scope == FreezeScope.GLOBAL:
            if target:
                raise InvalidInput(Reason.STRING_INVALID, "a global freeze has no target")
            return ""
        if scope == FreezeScope.AGENT and not PRINCIPAL_ID.fullmatch(target):
            raise InvalidInput(Reason.STRING_INVALID, "target is not an agent id")
        if scope == FreezeScope.SESSION:
            return parse_session_id(target)
        known = self._key_ids() if self._key_ids is not None else ()
        if scope == FreezeScope.KEY and target not in {*self._deps.payment_keys, *known}:
            raise InvalidInput(Reason.UNKNOWN_KEY, "target is not a payment key of this signer")
        return target

    def freeze(
        self, caller: Principal, requested_scope: str, target: str, reason: str
    ) -> tuple[Freeze, bool]:
        scope, target = self._target(requested_scope, target)
        reason = clean_text("reason", reason, max_len=MAX_REASON)
        now = self._deps.now()
        freeze = Freeze(
            scope,
            target,
            reason,
            f"{caller.role}/{caller.id}",
            FreezeSource.OPERATOR,
            now,
        )
        event = audit_events.event(
            "freeze.set", caller, now, scope=scope, target=target, reason=reason
        )
        created = control_store_call(lambda: self._store.set_freeze(freeze, event))
        if created:
            self._metrics.froze(scope, target, FreezeSource.OPERATOR, now)
            log.warning("freeze set", extra={"reason": reason})
        current = next(
            (f for f in self.freezes() if f.scope == scope and f.target == target), freeze
        )
        return current, created

    def unfreeze(self, caller: Principal, requested_scope: str, target: str, reason: str) -> bool:
        scope, target = self._target(requested_scope, target)
        reason = clean_text("reason", reason, max_len=MAX_REASON)
        now = self._deps.now()
        event = audit_events.event(
            "freeze.clear", caller, now, scope=scope, target=target, reason=reason
        )
        removed = control_store_call(lambda: self._store.clear_freeze(scope, target, now, event))
        if removed and self._unfrozen is not None:
            self._unfrozen(scope, target)
        self.freezes()
        if removed:
            self._metrics.unfroze(scope, target)
            log.warning("freeze lifted", extra={"reason": reason})
        return removed

    def freezes(self) -> list[Freeze]:
        current = control_store_call(self._store.freezes)
        counts: dict[str, int] = {}
        for f in current:
            counts[f.scope] = counts.get(f.scope, 0) + 1
        self._metrics.frozen_now(counts)
        return current

"""The core's use cases, built together over one :class:`Deps`.

The api layer hands each servicer the use case it serves (``server.start``):
Signer → :class:`Signing`, :class:`PublicKeys` and :class:`PaymentChecks`,
Sessions → :class:`Sessions`,
Approvals → :class:`Approvals`, Control → :class:`Freezes`,
:class:`Revocations` (the authenticator also asks its check on every call) and
:class:`Checkpoints`. :class:`Refusals` is shared by the Sign path, the
kill switch (an unfreeze restarts the breaker's count) and the checkpointer
(due summaries are written before a seal). Plain Python: nothing here knows gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from paywarden.hsm import Hsm
from paywarden.policy import PackSet
from paywarden.signer.config import Config
from paywarden.signer.core.approvals import Approvals
from paywarden.signer.core.checkpoints import Checkpoints
from paywarden.signer.core.deps import Deps
from paywarden.signer.core.explain import Explain
from paywarden.signer.core.freezes import Freezes
from paywarden.signer.core.keys import KeyView, PublicKeys
from paywarden.signer.core.mandate_revocations import MandateRevocations
from paywarden.signer.core.payments import IntentFields
from paywarden.signer.core.receipts import Receipts
from paywarden.signer.core.refusing import Refusals
from paywarden.signer.core.reloads import PolicyReloads
from paywarden.signer.core.revocations import Revocations
from paywarden.signer.core.sessions import Sessions
from paywarden.signer.core.signing import Signing
from paywarden.signer.core.standing import PaymentChecks
from paywarden.signer.core.views import SessionView, SignResult
from paywarden.signer.deadlines import NO_DEADLINE, Deadline
from paywarden.signer.errors import PaywardenError
from paywarden.signer.identity import Principal
from paywarden.signer.metrics import Metrics
from paywarden.signer.store.protocols import Store

log = logging.getLogger("paywarden.signer")


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
        self.metrics = deps.metrics
        self.refusals = Refusals(deps)
        self.key_view = KeyView(
            store, hsm, deps.payment_keys, deps.limits.freeze_cache_seconds, now=deps.now
        )
        try:  # registers the configured keys on the token that the store lacks
            self.key_view.refresh()
        except PaywardenError as exc:
            log.error("the payment keys cannot be loaded yet: %s", exc)
        self.signing = Signing(deps, self.refusals, self.key_view)
        self.keys = PublicKeys(self.key_view, deps.limits.max_expiry_seconds)
        self.payments = PaymentChecks(deps)
        self.sessions = Sessions(deps)
        self.approvals = Approvals(deps)
        self.freezes = Freezes(
            deps, unfrozen=self.refusals.operator_unfroze, key_ids=self.key_view.key_ids
        )
        self.checkpoints = Checkpoints(deps)
        self.receipts = Receipts(deps, self.checkpoints)
        self.revocations = Revocations(deps)
        self.mandates = MandateRevocations(deps)
        self.explain = Explain(deps, self.refusals)
        self.reloads = PolicyReloads(deps, config.policy.dir, config.groups)

    # Shortcuts for tests and tools that drive the core directly.

    def sign(
        self, caller: Principal, fields: IntentFields, deadline: Deadline = NO_DEADLINE
    ) -> SignResult:
        return self.signing.sign(caller, fields, deadline)

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
        return self.sessions.open_session(
            caller,
            agent_id,
            task_description,
            budgets,
            ttl_seconds,
            allowed_payees,
            plan_bound,
            mandate,
        )

    def get_session(self, caller: Principal, session_id: str) -> SessionView:
        return self.sessions.get_session(caller, session_id)

    def close_session(self, caller: Principal, session_id: str) -> SessionView:
        return self.sessions.close_session(caller, session_id)

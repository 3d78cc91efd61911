"""Attack: an operator freezes signing while the HSM is signing a payment.

The decision was allowed before the freeze, but the kill switch must win: a
signature finished after the freeze is discarded, never stored nor returned,
as for a payment withdrawn while it was being signed. A freeze is an injected
fault from inside the HSM call, the only way to hit that window on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from paywarden.hsm import Hsm
from paywarden.signer.api.startup import load_packs
from paywarden.signer.core.service import SigningService
from paywarden.signer.core.views import SignStatus
from paywarden.signer.errors import PaywardenError, Reason, SessionNotUsable

from tests.attacks.kit import AGENT, OPERATOR, PLANNER, dataset_fields
from tests.helpers import Stack


class FreezingHsm:
    """The real HSM; ``during_sign`` runs inside the signing call (the fault hook)."""

    def __init__(self, hsm: Any) -> None:
        self._hsm = hsm
        self.during_sign: Callable[[], None] = lambda: None

    def sign_es256(self, key_id: str, signing_input: bytes) -> bytes:
        self.during_sign()
        result: bytes = self._hsm.sign_es256(key_id, signing_input)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hsm, name)


@pytest.mark.parametrize("scope", ["global", "agent", "session", "key"])
def test_a_freeze_set_while_the_hsm_signs_discards_the_signature(stack: Stack, scope: str) -> None:
    hsm = FreezingHsm(stack.hsm)
    # FreezingHsm stands in for the Hsm (it wraps the real one): a test double, not a subclass.
    service = SigningService(
        stack.config, stack.store, cast(Hsm, hsm), load_packs(stack.config), clock=stack.clock.now
    )
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "5.00")], 3600, [])
    sid = session.record.id
    target = {"global": "", "agent": "agent-1", "session": sid, "key": "payments.v1"}[scope]
    hsm.during_sign = lambda: stack.control.freeze(OPERATOR, scope, target, "incident")
    request = dataset_fields(sid, expires_at=int(stack.clock.now()) + 60)
    try:
        with pytest.raises(SessionNotUsable) as frozen:
            service.sign(AGENT, request)
        assert frozen.value.reason == Reason.FROZEN
        decision = stack.store.get_decision(frozen.value.decision_id or "")
        assert decision is not None and decision.outcome == "allow" and decision.jws is None
        hsm.during_sign = lambda: None
        # while frozen, the identical retry is refused too, and nothing is stored
        with pytest.raises(PaywardenError) as again:
            service.sign(AGENT, request)
        assert again.value.reason == Reason.FROZEN
        decision = stack.store.get_decision(decision.id)
        assert decision is not None and decision.jws is None
    finally:
        stack.control.unfreeze(OPERATOR, scope, target, "all clear")
    # lifted: the recorded decision completes on retry, as after an HSM failure
    done = service.sign(AGENT, request)
    assert done.status is SignStatus.SIGNED and done.replayed

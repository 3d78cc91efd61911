"""Attack: an operator freezes signing while the HSM is signing a payment.

The decision, its spend, its audit record and its signature are committed in one
transaction, and the HSM signs inside it: a freeze set meanwhile cannot slip in
between the decision and its signature. It waits for that commit, so the payment
decided before it is signed and kept whole, the freeze's record follows the
decision's in the audit log, and the kill switch wins for every signature after
it, the identical retry included. The freeze is sent from another thread while the
HSM call is held open (an injected fault: the only way to hit that window on demand).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest
from paywarden.hsm import Hsm
from paywarden.signer.api.startup import load_packs
from paywarden.signer.core.service import SigningService
from paywarden.signer.core.views import SignStatus
from paywarden.signer.errors import PaywardenError, Reason

from tests.attacks.kit import AGENT, OPERATOR, PLANNER, dataset_fields
from tests.helpers import Stack
from tests.support.threads import start_and_wait_until_in


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
def test_a_freeze_sent_while_the_hsm_signs_takes_effect_after_that_payment_commits(
    stack: Stack, scope: str
) -> None:
    hsm = FreezingHsm(stack.hsm)
    # FreezingHsm stands in for the Hsm (it wraps the real one): a test double, not a subclass.
    service = SigningService(
        stack.config, stack.store, cast(Hsm, hsm), load_packs(stack.config), clock=stack.clock.now
    )
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "5.00")], 3600, [])
    sid = session.record.id
    target = {"global": "", "agent": "agent-1", "session": sid, "key": "payments.v1"}[scope]
    freezer = threading.Thread(
        target=lambda: stack.control.freeze(OPERATOR, scope, target, "incident")
    )

    # the freeze is on its way: it waits for the store's lock while the HSM signs
    hsm.during_sign = lambda: start_and_wait_until_in(freezer, "SqliteConnection._locked")
    request = dataset_fields(sid, expires_at=int(stack.clock.now()) + 60)
    try:
        signed = service.sign(AGENT, request)
        hsm.during_sign = lambda: None
        freezer.join()
        # decided before the freeze: signed and kept whole, in one commit
        assert signed.status is SignStatus.SIGNED and signed.jws
        decision = stack.store.get_decision(signed.decision_id)
        assert decision is not None and decision.jws == signed.jws
        assert service.get_session(PLANNER, sid).record.spent_minor == {"USD": 60}
        # the freeze's record follows the decision's
        size, _root = stack.store.audit_head()
        later = [json.loads(stack.store.audit_record(s)) for s in range(signed.audit_seq, size + 1)]
        assert later[0]["action"] == "sign.decision"
        assert [r["action"] for r in later].count("freeze.set") == 1
        # and the kill switch wins from then on: a new payment, and the identical retry
        for again in (dataset_fields(sid, expires_at=int(stack.clock.now()) + 60), request):
            with pytest.raises(PaywardenError) as frozen:
                service.sign(AGENT, again)
            assert frozen.value.reason == Reason.FROZEN
    finally:
        stack.control.unfreeze(OPERATOR, scope, target, "all clear")
    # lifted: the identical retry is answered the token it was signed with
    done = service.sign(AGENT, request)
    assert done.status is SignStatus.SIGNED and done.replayed and done.jws == signed.jws

"""Attack: a payment that was allowed but never signed keeps its spend for ever.

The HSM fails after the decision is recorded; the agent never retries. Once the
payment's ``exp`` has passed nothing can sign it, so its spend must stop counting
against the session's budget (and the agent's limits) without a retry, while a
late retry of that very request is still denied.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from paywarden.hsm import Hsm, HsmError
from paywarden.signer.api.startup import load_packs
from paywarden.signer.core.service import SigningService
from paywarden.signer.core.views import SignStatus
from paywarden.signer.errors import PaywardenError, Reason, Unavailable

from tests.attacks.kit import AGENT, PLANNER, dataset_fields
from tests.helpers import Stack
from tests.support.threads import start_and_wait_until_in


class FailingHsm:
    """The real HSM, except that ``fail_next`` signatures fail (an injected fault)."""

    def __init__(self, hsm: Any) -> None:
        self._hsm = hsm
        self.fail_next = 0
        self.while_signing: Callable[[], None] = lambda: None

    def sign_es256(self, key_id: str, signing_input: bytes) -> bytes:
        if self.fail_next:
            self.fail_next -= 1
            raise HsmError("injected: the module failed mid-call")
        self.while_signing()
        result: bytes = self._hsm.sign_es256(key_id, signing_input)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hsm, name)


@pytest.fixture
def flaky(stack: Stack) -> Iterator[tuple[SigningService, FailingHsm]]:
    hsm = FailingHsm(stack.hsm)
    # FailingHsm stands in for the Hsm (it wraps the real one): a test double, not a subclass.
    service = SigningService(
        stack.config, stack.store, cast(Hsm, hsm), load_packs(stack.config), clock=stack.clock.now
    )
    yield service, hsm


def test_an_unsigned_payment_past_its_expiry_no_longer_blocks_the_budget(
    stack: Stack, flaky: tuple[SigningService, FailingHsm]
) -> None:
    service, hsm = flaky
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "1.00")], 3600, [])
    sid = session.record.id
    now = int(stack.clock.now())
    unsigned = dataset_fields(sid, expires_at=now + 60)
    hsm.fail_next = 1
    with pytest.raises(Unavailable) as failed:
        service.sign(AGENT, unsigned)
    assert failed.value.reason == Reason.HSM_UNAVAILABLE
    # while its exp has not passed, the unsigned payment holds its spend
    view = service.get_session(PLANNER, sid)
    assert view.record.spent_minor == {"USD": 60}

    stack.clock.advance(61)  # the payment's exp passes; nobody retries
    view = service.get_session(PLANNER, sid)
    assert view.record.spent_minor == {"USD": 0}
    later = dataset_fields(sid, expires_at=int(stack.clock.now()) + 60)
    signed = service.sign(AGENT, later)
    assert signed.status is SignStatus.SIGNED and signed.jws

    # the expired request is never signed later: its retry is denied
    with pytest.raises(PaywardenError) as retried:
        service.sign(AGENT, unsigned)
    assert retried.value.reason == Reason.EXPIRY_IN_PAST
    decision = stack.store.get_decision(failed.value.decision_id or "")
    assert decision is not None and decision.jws is None
    # and the budget counts the one signed payment, not the unsigned one
    assert service.get_session(PLANNER, sid).record.spent_minor == {"USD": 60}


def test_a_signed_payment_keeps_its_spend_after_its_expiry(
    stack: Stack, flaky: tuple[SigningService, FailingHsm]
) -> None:
    service, _hsm = flaky
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "1.00")], 3600, [])
    sid = session.record.id
    paid = service.sign(AGENT, dataset_fields(sid, expires_at=int(stack.clock.now()) + 60))
    assert paid.status is SignStatus.SIGNED
    stack.clock.advance(61)
    assert service.get_session(PLANNER, sid).record.spent_minor == {"USD": 60}
    with pytest.raises(PaywardenError) as over:
        service.sign(AGENT, dataset_fields(sid, expires_at=int(stack.clock.now()) + 60))
    assert over.value.reason == Reason.BUDGET_EXCEEDED


def test_a_signature_finished_after_the_expiry_is_discarded_not_double_counted(
    stack: Stack, flaky: tuple[SigningService, FailingHsm]
) -> None:
    """The HSM finishes after the payment's exp, when its spend has lapsed and another
    payment may be using it: the late signature must not bring the spend back."""
    service, hsm = flaky
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "1.00")], 3600, [])
    sid = session.record.id
    slow = dataset_fields(sid, expires_at=int(stack.clock.now()) + 60)
    hsm.while_signing = lambda: stack.clock.advance(61)
    with pytest.raises(PaywardenError) as late:
        service.sign(AGENT, slow)
    hsm.while_signing = lambda: None
    assert late.value.reason == Reason.PAYMENT_WITHDRAWN
    decision = stack.store.get_decision(late.value.decision_id or "")
    assert decision is not None and decision.jws is None
    other = service.sign(AGENT, dataset_fields(sid, expires_at=int(stack.clock.now()) + 60))
    assert other.status is SignStatus.SIGNED
    assert service.get_session(PLANNER, sid).record.spent_minor == {"USD": 60}


def test_a_signature_attached_after_its_expiry_lapsed_cannot_overspend_the_session(
    stack: Stack, flaky: tuple[SigningService, FailingHsm]
) -> None:
    """Payment A is signed by the HSM inside its own transaction; meanwhile its exp
    passes, and payment B, which needs A's spend, arrives and waits for A's commit.
    A's signature must be judged at the time it is attached (its spend has lapsed:
    discarded), and B decided on what A's transaction committed: on a 1.00 budget,
    0.60 + 0.60 must never both be signed."""
    service, hsm = flaky
    session = service.open_session(PLANNER, "agent-1", "buy data", [("USD", "1.00")], 3600, [])
    sid = session.record.id
    a = dataset_fields(sid, expires_at=int(stack.clock.now()) + 5)
    b = dataset_fields(sid, expires_at=int(stack.clock.now()) + 60)
    answers: list[Any] = []
    second = threading.Thread(target=lambda: answers.append(service.sign(AGENT, b)))

    def while_a_is_signed() -> None:
        hsm.while_signing = lambda: None
        stack.clock.advance(6)  # A's exp passes while the HSM signs it
        start_and_wait_until_in(second, "GroupCommit.run")  # B waits for A's commit

    hsm.while_signing = while_a_is_signed
    with pytest.raises(PaywardenError) as late:
        service.sign(AGENT, a)
    second.join()

    assert answers and answers[0].status is SignStatus.SIGNED  # B was signed
    assert late.value.reason == Reason.PAYMENT_WITHDRAWN  # A's signature was discarded
    decision = stack.store.get_decision(late.value.decision_id or "")
    assert decision is not None and decision.jws is None
    assert service.get_session(PLANNER, sid).record.spent_minor == {"USD": 60}

"""Attack (fault): callers give up while another process holds the store's lock.

A real ``paywarden serve``; the test itself takes the SQLite write lock
(``BEGIN IMMEDIATE`` on the same file) and holds it until every client has hit
its deadline. Those calls must never be decided, recorded or signed, not even
once the lock is released, and the server must go on serving.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from paywarden.signer.api.status import status_code_for
from paywarden.signer.core.payments import IntentFields
from paywarden.signer.core.views import SignStatus
from paywarden.signer.deadlines import Deadline
from paywarden.signer.errors import DeadlineExceeded, PaywardenError, Reason
from paywarden.v1 import signer_pb2

from tests.attacks.kit import AGENT, PLANNER
from tests.helpers import Pki, Stack, TestToken, reason_of, write_config
from tests.support.intents import intent_fields
from tests.support.threads import inside
from tests.test_killswitch import ServedApi, intent, metric, poll, running, scrape

DEADLINE = 2.0  # the clients' deadline, seconds


def _sign_within(api: ServedApi, req: signer_pb2.PaymentIntent, timeout: float) -> tuple[str, Any]:
    try:
        resp = api.signer_of("agent-1").Sign(signer_pb2.SignRequest(intent=req), timeout=timeout)
    except grpc.RpcError as exc:
        err: Any = exc
        return err.code().name, reason_of(err)
    return "OK", resp.jws


def _answered(api: ServedApi) -> float:
    return metric(scrape(api.srv), "paywarden_sign_latency_seconds_count") or 0.0


def test_calls_abandoned_behind_a_held_store_lock_are_never_decided_or_signed(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki)
    db = tmp_path / "state.db"
    with running(config, pki) as api:
        sid = api.open_session("agent-1")
        assert api.attempt("agent-1", intent(sid)).signed
        abandoned = [intent(sid) for _ in range(3)]
        holder = sqlite3.connect(db, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with ThreadPoolExecutor(len(abandoned)) as pool:
                answers = list(pool.map(lambda r: _sign_within(api, r, DEADLINE), abandoned))
        finally:  # released only once every caller has given up
            holder.execute("ROLLBACK")
            holder.close()
        for code, detail in answers:
            assert code in ("DEADLINE_EXCEEDED", "UNAVAILABLE"), (code, detail)

        # every call the server took has been answered: nothing is still waiting to commit
        poll(lambda: _answered(api), lambda n: n >= 1 + len(abandoned), "abandoned calls", 60)
        later = api.attempt("agent-1", intent(sid))
        assert later.signed  # still serving

        nonces = {r.nonce for r in abandoned}
        with sqlite3.connect(db) as conn:
            stored = {n for (n,) in conn.execute("SELECT nonce FROM decisions")}
            records = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit_log")]
        assert not nonces & stored, "a call whose caller gave up was decided"
        decided = {r["decision"]["nonce"] for r in records if r["action"] == "sign.decision"}
        assert not nonces & decided, "a call whose caller gave up was audited as decided"
        assert later.nonce in stored


def test_a_call_cancelled_while_it_waited_for_the_lock_is_not_decided(stack: Stack) -> None:
    """The service side: the caller cancels while the call waits for the store's lock;
    once the lock is taken the call is abandoned and its transaction rolled back."""
    planner, agent = PLANNER, AGENT
    session = stack.service.open_session(planner, "agent-1", "buy", [("USD", "5.00")], 600, [])
    answers = iter([True])  # still there when the call starts, gone once the lock is held
    deadline = Deadline(time.monotonic() + 30, lambda: next(answers, False))
    fields = _fields(stack, session.record.id)
    size_before, _ = stack.store.audit_head()
    with pytest.raises(DeadlineExceeded) as gone:
        stack.service.sign(agent, fields, deadline)
    assert gone.value.reason == Reason.CALL_CANCELLED
    assert status_code_for(gone.value) is grpc.StatusCode.CANCELLED  # not DEADLINE_EXCEEDED
    assert stack.store.audit_head()[0] == size_before  # nothing recorded
    assert stack.service.get_session(planner, session.record.id).record.spent_minor == {"USD": 0}


def test_a_call_gone_once_decided_gets_nothing_signed_and_a_retry_completes_it(
    stack: Stack,
) -> None:
    """The caller leaves once its payment is decided, as the signer turns to the HSM
    (which signs inside the decision's transaction): the HSM is not asked to sign for
    it, the decision is committed unsigned, and the identical retry, while the payment
    is unexpired, completes it."""
    planner, agent = PLANNER, AGENT
    session = stack.service.open_session(planner, "agent-1", "buy", [("USD", "5.00")], 600, [])
    fields = _fields(stack, session.record.id)
    # still there until the signer asks for the signature of its decision
    deadline = Deadline(time.monotonic() + 30, lambda: not inside("Signing._signature"))
    registry = stack.service.metrics.registry
    hsm_calls = "paywarden_hsm_sign_latency_seconds_count"
    signed_before = registry.get_sample_value(hsm_calls)
    with pytest.raises(DeadlineExceeded) as gone:
        stack.service.sign(agent, fields, deadline)
    assert gone.value.reason == Reason.CALL_CANCELLED
    assert registry.get_sample_value(hsm_calls) == signed_before  # the HSM never signed
    with sqlite3.connect(stack.config.store.path) as conn:  # committed, unsigned
        (outcome, jws) = conn.execute(
            "SELECT outcome, jws FROM decisions WHERE nonce = ?", (fields.nonce,)
        ).fetchone()
    assert (outcome, jws) == ("allow", None)
    retry = stack.service.sign(agent, fields)
    assert retry.status is SignStatus.SIGNED and retry.replayed and retry.jws


def _fields(stack: Stack, session_id: str) -> IntentFields:
    return intent_fields(
        session_id,
        payee="weather-data-inc",
        amount="1.00",
        reference="r",
        purpose="p",
        expires_at=int(stack.clock.now()) + 60,
    )


def _stored_jws(path: Path, nonce: str) -> str | None:
    """What another connection sees: only a committed signature."""
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT jws FROM decisions WHERE nonce = ?", (nonce,)).fetchone()
    return None if row is None else row[0]


def _gone_when(ended: Callable[[], bool], how: str) -> Deadline:
    """A deadline that ends once ``ended()``: the caller cancels, or the server's
    stop (the end of its grace period) passes."""
    if how == "cancelled":
        return Deadline(time.monotonic() + 30, lambda: not ended())
    return Deadline(
        time.monotonic() + 30, stop_at=lambda: time.monotonic() - 1 if ended() else None
    )


@pytest.mark.parametrize("how", ["cancelled", "stopping"])
def test_a_signature_stored_is_always_returned_not_denied(stack: Stack, how: str) -> None:
    """The caller's deadline (or the server's stop) passes just after the signature
    was stored: the payment is spent for good and a retry would get that very token,
    so the caller that is still there gets it too, never "nothing was signed"."""
    planner, agent = PLANNER, AGENT
    session = stack.service.open_session(planner, "agent-1", "buy", [("USD", "5.00")], 600, [])
    path = stack.config.store.path
    fields = _fields(stack, session.record.id)
    deadline = _gone_when(lambda: _stored_jws(path, fields.nonce) is not None, how)
    result = stack.service.sign(agent, fields, deadline)
    assert result.status is SignStatus.SIGNED and result.jws
    assert result.jws == _stored_jws(path, fields.nonce)
    spent = stack.service.get_session(planner, session.record.id).record.spent_minor
    assert spent == {"USD": 100}


@pytest.mark.parametrize("how", ["cancelled", "stopping"])
def test_a_caller_past_its_deadline_gets_no_signature_stored(stack: Stack, how: str) -> None:
    """The caller's deadline (or the server's stop) passes while the HSM signs: the
    signature is thrown away, not stored, and the caller is told nothing was signed;
    the identical retry, while the payment is unexpired, completes it."""
    planner, agent = PLANNER, AGENT
    session = stack.service.open_session(planner, "agent-1", "buy", [("USD", "5.00")], 600, [])
    path = stack.config.store.path
    registry = stack.service.metrics.registry
    hsm_calls = "paywarden_hsm_sign_latency_seconds_count"
    signed_before = registry.get_sample_value(hsm_calls)
    fields = _fields(stack, session.record.id)
    deadline = _gone_when(lambda: registry.get_sample_value(hsm_calls) != signed_before, how)
    with pytest.raises(PaywardenError) as gone:
        stack.service.sign(agent, fields, deadline)
    expected = Reason.CALL_CANCELLED if how == "cancelled" else Reason.SHUTTING_DOWN
    assert gone.value.reason == expected
    assert registry.get_sample_value(hsm_calls) != signed_before  # the HSM did sign
    assert _stored_jws(path, fields.nonce) is None  # but nothing was stored
    retry = stack.service.sign(agent, fields)
    assert retry.status is SignStatus.SIGNED and retry.replayed and retry.jws
    assert retry.jws == _stored_jws(path, fields.nonce)


@pytest.mark.parametrize("how", ["cancelled", "stopping"])
def test_a_retry_of_a_signed_payment_is_answered_its_token_not_denied(
    stack: Stack, how: str
) -> None:
    """The retry of a signed payment ends (caller or server's stop) just after its
    commit: the token it finds is answered, not "nothing was signed"."""
    planner, agent = PLANNER, AGENT
    session = stack.service.open_session(planner, "agent-1", "buy", [("USD", "5.00")], 600, [])
    path = stack.config.store.path
    fields = _fields(stack, session.record.id)
    first = stack.service.sign(agent, fields)
    assert first.status is SignStatus.SIGNED

    def committed_size() -> int:  # what another connection sees: only committed records
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT size FROM audit_state").fetchone()[0])

    before = committed_size()
    retry = stack.service.sign(agent, fields, _gone_when(lambda: committed_size() > before, how))
    assert retry.status is SignStatus.SIGNED and retry.replayed
    assert retry.jws == first.jws

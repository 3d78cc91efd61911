"""Signer.CheckPayment: a payee asks, before it settles, whether a signed payment still
stands; the kill switch and key revocation void payments signed but not settled.

Against the in-process stack (real token, store and mutual TLS); the freezes are set with
``paywarden ctl`` as an operator would. A payee learns nothing of payments that do not
name it: every such question gets the one NOT_FOUND an unknown id gets.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from paywarden.policy.vocabulary import Reason
from paywarden.signer.core import key_custody
from paywarden.signer.core.audit_events import SYSTEM
from paywarden.signer.store.payment_reads import read_payment_facts
from paywarden.v1 import signer_pb2
from paywarden.verify import verify_payment

from tests.helpers import Pki, Stack, reason_of, trailing_metadata
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.payments import (
    OTHER_PAYEE,
    PAYEE,
    TIMEOUT,
    check_payment,
    ctl_at,
    exported_jwks,
    sign_payment,
)
from tests.support.refusals import refused
from tests.support.sessions import open_session

pytestmark = pytest.mark.both_backends

UNKNOWN_ID = "dec_" + "A" * 22  # well formed, never issued


def _not_found(api: Api, decision_id: str, *, who: str = PAYEE) -> tuple[object, ...]:
    """What ``who`` gets when CheckPayment does not answer: everything a caller sees."""
    err = refused(check_payment, api, decision_id, who=who)
    meta = {k: v for k, v in trailing_metadata(err).items() if not k.startswith("grpc-")}
    return err.code(), err.details(), reason_of(err), sorted(meta.items())


def test_a_fresh_payment_is_valid_for_its_payee_and_an_operator(api: Api, stack: Stack) -> None:
    resp = sign_payment(api, stack, amount="2.50")
    for role, who in (("payee", PAYEE), ("operator", "operator-1")):
        answer = check_payment(api, resp.decision_id, role=role, who=who)
        assert answer.standing == signer_pb2.VALID
        assert answer.reason == ""
        assert (answer.decision_id, answer.payee, answer.amount, answer.asset) == (
            resp.decision_id,
            PAYEE,
            "2.50",
            "USD",
        )
        assert answer.key_id == resp.key_id == "payments.v1"
        assert answer.checked_at >= int(stack.clock.now()) - 5
        assert answer.expires_at > answer.checked_at


def test_another_payees_payment_is_not_found_exactly_like_an_unknown_id(
    api: Api, stack: Stack
) -> None:
    resp = sign_payment(api, stack)
    answered = _not_found(api, resp.decision_id, who=OTHER_PAYEE)
    assert answered[0] == grpc.StatusCode.NOT_FOUND
    assert answered[2] == Reason.PAYMENT_NOT_FOUND
    assert answered == _not_found(api, UNKNOWN_ID, who=OTHER_PAYEE)
    assert answered == _not_found(api, UNKNOWN_ID, who=PAYEE)
    # The payee it names still gets its answer.
    assert check_payment(api, resp.decision_id).standing == signer_pb2.VALID


def test_a_refused_payment_is_not_found_even_for_the_payee_it_named(api: Api, stack: Stack) -> None:
    sid = open_session(api.planner, "agent-1", "1.00", timeout=TIMEOUT)
    too_much = sign_request(stack, sid, amount="5.00", payee=PAYEE)
    err = refused(api.signer.Sign, too_much, timeout=TIMEOUT)
    assert reason_of(err) == Reason.BUDGET_EXCEEDED
    decision_id = trailing_metadata(err)["paywarden-decision-id"]
    assert _not_found(api, decision_id) == _not_found(api, UNKNOWN_ID)
    operator = refused(check_payment, api, decision_id, role="operator", who="operator-1")
    assert (operator.code(), reason_of(operator)) == (
        grpc.StatusCode.NOT_FOUND,
        Reason.PAYMENT_NOT_FOUND,
    )


@pytest.mark.parametrize(
    ("decision_id", "reason"),
    [
        ("", Reason.FIELD_MISSING),
        ("dec_short", Reason.STRING_INVALID),
        ("x" * 5000, Reason.STRING_INVALID),
    ],
)
def test_a_malformed_decision_id_is_invalid(api: Api, decision_id: str, reason: Reason) -> None:
    err = refused(check_payment, api, decision_id)
    assert (err.code(), reason_of(err)) == (grpc.StatusCode.INVALID_ARGUMENT, reason)


@pytest.mark.parametrize(
    ("role", "who"), [("agent", "agent-1"), ("planner", "planner-1"), ("approver", "approver-1")]
)
def test_agents_planners_and_approvers_may_not_ask(
    api: Api, stack: Stack, role: str, who: str
) -> None:
    err = refused(check_payment, api, UNKNOWN_ID, role=role, who=who)
    assert (err.code(), reason_of(err)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.ROLE_NOT_ALLOWED,
    )


# -- voided by the kill switch ----------------------------------------------------------------


@pytest.fixture
def freezes(grpc_addr: str, pki: Pki) -> Iterator[list[tuple[str, ...]]]:
    """``paywarden ctl freeze`` targets a test adds here are lifted when it ends."""
    frozen: list[tuple[str, ...]] = []
    yield frozen
    for target in frozen:
        ctl_at(grpc_addr, pki, "unfreeze", *target, "--reason", "test over")


def _ctl_freeze(grpc_addr: str, pki: Pki, frozen: list[tuple[str, ...]], *target: str) -> None:
    out = ctl_at(grpc_addr, pki, "freeze", *target, "--reason", "incident 7: agent injected")
    assert out.returncode == 0, out.stderr
    frozen.append(target)


def _ctl_unfreeze(grpc_addr: str, pki: Pki, frozen: list[tuple[str, ...]], *target: str) -> None:
    out = ctl_at(grpc_addr, pki, "unfreeze", *target, "--reason", "incident 7 over")
    assert out.returncode == 0 and "unfrozen" in out.stdout, out.stdout + out.stderr
    frozen.remove(target)


def test_a_freeze_of_its_agent_voids_a_signed_payment_while_it_lasts(
    api: Api, stack: Stack, grpc_addr: str, pki: Pki, freezes: list[tuple[str, ...]]
) -> None:
    resp = sign_payment(api, stack, agent="agent-2")
    bystander = sign_payment(api, stack, agent="agent-1")
    assert check_payment(api, resp.decision_id).standing == signer_pb2.VALID

    _ctl_freeze(grpc_addr, pki, freezes, "agent", "agent-2")
    voided = check_payment(api, resp.decision_id)
    assert (voided.standing, voided.reason) == (signer_pb2.VOIDED, Reason.FROZEN)
    assert "agent" in voided.detail and "incident" not in voided.detail  # no operator's words
    assert voided.amount == "1.25" and voided.payee == PAYEE  # still the payment as signed
    assert check_payment(api, bystander.decision_id).standing == signer_pb2.VALID
    # Offline, the signature still verifies: only the online check knows of the freeze.
    claims_iat = verify_payment(resp.jws, exported_jwks(api), payee=PAYEE).issued_at
    assert claims_iat > 0

    _ctl_unfreeze(grpc_addr, pki, freezes, "agent", "agent-2")
    assert check_payment(api, resp.decision_id).standing == signer_pb2.VALID


def test_the_kill_switch_voids_every_signed_payment(
    api: Api, stack: Stack, grpc_addr: str, pki: Pki, freezes: list[tuple[str, ...]]
) -> None:
    payments = [sign_payment(api, stack, agent=a) for a in ("agent-1", "agent-2")]
    _ctl_freeze(grpc_addr, pki, freezes, "global")
    for resp in payments:
        answer = check_payment(api, resp.decision_id)
        assert (answer.standing, answer.reason) == (signer_pb2.VOIDED, Reason.FROZEN)
        assert "global" in answer.detail
        operator = check_payment(api, resp.decision_id, role="operator", who="operator-1")
        assert operator.standing == signer_pb2.VOIDED
    _ctl_unfreeze(grpc_addr, pki, freezes, "global")
    assert {check_payment(api, r.decision_id).standing for r in payments} == {signer_pb2.VALID}


# -- expired, and voided by its key's revocation -----------------------------------------------


def test_a_payment_past_its_exp_is_expired(api: Api, stack: Stack) -> None:
    resp = sign_payment(api, stack, expires_in=30)
    assert check_payment(api, resp.decision_id).standing == signer_pb2.VALID
    stack.clock.advance(31)
    answer = check_payment(api, resp.decision_id)
    assert (answer.standing, answer.reason) == (signer_pb2.EXPIRED, Reason.PAYMENT_EXPIRED)
    assert answer.checked_at >= answer.expires_at


def test_a_revoked_key_voids_what_it_signed_though_the_signature_still_verifies(
    api: Api, stack: Stack
) -> None:
    resp = sign_payment(api, stack, key_id="payments.v2")
    assert check_payment(api, resp.decision_id).standing == signer_pb2.VALID
    stack.clock.advance(1)  # revoked after the second it was signed in
    key_custody.revoke(stack.store, "payments.v2", "drill", int(stack.clock.now()), SYSTEM)
    answer = check_payment(api, resp.decision_id)
    assert (answer.standing, answer.reason) == (signer_pb2.VOIDED, Reason.KEY_REVOKED)
    assert answer.key_id == "payments.v2"
    # The JWKS lists the key as revoked after the payment was issued: offline, it passes.
    offline = verify_payment(resp.jws, exported_jwks(api), payee=PAYEE)
    assert str(offline.key_state) == "revoked"


# -- the read: index probes only ------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_the_check_reads_through_indexes_only(api: Api, stack: Stack) -> None:
    resp = sign_payment(api, stack)
    path = Path(stack.config.store.path)
    statements: list[str] = []
    conn = sqlite3.connect(path)
    try:
        conn.set_trace_callback(statements.append)
        facts = read_payment_facts(conn, resp.decision_id)
        conn.set_trace_callback(None)
        assert facts is not None and facts.decision.id == resp.decision_id
        plans = [
            [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            for sql in statements
            if sql.lstrip().upper().startswith("SELECT")
        ]
    finally:
        conn.close()
    assert len(plans) == 3, statements
    for plan in plans:
        assert plan and not any(step.startswith("SCAN") for step in plan), plan

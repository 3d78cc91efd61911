"""Attack: an agent learns from its refusals what only humans should know.

A confusable payee's refusal named the allowed payee it resembles (so the
allowlist could be enumerated one guess at a time), an approver's deny note
("INTERNAL: SOC ticket ...") reached the agent, and deny patterns and circuit
breaker thresholds were echoed back. The agent now gets its reason code and
one fixed sentence per reason code; the details stay in the audit log and in
the approvers' views. Real token, real store, real gRPC server over mTLS.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import pytest
from paywarden.signer.core.disclosure import AGENT_MESSAGES
from paywarden.v1 import (
    approvals_pb2,
    signer_pb2,
)

from tests.helpers import Stack, reason_of
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.refusals import refused
from tests.support.sessions import open_session

SECRET_PAYEE = "globex-payments.example"
SOC_NOTE = "INTERNAL: SOC ticket 4411, vendor under fraud review"

AGENT1_PACK = f"""
id = "disclosure-a1"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "1000.00"
approval_above = "100.00"

[payees]
allow = ["{SECRET_PAYEE}"]
allow_patterns = ["[a-z]+\\\\.shop\\\\.example"]
deny_patterns = ["evil-[a-z]+\\\\.shop\\\\.example"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "5000.00" }}
"""

AGENT2_PACK = """
id = "disclosure-a2"
version = 1
agents = ["agent-2"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "1000.00"

[payees]
allow_patterns = ["[a-z]+\\\\.shop\\\\.example"]
first_payment = "allow"

[breaker]
window_seconds = 3600
max_payees = 1

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "5000.00" }
"""

PACKS = {"a1.toml": AGENT1_PACK, "a2.toml": AGENT2_PACK}
pytestmark = pytest.mark.stack(packs=PACKS)


# What this module's agents ask to sign, unless a test says otherwise.
supplies_request = partial(sign_request, amount="5.00", purpose="supplies", expires_in=120)


def _refused_plainly(api: Api, agent: str, request: signer_pb2.SignRequest, reason: str) -> Any:
    """Refused with ``reason`` in the one fixed sentence that reason code has."""
    err: Any = refused(api.signer_of(agent).Sign, request)
    assert reason_of(err) == reason
    # one fixed sentence per reason code, whatever the policy or the people said
    assert err.details() == f"[{reason}] {AGENT_MESSAGES[reason]}"
    return err


def _audit_record(stack: Stack, err: Any) -> dict[str, Any]:
    seq = int(dict(err.trailing_metadata())["paywarden-audit-seq"])
    record: dict[str, Any] = json.loads(stack.store.audit_record(seq))
    return record


def test_confusable_refusal_does_not_name_the_allowed_payee(api: Api, stack: Stack) -> None:
    sid = open_session(api.planner, "agent-1", "1000.00")
    lookalike = SECRET_PAYEE.replace("l", "1")  # "g1obex-payments.examp1e"
    err = _refused_plainly(
        api, "agent-1", supplies_request(stack, sid, payee=lookalike), "PAYEE_CONFUSABLE"
    )
    assert SECRET_PAYEE not in err.details()
    assert "globex" not in err.details()
    # the detail is kept for humans: the audit record names the payee it resembles
    record = _audit_record(stack, err)
    assert SECRET_PAYEE in record["decision"]["message"]


def test_deny_pattern_is_not_echoed(api: Api, stack: Stack) -> None:
    sid = open_session(api.planner, "agent-1", "1000.00")
    err = _refused_plainly(
        api,
        "agent-1",
        supplies_request(stack, sid, payee="evil-corp.shop.example"),
        "PAYEE_DENYLISTED",
    )
    assert "evil-" not in err.details() and "\\." not in err.details()
    assert "evil-[a-z]+" in _audit_record(stack, err)["decision"]["message"]


def test_approver_deny_note_does_not_reach_the_agent(api: Api, stack: Stack) -> None:
    sid = open_session(api.planner, "agent-1", "1000.00")
    request = supplies_request(stack, sid, payee=SECRET_PAYEE, amount="500.00")
    resp = api.signer.Sign(request)
    assert resp.status == signer_pb2.PENDING_APPROVAL
    approver = api.approver("approver-1")
    approver.Deny(approvals_pb2.DenyRequest(approval_id=resp.approval_id, note=SOC_NOTE))
    err = _refused_plainly(api, "agent-1", request, "APPROVAL_DENIED")
    assert "SOC" not in err.details() and "4411" not in err.details()
    # approvers still see the note
    view = approver.GetApproval(approvals_pb2.GetApprovalRequest(approval_id=resp.approval_id))
    assert view.approval.denial_note == SOC_NOTE


def test_breaker_threshold_is_not_echoed(api: Api, stack: Stack) -> None:
    sid = open_session(api.planner, "agent-2", "1000.00")
    signer = api.signer2
    assert (
        signer.Sign(supplies_request(stack, sid, payee="first.shop.example")).status
        == signer_pb2.SIGNED
    )
    err = _refused_plainly(
        api, "agent-2", supplies_request(stack, sid, payee="second.shop.example"), "BREAKER_TRIPPED"
    )
    assert "more than" not in err.details() and "3600" not in err.details()
    assert "(more than 1)" in _audit_record(stack, err)["decision"]["message"]


def test_operator_freeze_reason_does_not_reach_the_agent(api: Api, stack: Stack) -> None:
    # agent-2 was frozen by its breaker above; the operator adds a global freeze too
    reason = "INTERNAL: incident 77 - agent-2 suspected of exfiltration"
    stack.control.freeze(_operator(), "global", "", reason)
    try:
        sid = open_session(api.planner, "agent-1", "1000.00")
        err = _refused_plainly(
            api, "agent-1", supplies_request(stack, sid, payee=SECRET_PAYEE), "FROZEN"
        )
        assert "incident" not in err.details() and "operator" not in err.details()
    finally:
        stack.control.unfreeze(_operator(), "global", "", "done")


def _operator() -> Any:
    from paywarden.signer.identity import Principal, Role

    return Principal(Role.OPERATOR, "operator-1")


def test_every_reason_code_has_its_own_fixed_sentence() -> None:
    """A reason code added without a sentence would reach agents only as the
    generic one: every code the signer defines has a sentence of its own."""
    from paywarden.policy.vocabulary import ALLOWING, ASKING_APPROVAL
    from paywarden.signer.core.disclosure import GENERIC, agent_message
    from paywarden.signer.errors import Reason

    # The rules' allowing and approval-asking words are never a refusal's reason.
    refusals = [r for r in Reason if r not in ALLOWING | ASKING_APPROVAL]
    missing = [r.value for r in refusals if agent_message(r.value) == GENERIC]
    assert missing == []

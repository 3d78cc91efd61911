"""Receipts of a payment held for approval: the held decision, then the retry that collects
the signature once an approver said yes; and what its payee may see before and after.

agent-1's pack here asks one approver above USD 100.00.
"""

from __future__ import annotations

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.v1 import approvals_pb2, signer_pb2
from paywarden.verify.receipts import load_audit_key, verify_receipt

from tests.helpers import Stack
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.receipts import get_receipt, receipt_document, receipt_refusal
from tests.support.sessions import opened_session

HELD_PACK = """
id = "receipts-held"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "1000.00"
approval_above = "100.00"

[payees]
allow = ["acme-weather", "payee-1"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "5000.00" }
"""

pytestmark = pytest.mark.stack(packs={"held.toml": HELD_PACK})


@pytest.fixture(scope="module")
def held_audit_key(stack: Stack) -> ec.EllipticCurvePublicKey:
    return load_audit_key(stack.hsm.audit_public_key().spki_pem)


def test_a_held_payment_s_receipts_before_and_after_approval(
    api: Api, stack: Stack, held_audit_key: ec.EllipticCurvePublicKey
) -> None:
    session = opened_session(api.planner, "agent-1", "1000.00", timeout=30).session_id
    request = sign_request(stack, session, amount="150.00", payee="acme-weather")
    held = api.signer.Sign(request, timeout=30)
    assert held.status == signer_pb2.PENDING_APPROVAL
    first = verify_receipt(
        receipt_document(get_receipt(api.signer, decision_id=held.decision_id)), held_audit_key
    )
    assert (first.outcome, first.reason, first.seq) == (
        "pending",
        "AMOUNT_NEEDS_APPROVAL",
        held.audit_seq,
    )
    # Nothing is signed yet: the payee it names learns nothing of it.
    payee = api.signer_as("payee", "acme-weather")
    unknown = receipt_refusal(payee, decision_id="dec_" + "C" * 26)
    assert unknown[0] is grpc.StatusCode.NOT_FOUND
    assert receipt_refusal(payee, decision_id=held.decision_id) == unknown

    api.approver("approver-1").Approve(
        approvals_pb2.ApproveRequest(approval_id=held.approval_id), timeout=30
    )
    paid = api.signer.Sign(request, timeout=30)
    assert paid.status == signer_pb2.SIGNED and paid.audit_seq > held.audit_seq
    collected = verify_receipt(
        receipt_document(get_receipt(api.signer, seq=paid.audit_seq)), held_audit_key
    )
    assert collected.body["action"] == "sign.retry"
    # The retry answered the held decision with its approval granted.
    assert (collected.decision_id, collected.outcome) == (held.decision_id, "pending")
    assert (collected.body["approval"], first.body["approval"]) == ("approved", "pending")
    assert collected.body["request_hash"] == first.body["request_hash"] != ""
    assert collected.body["payee"] == "acme-weather"
    # Signed now: its payee sees both receipts; another payee still sees nothing.
    assert get_receipt(payee, decision_id=held.decision_id).receipt.body == (
        get_receipt(api.signer, decision_id=held.decision_id).receipt.body
    )
    get_receipt(payee, seq=paid.audit_seq)
    other = api.signer_as("payee", "payee-1")
    assert receipt_refusal(other, seq=paid.audit_seq) == receipt_refusal(
        other, decision_id="dec_" + "C" * 26
    )

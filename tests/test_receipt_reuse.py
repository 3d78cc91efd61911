"""GetReceipt asked again for one record costs no HSM signature: the audit key signs a
receipt body once and the signature is reused, while the checkpoint part is read fresh.

Counted through the signer's own metric (``paywarden_receipts_total{signature=...}``)
and seen in the answers: ECDSA signatures are randomised, so an identical signature over
repeated asks is one signature reused."""

from __future__ import annotations

import grpc
import pytest
from paywarden.v1 import control_pb2
from paywarden.verify.receipts import load_audit_key, verify_receipt

from tests.helpers import Stack, reason_of, trailing_metadata
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.receipts import get_receipt, receipt_document
from tests.support.sessions import opened_session

ASKS = 5


def _receipts_counted(stack: Stack, signature: str) -> float:
    value = stack.service.metrics.registry.get_sample_value(
        "paywarden_receipts_total", {"signature": signature}
    )
    return 0.0 if value is None else float(value)


def _a_denial(api: Api, stack: Stack) -> int:
    """agent-1 pays more than its session's budget: the audit seq of the denial."""
    session = opened_session(api.planner, "agent-1", "10.00", timeout=30).session_id
    request = sign_request(stack, session, amount="50.00", payee="acme-weather")
    with pytest.raises(grpc.RpcError) as raised:
        api.signer.Sign(request, timeout=30)
    assert reason_of(raised.value) == "BUDGET_EXCEEDED"
    return int(trailing_metadata(raised.value)["paywarden-audit-seq"])


def test_repeated_asks_for_one_record_cost_one_hsm_signature(api: Api, stack: Stack) -> None:
    seq = _a_denial(api, stack)
    signed, reused = _receipts_counted(stack, "signed"), _receipts_counted(stack, "reused")
    answers = [get_receipt(api.signer, seq=seq) for _ in range(ASKS)]
    assert _receipts_counted(stack, "signed") == signed + 1
    assert _receipts_counted(stack, "reused") == reused + ASKS - 1
    assert len({(a.receipt.body, a.receipt.signature) for a in answers}) == 1
    key = load_audit_key(stack.hsm.audit_public_key().spki_pem)
    assert verify_receipt(receipt_document(answers[-1]), key).seq == seq


def test_the_reused_signature_comes_with_a_fresh_checkpoint(api: Api, stack: Stack) -> None:
    seq = _a_denial(api, stack)
    before = get_receipt(api.signer, seq=seq)
    assert not before.HasField("checkpoint")
    api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30)
    signed = _receipts_counted(stack, "signed")
    after = get_receipt(api.signer, seq=seq)
    assert _receipts_counted(stack, "signed") == signed  # no new HSM signature
    assert after.receipt.signature == before.receipt.signature
    assert after.checkpoint.tree_size >= seq
    key = load_audit_key(stack.hsm.audit_public_key().spki_pem)
    sealed = verify_receipt(receipt_document(after), key, require_sealed=True)
    assert sealed.sealed_by is not None and sealed.sealed_by.size >= seq

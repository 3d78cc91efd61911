"""Signed receipts (``Signer.GetReceipt``) checked offline (``paywarden.verify.receipts``).

Against the in-process server of the conftest (real token, real TLS, real store, on SQLite
and on PostgreSQL): a denial
and a refusal get receipts signed by the audit key that verify offline against the audit
public key read from the token (never the copy in the receipt); a changed byte, or the same
body signed by a payment key, fails; after a checkpoint the receipt carries it and the
inclusion proof, which verifies; whoever may not see a decision gets exactly the answer an
unknown one gets. The body's canonical form is checked with an independent RFC 8785
implementation (``rfc8785``).
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.signer.auditlog import merkle
from paywarden.signer.store.postgres import PostgresStore
from paywarden.v1 import control_pb2, signer_pb2
from paywarden.verify.receipts import (
    ReceiptFailure,
    ReceiptInvalid,
    VerifiedReceipt,
    load_audit_key,
    verify_inclusion,
    verify_receipt,
)

from tests.helpers import Pki, Stack, reason_of, trailing_metadata
from tests.support.cli import paywarden
from tests.support.clients import Api, signed
from tests.support.intents import sign_request
from tests.support.receipts import (
    get_receipt,
    receipt_body,
    receipt_document,
    receipt_refusal,
)
from tests.support.sessions import opened_session

pytestmark = pytest.mark.both_backends

AUDIT_SEQ = "paywarden-audit-seq"
DECISION = "paywarden-decision-id"


@pytest.fixture(scope="module")
def audit_key(stack: Stack) -> ec.EllipticCurvePublicKey:
    """The audit public key as the token holds it: out of band, not from a receipt."""
    return load_audit_key(stack.hsm.audit_public_key().spki_pem)


def _receipt_session(api: Api, agent: str = "agent-1", payees: tuple[str, ...] = ()) -> str:
    session = opened_session(api.planner, agent, "10.00", allowed_payees=payees, timeout=30)
    return session.session_id


def _denied(api: Api, stack: Stack) -> grpc.RpcError:
    """agent-1 pays more than its session's budget: a recorded denial."""
    request = sign_request(stack, _receipt_session(api), amount="50.00", payee="acme-weather")
    try:
        api.signer.Sign(request, timeout=30)
    except grpc.RpcError as err:
        assert reason_of(err) == "BUDGET_EXCEEDED"
        return err
    raise AssertionError("signed")


def _receipt_verified(doc: dict[str, Any], key: ec.EllipticCurvePublicKey) -> VerifiedReceipt:
    return verify_receipt(json.loads(json.dumps(doc)), key)


def _fails(doc: dict[str, Any], key: ec.EllipticCurvePublicKey) -> ReceiptFailure:
    with pytest.raises(ReceiptInvalid) as raised:
        verify_receipt(doc, key)
    return raised.value.reason


# -- a denial, a refusal and a payment, each with its receipt --------------------------------


def test_a_denial_s_receipt_verifies_offline_and_says_what_was_decided(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    err = _denied(api, stack)
    md = trailing_metadata(err)
    seq = int(md[AUDIT_SEQ])
    response = get_receipt(api.signer, decision_id=md[DECISION])
    verified = _receipt_verified(receipt_document(response), audit_key)
    assert (verified.decision_id, verified.seq) == (md[DECISION], seq)
    assert (verified.outcome, verified.reason) == ("deny", "BUDGET_EXCEEDED")
    body = receipt_body(response)
    assert body["typ"] == "paywarden.receipt.v1"
    assert body["agent"] == "agent-1" and body["action"] == "sign.decision"
    assert len(body["request_hash"]) == 64 and len(body["pack_sha256"]) == 64
    # The body is its RFC 8785 form (an independent implementation) and names the record:
    # its leaf hash is that of the audit record the store holds.
    assert rfc8785.dumps(body).decode("utf-8") == response.receipt.body
    record = stack.store.audit_record(seq)
    assert body["leaf"] == merkle.leaf_hash(record.encode("utf-8")).hex()
    assert json.loads(record)["decision"]["id"] == md[DECISION]
    # Asked by the record's seq, the same facts (and no checkpoint covers it yet).
    by_seq = get_receipt(api.signer, seq=seq)
    assert by_seq.receipt.body == response.receipt.body
    assert not response.HasField("checkpoint") and not response.inclusion_proof


def test_a_refusal_before_any_decision_gets_a_receipt_by_its_audit_seq(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    request = sign_request(stack, _receipt_session(api), amount="1.00", nonce="too-short")
    with pytest.raises(grpc.RpcError) as raised:
        api.signer.Sign(request, timeout=30)
    md = trailing_metadata(raised.value)
    assert md["paywarden-reason"] == "NONCE_MALFORMED" and DECISION not in md
    verified = _receipt_verified(
        receipt_document(get_receipt(api.signer, seq=int(md[AUDIT_SEQ]))), audit_key
    )
    assert verified.body["action"] == "sign.refused"
    assert (verified.decision_id, verified.outcome, verified.reason) == (
        "",
        "refused",
        "NONCE_MALFORMED",
    )
    assert verified.body["request_hash"] == "" and verified.body["agent"] == "agent-1"


def test_a_signed_payment_s_receipt_names_its_decision_and_request(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    resp = signed(
        api.answer(
            sign_request(stack, _receipt_session(api), amount="1.00", payee="acme-weather").intent
        )
    )
    verified = _receipt_verified(
        receipt_document(get_receipt(api.signer, decision_id=resp.decision_id)), audit_key
    )
    assert (verified.outcome, verified.reason, verified.seq) == ("allow", "ALLOWED", resp.audit_seq)
    assert verified.body["payee"] == "acme-weather"
    row = stack.store.decision_audit(resp.decision_id)
    assert (row.request_hash, row.seq, row.signed) == (
        verified.body["request_hash"],
        resp.audit_seq,
        True,
    )


# -- what fails -------------------------------------------------------------------------------


def test_one_changed_byte_fails(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    seq = int(trailing_metadata(_denied(api, stack))[AUDIT_SEQ])
    doc = receipt_document(get_receipt(api.signer, seq=seq))
    body = doc["receipt"]["body"]
    for i in (body.index("deny"), body.index('"seq"') + 6, len(body) - 2):
        changed = copy.deepcopy(doc)
        changed["receipt"]["body"] = body[:i] + chr(ord(body[i]) ^ 1) + body[i + 1 :]
        assert _fails(changed, audit_key) is ReceiptFailure.BAD_SIGNATURE
    sig = base64.urlsafe_b64decode(doc["receipt"]["signature"] + "==")
    flipped = copy.deepcopy(doc)
    flipped["receipt"]["signature"] = (
        base64.urlsafe_b64encode(sig[:10] + bytes([sig[10] ^ 1]) + sig[11:]).rstrip(b"=").decode()
    )
    assert _fails(flipped, audit_key) is ReceiptFailure.BAD_SIGNATURE


def test_the_same_body_signed_by_a_payment_key_fails_against_the_audit_key(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    seq = int(trailing_metadata(_denied(api, stack))[AUDIT_SEQ])
    doc = receipt_document(get_receipt(api.signer, seq=seq))
    body = doc["receipt"]["body"].encode("utf-8")
    # The token's payment key signs the very same body (through the HSM, as Sign would).
    forged = copy.deepcopy(doc)
    raw = stack.hsm.sign_es256("payments.v1", body)
    forged["receipt"]["signature"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert _fails(forged, audit_key) is ReceiptFailure.BAD_SIGNATURE
    # It is a good signature, by the payment key: only the key it is checked with differs.
    payment_pem = {k.key_id: k.spki_pem for k in stack.hsm.public_keys()}["payments.v1"]
    verify_receipt(forged, load_audit_key(payment_pem))
    # And the HSM's receipt door refuses anything that is not a receipt body.
    with pytest.raises(ValueError):
        stack.hsm.sign_receipt(json.dumps({"typ": "paywarden.checkpoint.v1"}).encode())


def test_a_receipt_body_never_passes_for_a_checkpoint_nor_the_reverse(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    seq = int(trailing_metadata(_denied(api, stack))[AUDIT_SEQ])
    doc = receipt_document(get_receipt(api.signer, seq=seq))
    cp = api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30).checkpoint
    as_receipt = copy.deepcopy(doc)
    as_receipt["receipt"]["body"], as_receipt["receipt"]["signature"] = cp.body, cp.signature
    assert _fails(as_receipt, audit_key) is ReceiptFailure.WRONG_TYPE
    sealed = receipt_document(get_receipt(api.signer, seq=seq))
    as_checkpoint = copy.deepcopy(sealed)
    as_checkpoint["checkpoint"]["body"] = doc["receipt"]["body"]
    as_checkpoint["checkpoint"]["signature"] = doc["receipt"]["signature"]
    assert _fails(as_checkpoint, audit_key) is ReceiptFailure.CHECKPOINT_MALFORMED


# -- sealed by a checkpoint ---------------------------------------------------------------------


def test_after_a_checkpoint_the_receipt_carries_it_and_its_inclusion_proof(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    seq = int(trailing_metadata(_denied(api, stack))[AUDIT_SEQ])
    before = get_receipt(api.signer, seq=seq)
    assert not before.HasField("checkpoint")
    with pytest.raises(ReceiptInvalid) as unsealed:
        verify_receipt(receipt_document(before), audit_key, require_sealed=True)
    assert unsealed.value.reason is ReceiptFailure.NOT_SEALED
    cp = api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30).checkpoint
    assert cp.tree_size >= seq
    after = get_receipt(api.signer, seq=seq)
    assert after.checkpoint == cp and after.receipt.body == before.receipt.body
    verified = _receipt_verified(receipt_document(after), audit_key)
    assert verified.sealed_by is not None and verified.sealed_by.size == cp.tree_size
    # The proof is the one Control.InclusionProof gives for that tree.
    proof = api.control().InclusionProof(
        control_pb2.InclusionProofRequest(seq=seq, tree_size=cp.tree_size), timeout=30
    )
    assert list(after.inclusion_proof) == list(proof.proof)
    assert proof.root_hash == cp.root_hash == verified.sealed_by.root
    doc = receipt_document(after)
    # A changed proof hash, a dropped one, a checkpoint's changed byte: each fails.
    bad = copy.deepcopy(doc)
    if bad["inclusion_proof"]:
        bad["inclusion_proof"][0] = ("0" if bad["inclusion_proof"][0][0] != "0" else "1") + bad[
            "inclusion_proof"
        ][0][1:]
        assert _fails(bad, audit_key) is ReceiptFailure.INCLUSION_PROOF_INVALID
    short = copy.deepcopy(doc)
    short["inclusion_proof"] = doc["inclusion_proof"][:-1]
    assert _fails(short, audit_key) is ReceiptFailure.INCLUSION_PROOF_INVALID
    cp_changed = copy.deepcopy(doc)
    cp_changed["checkpoint"]["body"] = cp.body.replace(cp.root_hash, "0" * 64)
    assert _fails(cp_changed, audit_key) is ReceiptFailure.CHECKPOINT_BAD_SIGNATURE
    unsigned_root = copy.deepcopy(doc)
    unsigned_root["checkpoint"]["root_hash"] = "0" * 64
    assert _fails(unsigned_root, audit_key) is ReceiptFailure.CHECKPOINT_MALFORMED


def test_a_checkpoint_that_does_not_cover_the_record_is_refused(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    first = int(trailing_metadata(_denied(api, stack))[AUDIT_SEQ])
    api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30)
    old = receipt_document(get_receipt(api.signer, seq=first))
    later = int(trailing_metadata(_denied(api, stack))[AUDIT_SEQ])
    fresh = receipt_document(get_receipt(api.signer, seq=later))
    assert "checkpoint" not in fresh
    fresh["checkpoint"], fresh["inclusion_proof"] = old["checkpoint"], old["inclusion_proof"]
    assert _fails(fresh, audit_key) is ReceiptFailure.CHECKPOINT_DOES_NOT_COVER


def test_the_inclusion_check_agrees_with_the_signer_s_tree_for_every_leaf_and_size() -> None:
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(13)]
    for size in range(1, len(leaves) + 1):
        root = merkle.root(leaves[:size])
        for index in range(size):
            proof = merkle.inclusion_proof(index, leaves[:size])
            assert verify_inclusion(index, size, leaves[index], proof, root)
            if size < len(leaves):  # the proof of a smaller tree reaches no larger root
                bigger = merkle.root(leaves[: size + 1])
                assert not verify_inclusion(index, size + 1, leaves[index], proof, bigger)
            assert not verify_inclusion(index, size, merkle.leaf_hash(b"x"), proof, root)
            if proof:
                assert not verify_inclusion(index, size, leaves[index], proof[:-1], root)
            other = (index + 1) % size
            if other != index:
                assert not verify_inclusion(other, size, leaves[index], proof, root)


def _indexed(stack: Stack) -> list[tuple[str, int]]:
    rows = stack.store._read(
        lambda c: c.execute("SELECT decision_id, seq FROM decision_audit").fetchall()
    )
    return sorted((str(d), int(s)) for d, s in rows)


# What migration 15 (mandates) added, taken away again to go back to version 13.
UNDO_MANDATES = (
    "DROP INDEX reservations_open_mandate",
    "DROP TABLE mandate_presentations",
    "DROP TABLE mandate_revocations",
    "DROP TABLE mandates",
    "ALTER TABLE sessions DROP COLUMN mandate_id",
    "ALTER TABLE reservations DROP COLUMN mandate_id",
)


def test_decisions_recorded_before_the_index_are_indexed_by_its_migration(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    decision_id = trailing_metadata(_denied(api, stack))[DECISION]
    before = _indexed(stack)
    assert decision_id in dict(before)
    postgres = isinstance(stack.store, PostgresStore)
    with stack.store._write() as conn:  # the store as version 13 left it
        for statement in UNDO_MANDATES:  # migration 15, on top of 14
            conn.execute(statement)
        conn.execute("DROP TABLE decision_audit")
        conn.execute(
            "UPDATE paywarden_schema SET version = 13" if postgres else "PRAGMA user_version = 13"
        )
    assert stack.store.migrate() == 15
    assert _indexed(stack) == before
    response = get_receipt(api.signer, decision_id=decision_id)
    assert _receipt_verified(receipt_document(response), audit_key).decision_id == decision_id


# -- who may see which receipt: no oracle --------------------------------------------------------


def test_another_agent_s_decision_is_answered_like_an_unknown_one(api: Api, stack: Stack) -> None:
    md = trailing_metadata(_denied(api, stack))
    seq = int(md[AUDIT_SEQ])
    head, _ = stack.store.audit_head()
    unknown_by_id = receipt_refusal(api.signer2, decision_id="dec_" + "A" * 26)
    unknown_by_seq = receipt_refusal(api.signer2, seq=head + 1000)
    assert unknown_by_id[0] is grpc.StatusCode.NOT_FOUND
    assert unknown_by_id[2]["paywarden-reason"] == "RECEIPT_NOT_FOUND"
    assert receipt_refusal(api.signer2, decision_id=md[DECISION]) == unknown_by_id
    assert receipt_refusal(api.signer2, seq=seq) == unknown_by_seq == unknown_by_id
    # A record that answers no Sign (a checkpoint, a session) has no receipt either.
    assert receipt_refusal(api.signer_as("operator", "operator-1"), seq=1) == unknown_by_id


def test_a_payee_sees_only_signed_payments_that_name_it(
    api: Api, stack: Stack, audit_key: ec.EllipticCurvePublicKey
) -> None:
    session = _receipt_session(api)
    resp = signed(
        api.answer(sign_request(stack, session, amount="1.00", payee="acme-weather").intent)
    )
    mine = get_receipt(api.signer_as("payee", "acme-weather"), decision_id=resp.decision_id)
    assert _receipt_verified(receipt_document(mine), audit_key).decision_id == resp.decision_id
    unknown = receipt_refusal(api.signer_as("payee", "payee-1"), decision_id="dec_" + "B" * 26)
    assert (
        receipt_refusal(api.signer_as("payee", "payee-1"), decision_id=resp.decision_id) == unknown
    )
    assert receipt_refusal(api.signer_as("payee", "payee-1"), seq=resp.audit_seq) == unknown
    # A denial naming the payee is not a payment to it.
    denied = trailing_metadata(_denied(api, stack))
    payee = api.signer_as("payee", "acme-weather")
    assert receipt_refusal(payee, decision_id=denied[DECISION])[:2] == unknown[:2]
    # Approvers and operators see every receipt.
    for role, who in (("approver", "approver-1"), ("operator", "operator-1")):
        seen = get_receipt(api.signer_as(role, who), decision_id=denied[DECISION])
        assert receipt_body(seen)["decision_id"] == denied[DECISION]


def test_a_planner_may_not_ask_and_an_empty_request_is_invalid(api: Api) -> None:
    code, _, md = receipt_refusal(api.signer_as("planner", "planner-1"), seq=1)
    assert (code, md["paywarden-reason"]) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    with pytest.raises(grpc.RpcError) as raised:
        api.signer.GetReceipt(signer_pb2.GetReceiptRequest(), timeout=30)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(raised.value) == "FIELD_MISSING"


# -- the command line ---------------------------------------------------------------------------


def _cli_creds(pki_dir: Path, role: str, who: str) -> list[str | Path]:
    return [
        "--ca", pki_dir / "ca.crt",
        "--cert", pki_dir / f"{role}-{who}.crt",
        "--key", pki_dir / f"{role}-{who}.key",
    ]  # fmt: skip


def test_receipt_and_verify_receipt_on_the_command_line(
    api: Api, stack: Stack, grpc_addr: str, pki: Pki, tmp_path: Path
) -> None:
    seq = int(trailing_metadata(_denied(api, stack))[AUDIT_SEQ])
    api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30)
    pki_dir = pki.dir
    out = tmp_path / "receipt.json"
    fetched = paywarden(
        "receipt", "--addr", grpc_addr, *_cli_creds(pki_dir, "agent", "agent-1"),
        "--seq", str(seq), "--out", out,
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    key = tmp_path / "audit.pem"
    key.write_text(stack.hsm.audit_public_key().spki_pem, encoding="ascii")
    ok = paywarden("verify-receipt", out, "--audit-key", key, "--sealed", "--json")
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["valid"] is True and result["body"]["seq"] == seq
    assert result["checkpoint"]["size"] >= seq
    doc = json.loads(out.read_text(encoding="utf-8"))
    doc["receipt"]["body"] = doc["receipt"]["body"].replace("BUDGET_EXCEEDED", "BUDGET_EXCEEDEE")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    refused = paywarden("verify-receipt", bad, "--audit-key", key)
    assert refused.returncode == 1 and "RECEIPT_BAD_SIGNATURE" in refused.stderr
    missing = paywarden("verify-receipt", tmp_path / "nope.json", "--audit-key", key)
    no_key = paywarden("verify-receipt", out)
    assert (missing.returncode, no_key.returncode) == (2, 2)
    # Another agent's receipt is not found on the command line either.
    other = paywarden(
        "receipt", "--addr", grpc_addr, *_cli_creds(pki_dir, "agent", "agent-2"),
        "--seq", str(seq),
    )  # fmt: skip
    assert other.returncode == 1 and "NOT_FOUND" in other.stderr

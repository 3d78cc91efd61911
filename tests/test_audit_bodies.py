"""The audit key's two doors and the checkpoint checker each take only their own kind of
body: the exact ``typ`` and field set, every member once. A receipt body never passes for
a checkpoint (nor the reverse), and a body with ``typ`` twice is refused rather than read
by whichever of the two a parser keeps."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.hsm import audit_bodies
from paywarden.signer.auditlog.checkpoints import (
    Checkpoint,
    check_checkpoint,
    checkpoint_body,
    encode_signature,
)
from paywarden.verify import receipts as verify_receipts
from paywarden.verify.receipts import ReceiptFailure, ReceiptInvalid, verify_receipt

from tests.helpers import Stack
from tests.support.receipt_forgery import (
    b64url,
    canonical,
    raw_signature,
    receipt_doc,
    receipt_fields,
)

ROOT = "ab" * 32


@pytest.fixture(scope="module")
def checkpoint_test_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _twice_typ(first: str, fields: dict[str, object]) -> bytes:
    """``fields`` in canonical JSON with a first ``"typ": first`` before the real one."""
    return ('{"typ":' + json.dumps(first) + "," + canonical(fields)[1:]).encode("utf-8")


def _signed_checkpoint(body: str, key: ec.EllipticCurvePrivateKey, size: int = 7) -> Checkpoint:
    signature = encode_signature(raw_signature(key, body.encode("utf-8")))
    return Checkpoint(size, ROOT, 1_764_000_000, "audit.v1", body, signature)


def test_the_hsm_signs_a_checkpoint_and_a_receipt_through_their_own_doors(stack: Stack) -> None:
    """The control for the refusals below."""
    assert len(stack.hsm.sign_checkpoint(checkpoint_body(7, bytes(32), 1, "audit.v1"))) == 64
    assert len(stack.hsm.sign_receipt(canonical(receipt_fields()).encode())) == 64


def test_a_receipt_body_offered_to_sign_checkpoint_is_refused(stack: Stack) -> None:
    with pytest.raises(ValueError, match="typ"):
        stack.hsm.sign_checkpoint(canonical(receipt_fields()).encode())
    # A receipt's typ over a checkpoint's fields, or a checkpoint's with a field more.
    posing = {"typ": "paywarden.checkpoint.v1", "size": 7, "root": ROOT, "time": 1, "kid": "a"}
    with pytest.raises(ValueError, match="fields"):
        stack.hsm.sign_checkpoint(canonical({**posing, "seq": 7}).encode())
    with pytest.raises(ValueError):
        stack.hsm.sign_checkpoint(_twice_typ("paywarden.receipt.v1", posing))


def test_a_body_with_typ_twice_is_refused_by_sign_receipt(stack: Stack) -> None:
    """json.loads keeps the last typ (a receipt's); a reader keeping the first would see
    a checkpoint's. Either way it is not one receipt body: refused."""
    twice = _twice_typ("paywarden.checkpoint.v1", receipt_fields())
    assert json.loads(twice)["typ"] == "paywarden.receipt.v1"
    with pytest.raises(ValueError, match="repeated"):
        stack.hsm.sign_receipt(twice)
    with pytest.raises(ValueError, match="fields"):
        stack.hsm.sign_receipt(canonical({**receipt_fields(), "size": 7}).encode())


def test_check_checkpoint_accepts_a_checkpoint_and_refuses_a_receipt_body(
    checkpoint_test_key: ec.EllipticCurvePrivateKey,
) -> None:
    public = checkpoint_test_key.public_key()
    genuine = checkpoint_body(7, bytes.fromhex(ROOT), 1_764_000_000, "audit.v1").decode()
    assert check_checkpoint(_signed_checkpoint(genuine, checkpoint_test_key), [public]) is None
    # A signed receipt-typed body that even carries the row's size and root.
    receipt = canonical({**receipt_fields(), "size": 7, "root": ROOT})
    problem = check_checkpoint(_signed_checkpoint(receipt, checkpoint_test_key), [public])
    assert problem is not None and "not a checkpoint" in problem
    # A checkpoint's typ with a field more, and typ twice, are refused too.
    fields = json.loads(genuine)
    for body in (
        canonical({**fields, "seq": 7}),
        _twice_typ("paywarden.receipt.v1", fields).decode(),
    ):
        assert check_checkpoint(_signed_checkpoint(body, checkpoint_test_key), [public]) is not None


def test_the_offline_verifier_refuses_a_receipt_body_with_a_member_twice(
    checkpoint_test_key: ec.EllipticCurvePrivateKey,
) -> None:
    body = _twice_typ("paywarden.checkpoint.v1", receipt_fields()).decode()
    signature = b64url(raw_signature(checkpoint_test_key, body.encode()))
    with pytest.raises(ReceiptInvalid) as raised:
        verify_receipt(receipt_doc(body, signature), checkpoint_test_key.public_key())
    assert raised.value.reason is ReceiptFailure.MALFORMED


def test_the_hsm_and_the_offline_verifier_agree_on_the_fields() -> None:
    assert audit_bodies.RECEIPT_FIELDS == verify_receipts.RECEIPT_FIELDS
    assert audit_bodies.RECEIPT_TYPE == verify_receipts.RECEIPT_TYPE
    assert audit_bodies.CHECKPOINT_TYPE == verify_receipts.CHECKPOINT_TYPE
    assert audit_bodies.CHECKPOINT_FIELDS == verify_receipts._CHECKPOINT_FIELDS

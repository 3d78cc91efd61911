"""Asking for receipts (``Signer.GetReceipt``) and reading them as ``verify-receipt`` does."""

from __future__ import annotations

import json
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.signer.cli.receipt import receipt_json
from paywarden.v1 import signer_pb2, signer_pb2_grpc

from tests.helpers import trailing_metadata

CALL_TIMEOUT = 30


def get_receipt(
    signer: signer_pb2_grpc.SignerStub, *, decision_id: str | None = None, seq: int | None = None
) -> signer_pb2.GetReceiptResponse:
    """GetReceipt by decision id or by audit seq (exactly one)."""
    assert (decision_id is None) != (seq is None)
    request = (
        signer_pb2.GetReceiptRequest(decision_id=decision_id)
        if decision_id is not None
        else signer_pb2.GetReceiptRequest(audit_seq=seq)
    )
    response: signer_pb2.GetReceiptResponse = signer.GetReceipt(request, timeout=CALL_TIMEOUT)
    return response


def receipt_refusal(
    signer: signer_pb2_grpc.SignerStub, *, decision_id: str | None = None, seq: int | None = None
) -> tuple[grpc.StatusCode, str | None, dict[str, str]]:
    """The refusal of a GetReceipt: (code, details, trailing metadata); fails if answered."""
    try:
        get_receipt(signer, decision_id=decision_id, seq=seq)
    except grpc.RpcError as err:
        return err.code(), err.details(), trailing_metadata(err)
    raise AssertionError("the receipt was given")


def receipt_document(response: signer_pb2.GetReceiptResponse) -> dict[str, Any]:
    """The receipt in the JSON form ``paywarden receipt --out`` writes."""
    doc: dict[str, Any] = json.loads(receipt_json(response))
    return doc


def receipt_body(response: signer_pb2.GetReceiptResponse) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.receipt.body)
    return body


def audit_key_of(spki_pem: str) -> ec.EllipticCurvePublicKey:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(spki_pem.encode("ascii"))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key

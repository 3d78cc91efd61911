"""A receipt the signer gave, checked offline against the audit key the caller trusts.

``SignRefused.receipt`` and ``AgentClient.receipt`` hand over the signer's
``GetReceiptResponse``; :func:`check_receipt` verifies it with :mod:`paywarden.verify` (the
same check as ``paywarden verify-receipt``). Pass the audit public key you pinned (exported by
the security team, or read once from ``OperatorClient.checkpoint``), not the one the receipt
carries: a receipt cannot vouch for its own key.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from paywarden.v1 import signer_pb2
from paywarden.verify import VerifiedReceipt, load_audit_key, verify_receipt


def receipt_document(response: signer_pb2.GetReceiptResponse) -> dict[str, Any]:
    """The receipt as the document ``paywarden receipt --out`` writes (the proto3 JSON mapping
    with the ``.proto``'s field names)."""
    document: dict[str, Any] = json_format.MessageToDict(response, preserving_proto_field_name=True)
    return document


def check_receipt(
    response: signer_pb2.GetReceiptResponse,
    audit_key_pem: str | bytes,
    *,
    require_sealed: bool = False,
) -> VerifiedReceipt:
    """Verifies a receipt against ``audit_key_pem`` (SPKI PEM): its signature and body and,
    when it carries one, its checkpoint and inclusion proof; with ``require_sealed``, a receipt
    without a checkpoint fails. Raises ``paywarden.verify.ReceiptInvalid`` naming the first
    thing wrong; never returns a bool to forget."""
    return verify_receipt(
        receipt_document(response), load_audit_key(audit_key_pem), require_sealed=require_sealed
    )

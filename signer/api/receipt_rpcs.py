"""Signer's GetReceipt: proto in, :class:`~paywarden.signer.core.receipts.Receipts`, proto out.

A mixin of :class:`~paywarden.signer.api.signer_servicer.SignerServicer` (one servicer object
serves all of a service's methods: :func:`~paywarden.signer.api.registry.add_servicer`),
which holds ``receipts`` and ``edge``."""

from __future__ import annotations

from paywarden.signer.api.authz import Edge, rpc
from paywarden.signer.api.servicers import checkpoint_proto
from paywarden.signer.core.receipts import Receipts, SignedReceipt
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.signer.identity import Principal
from paywarden.v1 import signer_pb2


def receipt_proto(r: SignedReceipt) -> signer_pb2.GetReceiptResponse:
    out = signer_pb2.GetReceiptResponse(
        receipt=signer_pb2.Receipt(body=r.body, signature=r.signature, key_id=r.key_id),
        inclusion_proof=[h.hex() for h in r.proof],
        audit_public_key_pem=r.audit_public_key_pem,
    )
    cp = r.checkpoint
    if cp is not None:
        out.checkpoint.CopyFrom(checkpoint_proto(cp))
    return out


class ReceiptRpcs:
    receipts: Receipts
    edge: Edge

    @rpc("/paywarden.v1.Signer/GetReceipt")
    def GetReceipt(
        self, caller: Principal, request: signer_pb2.GetReceiptRequest
    ) -> signer_pb2.GetReceiptResponse:
        which = request.WhichOneof("which")
        if which == "decision_id":
            return receipt_proto(self.receipts.receipt(caller, decision_id=request.decision_id))
        if which == "audit_seq":
            return receipt_proto(self.receipts.receipt(caller, seq=request.audit_seq))
        raise InvalidInput(Reason.FIELD_MISSING, "give a decision_id or an audit_seq")

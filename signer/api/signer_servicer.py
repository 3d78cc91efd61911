"""The Signer service's servicer: Sign and GetPublicKeys here, CheckPayment, GetReceipt
and SignX402 from their mixins (:mod:`.payment_rpcs`, :mod:`.receipt_rpcs`,
:mod:`.x402_rpcs`): one servicer object serves
one service (:func:`~paywarden.signer.api.registry.add_servicer`)."""

from __future__ import annotations

from paywarden.signer import deadlines
from paywarden.signer.api.authz import Edge, rpc
from paywarden.signer.api.payment_rpcs import PaymentRpcs
from paywarden.signer.api.receipt_rpcs import ReceiptRpcs
from paywarden.signer.api.x402_rpcs import X402Rpcs
from paywarden.signer.core.keys import PublicKeys
from paywarden.signer.core.payments import IntentFields
from paywarden.signer.core.receipts import Receipts
from paywarden.signer.core.signing import Signing
from paywarden.signer.core.standing import PaymentChecks
from paywarden.signer.core.views import SignStatus
from paywarden.signer.identity import Principal
from paywarden.v1 import signer_pb2, signer_pb2_grpc


class SignerServicer(X402Rpcs, ReceiptRpcs, PaymentRpcs, signer_pb2_grpc.SignerServicer):
    def __init__(
        self,
        signing: Signing,
        keys: PublicKeys,
        edge: Edge,
        receipts: Receipts,
        payments: PaymentChecks,
    ) -> None:
        self.signing = signing
        self.keys = keys
        self.edge = edge
        self.receipts = receipts
        self.payments = payments

    @rpc("/paywarden.v1.Signer/Sign")
    def Sign(self, caller: Principal, request: signer_pb2.SignRequest) -> signer_pb2.SignResponse:
        i = request.intent
        result = self.signing.sign(
            caller,
            IntentFields(
                session_id=i.session_id,
                key_id=i.key_id,
                payee=i.payee,
                amount=i.amount,
                asset=i.asset,
                reference=i.reference,
                purpose=i.purpose,
                nonce=i.nonce,
                expires_at=i.expires_at,
            ),
            deadlines.current(),
        )
        if result.status is SignStatus.PENDING_APPROVAL:
            return signer_pb2.SignResponse(
                status=signer_pb2.PENDING_APPROVAL,
                approval_id=result.approval_id,
                decision_id=result.decision_id,
                key_id=result.key_id,
                canonical_payload=result.payload,
                replayed_result=result.replayed,
                audit_seq=result.audit_seq,
            )
        return signer_pb2.SignResponse(
            status=signer_pb2.SIGNED,
            jws=result.jws,
            decision_id=result.decision_id,
            key_id=result.key_id,
            canonical_payload=result.payload,
            replayed_result=result.replayed,
            audit_seq=result.audit_seq,
        )

    @rpc("/paywarden.v1.Signer/GetPublicKeys")
    def GetPublicKeys(
        self, caller: Principal, request: signer_pb2.GetPublicKeysRequest
    ) -> signer_pb2.GetPublicKeysResponse:
        keys = self.keys.public_keys()
        return signer_pb2.GetPublicKeysResponse(
            jwks_json=self.keys.jwks(),
            keys=[
                signer_pb2.PublicKey(
                    key_id=k.info.key_id,
                    algorithm=k.info.algorithm,
                    spki_pem=k.info.spki_pem,
                    state=str(k.state),
                    revoked_at=k.revoked_at or 0,
                )
                for k in keys
            ],
            evm_keys=[
                signer_pb2.EvmKey(key_id=k.key_id, address=k.address, state=str(state))
                for k, state in self.keys.evm_keys()
            ],
        )

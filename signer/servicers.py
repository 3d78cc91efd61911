"""Thin gRPC servicers: proto in, plain Python service call, proto out."""

from __future__ import annotations

from paywarden.signer.authz import rpc
from paywarden.signer.canonical import Amount
from paywarden.signer.identity import Principal
from paywarden.signer.payments import IntentFields
from paywarden.signer.service import SessionView, SigningService
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2, signer_pb2_grpc


class SignerServicer(signer_pb2_grpc.SignerServicer):
    def __init__(self, service: SigningService, trust_domain: str) -> None:
        self.service = service
        self.trust_domain = trust_domain

    @rpc("/paywarden.v1.Signer/Sign")
    def Sign(self, caller: Principal, request: signer_pb2.SignRequest) -> signer_pb2.SignResponse:
        i = request.intent
        result = self.service.sign(
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
        )
        return signer_pb2.SignResponse(
            jws=result.jws,
            decision_id=result.decision_id,
            key_id=result.key_id,
            canonical_payload=result.payload,
            replayed_result=result.replayed,
        )

    @rpc("/paywarden.v1.Signer/GetPublicKeys")
    def GetPublicKeys(
        self, caller: Principal, request: signer_pb2.GetPublicKeysRequest
    ) -> signer_pb2.GetPublicKeysResponse:
        keys = self.service.public_keys()
        return signer_pb2.GetPublicKeysResponse(
            jwks_json=self.service.jwks(),
            keys=[
                signer_pb2.PublicKey(key_id=k.key_id, algorithm=k.algorithm, spki_pem=k.spki_pem)
                for k in keys
            ],
        )


def _session_proto(view: SessionView) -> sessions_pb2.Session:
    r = view.record
    return sessions_pb2.Session(
        session_id=r.id,
        agent_id=r.agent_id,
        planner_id=r.planner_id,
        task_digest=r.task_digest,
        created_at=r.created_at,
        expires_at=r.expires_at,
        state=view.state,
        spend=[
            sessions_pb2.AssetSpend(
                asset=a,
                budget=str(Amount(r.budgets_minor[a], view.decimals[a])),
                spent=str(Amount(r.spent_minor.get(a, 0), view.decimals[a])),
            )
            for a in sorted(r.budgets_minor)
        ],
        allowed_payees=list(r.allowed_payees),
    )


class SessionsServicer(sessions_pb2_grpc.SessionsServicer):
    def __init__(self, service: SigningService, trust_domain: str) -> None:
        self.service = service
        self.trust_domain = trust_domain

    @rpc("/paywarden.v1.Sessions/OpenSession")
    def OpenSession(
        self, caller: Principal, request: sessions_pb2.OpenSessionRequest
    ) -> sessions_pb2.OpenSessionResponse:
        view = self.service.open_session(
            caller,
            agent_id=request.agent_id,
            task_description=request.task_description,
            budgets=[(b.asset, b.amount) for b in request.budgets],
            ttl_seconds=request.ttl_seconds,
            allowed_payees=list(request.allowed_payees),
        )
        return sessions_pb2.OpenSessionResponse(session=_session_proto(view))

    @rpc("/paywarden.v1.Sessions/GetSession")
    def GetSession(
        self, caller: Principal, request: sessions_pb2.GetSessionRequest
    ) -> sessions_pb2.GetSessionResponse:
        view = self.service.get_session(caller, request.session_id)
        return sessions_pb2.GetSessionResponse(session=_session_proto(view))

    @rpc("/paywarden.v1.Sessions/CloseSession")
    def CloseSession(
        self, caller: Principal, request: sessions_pb2.CloseSessionRequest
    ) -> sessions_pb2.CloseSessionResponse:
        view = self.service.close_session(caller, request.session_id)
        return sessions_pb2.CloseSessionResponse(session=_session_proto(view))

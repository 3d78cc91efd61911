"""End to end against the real ``paywarden serve`` process."""

from __future__ import annotations

import time
from pathlib import Path

from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2, signer_pb2_grpc

from tests.helpers import Pki, new_nonce, serve


def test_open_sign(config_path: Path, pki: Pki) -> None:
    with serve(config_path) as srv:
        with pki.channel(srv.addr, "planner", "planner-1") as ch:
            s = (
                sessions_pb2_grpc.SessionsStub(ch)
                .OpenSession(
                    sessions_pb2.OpenSessionRequest(
                        agent_id="agent-1",
                        task_description="buy a dataset",
                        budgets=[sessions_pb2.AssetBudget(asset="USD", amount="100.00")],
                        ttl_seconds=600,
                    )
                )
                .session
            )
        with pki.channel(srv.addr, "agent", "agent-1") as ch:
            resp = signer_pb2_grpc.SignerStub(ch).Sign(
                signer_pb2.SignRequest(
                    intent=signer_pb2.PaymentIntent(
                        session_id=s.session_id,
                        key_id="payments.v1",
                        payee="acme-data",
                        amount="12.5",
                        asset="USD",
                        reference="inv-1",
                        purpose="dataset",
                        nonce=new_nonce(),
                        expires_at=int(time.time()) + 60,
                    )
                )
            )
            print(resp)
            assert resp.jws.count(".") == 2

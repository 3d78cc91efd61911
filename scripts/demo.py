#!/usr/bin/env python3
"""Calls a running signer as a planner and an agent, then verifies the payment.

    .venv/bin/python scripts/demo.py [--addr 127.0.0.1:50051] [--pki data/pki]

Uses the development certificates made by scripts/dev-provision.sh
(planner dev-planner, agent dev-agent). Prints the session, the JWS and the
verified claims.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
from pathlib import Path

import grpc
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2, signer_pb2_grpc


def channel(addr: str, pki: Path, role: str, principal: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / f"{role}-{principal}.key").read_bytes(),
        certificate_chain=(pki / f"{role}-{principal}.crt").read_bytes(),
    )
    return grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--pki", type=Path, default=Path("data/pki"))
    parser.add_argument(
        "--amount", default="0.25", help="USD; above 50.00 the dev pack asks a human"
    )
    args = parser.parse_args()
    with channel(args.addr, args.pki, "planner", "dev-planner") as ch:
        session = (
            sessions_pb2_grpc.SessionsStub(ch)  # type: ignore[no-untyped-call]
            .OpenSession(
                sessions_pb2.OpenSessionRequest(
                    agent_id="dev-agent",
                    task_description="demo: buy one API call",
                    budgets=[sessions_pb2.AssetBudget(asset="USD", amount="200.00")],
                    ttl_seconds=900,
                )
            )
            .session
        )
    print(f"session {session.session_id} for {session.agent_id}, budget USD 200.00")
    nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
    with channel(args.addr, args.pki, "agent", "dev-agent") as ch:
        stub = signer_pb2_grpc.SignerStub(ch)  # type: ignore[no-untyped-call]
        resp = stub.Sign(
            signer_pb2.SignRequest(
                intent=signer_pb2.PaymentIntent(
                    session_id=session.session_id,
                    key_id="payments.v1",
                    payee="api.example",
                    amount=args.amount,
                    asset="USD",
                    reference="demo-1",
                    purpose="one API call",
                    nonce=nonce,
                    expires_at=int(time.time()) + 120,
                )
            )
        )
        jwks = stub.GetPublicKeys(signer_pb2.GetPublicKeysRequest()).jwks_json
    if resp.status == signer_pb2.PENDING_APPROVAL:
        print(f"held for human approval: {resp.approval_id}")
        print("  .venv/bin/paywarden approvals show " + resp.approval_id)
        return 0
    token = jws.deserialize_compact(resp.jws, KeySet.import_key_set(json.loads(jwks)))
    print(f"decision {resp.decision_id}, key {resp.key_id}")
    print(f"JWS {resp.jws}")
    print("verified claims:", json.dumps(json.loads(token.payload), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

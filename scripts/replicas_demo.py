#!/usr/bin/env python3
"""Sends payments alternately through several signer replicas (scripts/replicas.sh).

    .venv/bin/python scripts/replicas_demo.py --addr HOST:PORT --addr HOST:PORT
                                              [--pki data/pki] [--payments 6]

As the development planner (dev-planner), opens one session through the first
replica; as the development agent (dev-agent), signs ``--payments`` payments of that
session, payment i through replica i mod N, and prints each answer: the replica, the
key id, the decision and the first bytes of the JWS, verified against the JWKS that
replica serves. Then it retries the first payment, byte for byte, through another
replica: the answer must be the identical JWS (the replicas share one store). Exits
1 if anything was not signed, did not verify or differed.
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
from demo import channel  # scripts/demo.py: the dev PKI's mutual-TLS channel
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from paywarden.v1 import sessions_pb2, sessions_pb2_grpc, signer_pb2, signer_pb2_grpc

PAYEES = ("api.example", "weather-data-inc")


def open_session(addr: str, pki: Path) -> str:
    with channel(addr, pki, "planner", "dev-planner") as ch:
        stub = sessions_pb2_grpc.SessionsStub(ch)  # type: ignore[no-untyped-call]
        response = stub.OpenSession(
            sessions_pb2.OpenSessionRequest(
                agent_id="dev-agent",
                task_description="replicas demo: small API payments through two signers",
                budgets=[sessions_pb2.AssetBudget(asset="USD", amount="20.00")],
                ttl_seconds=900,
            ),
            timeout=30,
        )
        session_id: str = response.session.session_id
        return session_id


def intent(session_id: str, serial: int) -> signer_pb2.SignRequest:
    return signer_pb2.SignRequest(
        intent=signer_pb2.PaymentIntent(
            session_id=session_id,
            key_id="payments.v1",
            payee=PAYEES[serial % len(PAYEES)],
            amount="0.25",
            asset="USD",
            reference=f"replicas-demo-{serial}",
            purpose="one API call",
            nonce=base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode(),
            expires_at=int(time.time()) + 120,
        )
    )


class Replica:
    """One signer: its agent channel, its stub and the key set it serves."""

    def __init__(self, number: int, addr: str, pki: Path) -> None:
        self.number = number
        self.addr = addr
        self.channel = channel(addr, pki, "agent", "dev-agent")
        self.stub = signer_pb2_grpc.SignerStub(self.channel)  # type: ignore[no-untyped-call]
        jwks = self.stub.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=30).jwks_json
        self.keys = KeySet.import_key_set(json.loads(jwks))

    def sign(self, request: signer_pb2.SignRequest) -> signer_pb2.SignResponse:
        response: signer_pb2.SignResponse = self.stub.Sign(request, timeout=30)
        return response

    def verify(self, token: str) -> str:
        """The payee of a JWS this replica's keys verify (raises JoseError if not)."""
        payload = json.loads(jws.deserialize_compact(token, self.keys, ["ES256"]).payload)
        payee: str = payload["payee"]
        return payee


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--addr", action="append", required=True, help="a replica (repeat)")
    parser.add_argument("--pki", type=Path, default=Path("data/pki"))
    parser.add_argument("--payments", type=int, default=6)
    args = parser.parse_args()
    if args.payments < 1:
        parser.error("--payments must be at least 1")
    replicas = [Replica(i, addr, args.pki) for i, addr in enumerate(args.addr, 1)]
    failures = 0
    try:
        session_id = open_session(replicas[0].addr, args.pki)
        print(f"session {session_id} for dev-agent, opened through replica 1")
        first: tuple[signer_pb2.SignRequest, str] | None = None
        signed = dict.fromkeys((r.number for r in replicas), 0)
        for serial in range(args.payments):
            replica = replicas[serial % len(replicas)]
            request = intent(session_id, serial)
            try:
                response = replica.sign(request)
                status = signer_pb2.SignStatus.Name(response.status)
                if response.status != signer_pb2.SIGNED:
                    raise ValueError(f"not signed: {status}")
                payee = replica.verify(response.jws)
            except grpc.RpcError as exc:
                failures += 1
                print(f"payment {serial + 1} via replica {replica.number}: refused: {exc.code()}")
                continue
            except (JoseError, ValueError, KeyError) as exc:
                failures += 1
                print(f"payment {serial + 1} via replica {replica.number} ({replica.addr}): {exc}")
                continue
            signed[replica.number] += 1
            first = first or (request, response.jws)
            print(
                f"payment {serial + 1} via replica {replica.number} ({replica.addr}): {status}"
                f" to {payee}, kid {response.key_id}, decision {response.decision_id},"
                f" JWS {response.jws[:24]}...{response.jws[-12:]}"
            )
        if first is not None and len(replicas) > 1:
            again = replicas[1].sign(first[0])
            same = again.status == signer_pb2.SIGNED and again.jws == first[1]
            same = same and again.replayed_result
            failures += 0 if same else 1
            print(
                f"retry of payment 1 via replica 2: {'the identical JWS' if same else 'DIFFERENT'}"
            )
        for number, count in signed.items():
            print(f"replica {number} signed {count} payment(s)")
        if any(count == 0 for count in signed.values()):
            failures += 1
    finally:
        for replica in replicas:
            replica.channel.close()
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

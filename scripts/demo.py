#!/usr/bin/env python3
"""Calls a running signer as a planner and an agent, then verifies the payment.

    .venv/bin/python scripts/demo.py [--addr 127.0.0.1:50051] [--pki data/pki]

Uses the development certificates made by scripts/dev-provision.sh
(planner dev-planner, agent dev-agent) and the SDK (paywarden.client). Prints the
session, the JWS and the verified claims; a payment held for approval, its approval id.
A refusal is printed as one line (status, message with its reason code, decision id)
and the script exits 1; 2 when the certificates cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.client import (
    AgentClient,
    ClientError,
    ConnectionSettings,
    PendingApproval,
    PlannerClient,
    SettingsError,
    SignRefused,
)


def settings(addr: str, pki: Path, role: str, principal: str) -> ConnectionSettings:
    """The development PKI's mutual-TLS settings for ``role``-``principal``."""
    return ConnectionSettings(
        addr=addr,
        ca=pki / "ca.crt",
        cert=pki / f"{role}-{principal}.crt",
        key=pki / f"{role}-{principal}.key",
        server_name="localhost",
    )


def channel(addr: str, pki: Path, role: str, principal: str) -> grpc.Channel:
    """A channel with those settings (scripts/replicas_demo.py dials with it)."""
    return settings(addr, pki, role, principal).channel()


def pay(args: argparse.Namespace) -> int:
    with PlannerClient(settings(args.addr, args.pki, "planner", "dev-planner")) as planner:
        session = planner.open_session(
            "dev-agent", task="demo: buy one API call", budgets={"USD": "200.00"}, ttl_seconds=900
        )
    print(f"session {session.session_id} for {session.agent_id}, budget USD 200.00")
    agent_settings = settings(args.addr, args.pki, "agent", "dev-agent")
    with AgentClient(agent_settings, fetch_receipts=False) as agent:
        result = agent.sign(
            session.session_id,
            key_id="payments.v1",
            payee="api.example",
            amount=args.amount,
            asset="USD",
            reference="demo-1",
            purpose="one API call",
            expires_in=120,
        )
        jwks = agent.public_keys().jwks_json
    if isinstance(result, PendingApproval):
        print(f"held for human approval: {result.approval_id}")
        print("  .venv/bin/paywarden approvals show " + result.approval_id)
        return 0
    token = jws.deserialize_compact(result.jws, KeySet.import_key_set(json.loads(jwks)))
    print(f"decision {result.decision_id}, key {result.key_id}")
    print(f"JWS {result.jws}")
    print("verified claims:", json.dumps(json.loads(token.payload), indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--pki", type=Path, default=Path("data/pki"))
    parser.add_argument(
        "--amount", default="0.25", help="USD; above 50.00 the dev pack asks a human"
    )
    args = parser.parse_args()
    try:
        return pay(args)
    except SignRefused as err:
        print(f"demo.py: payment refused: {err.diagnostics()}", file=sys.stderr)
    except SettingsError as err:
        print(f"demo.py: {err.diagnostics()}", file=sys.stderr)
        return 2
    except ClientError as err:  # the session refused, or no signer to answer
        print(f"demo.py: {err.diagnostics()}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

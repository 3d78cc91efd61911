"""``paywarden ctl …``: the operator's kill switch, revocations, audit checkpoints and policy
reloads (``ctl reload [--show|--confirm ID]``), over mTLS."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paywarden.policy.vocabulary import FreezeScope
from paywarden.signer.cli.dial import add_connection_arguments, call
from paywarden.signer.cli.reload import add_reload_arguments, reload_command
from paywarden.v1 import control_pb2, control_pb2_grpc

# Plain strings as keys: argparse shows its choices with repr().
_SCOPES = {
    FreezeScope.GLOBAL.value: control_pb2.GLOBAL,
    FreezeScope.AGENT.value: control_pb2.AGENT,
    FreezeScope.SESSION.value: control_pb2.SESSION,
    FreezeScope.KEY.value: control_pb2.KEY,
}
_NAMES = {v: k for k, v in _SCOPES.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, "operator-dev-operator")
    sub = parser.add_subparsers(dest="ctl_command", required=True)
    for name, helptext in (("freeze", "stop signing in a scope"), ("unfreeze", "lift a freeze")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("scope", choices=sorted(_SCOPES))
        p.add_argument("target", nargs="?", default="")
        p.add_argument("--reason", required=True)
    sub.add_parser("freezes", help="the freezes in force")
    p = sub.add_parser("revoke", help="revoke a client identity for good")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--principal", default="", help="a principal id, revoked in every role")
    who.add_argument("--serial", default="", help="a client certificate's serial, in hex")
    p.add_argument("--reason", required=True)
    sub.add_parser("revocations", help="the revoked identities")
    p = sub.add_parser("revoke-mandate", help="revoke a mandate, or every mandate of an agent key")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--mandate-id", default="", help="a mandate id (64 hex, Session.mandate_id)")
    which.add_argument("--agent-key", default="", help="an agent key's RFC 7638 thumbprint")
    p.add_argument("--reason", required=True)
    p = sub.add_parser("checkpoint", help="sign a checkpoint of the audit log now")
    p.add_argument("--public-key-out", type=Path, help="write the audit public key (PEM) here")
    p.add_argument(
        "--out", type=Path, help="save the signed checkpoint (JSON) for audit verify --checkpoint"
    )
    add_reload_arguments(sub)


def run(args: argparse.Namespace) -> int:
    return call(args, control_pb2_grpc.ControlStub, _ctl)


def _ctl(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    cmd = args.ctl_command
    if cmd == "freeze":
        resp = stub.Freeze(
            control_pb2.FreezeRequest(
                scope=_SCOPES[args.scope], target=args.target, reason=args.reason
            ),
            timeout=30,
        )
        state = "frozen" if resp.created else "already frozen"
        where = f"{args.scope} {args.target}".strip()
        print(f"{where}: {state} ({resp.freeze.reason})")
        return 0
    if cmd == "unfreeze":
        removed = stub.Unfreeze(
            control_pb2.UnfreezeRequest(
                scope=_SCOPES[args.scope], target=args.target, reason=args.reason
            ),
            timeout=30,
        ).removed
        where = f"{args.scope} {args.target}".strip()
        print(f"{where}: {'unfrozen' if removed else 'was not frozen'}")
        return 0
    if cmd == "freezes":
        freezes = stub.ListFreezes(control_pb2.ListFreezesRequest(), timeout=30).freezes
        if not freezes:
            print("nothing is frozen")
        for f in freezes:
            print(f"{_NAMES[f.scope]} {f.target or '-'}  by {f.actor}  at {f.at}  {f.reason}")
        return 0
    if cmd in ("revoke", "revocations", "revoke-mandate"):
        return _revocations(stub, args)
    if cmd == "reload":
        return reload_command(stub, args)
    resp_cp = stub.Checkpoint(control_pb2.CheckpointRequest(), timeout=30)
    cp = resp_cp.checkpoint
    print(f"checkpoint: {cp.tree_size} records, root {cp.root_hash}, key {cp.key_id}")
    if args.out:
        saved = {
            "size": cp.tree_size, "root": cp.root_hash, "time": cp.time, "key_id": cp.key_id,
            "body": cp.body, "signature": cp.signature,
        }  # fmt: skip
        args.out.write_text(json.dumps(saved) + "\n", encoding="utf-8")
        print(f"checkpoint written to {args.out}")
    if args.public_key_out:
        args.public_key_out.write_text(resp_cp.audit_public_key_pem, encoding="ascii")
        print(f"audit public key written to {args.public_key_out}")
    return 0


def _revocations(stub: control_pb2_grpc.ControlStub, args: argparse.Namespace) -> int:
    if args.ctl_command == "revoke-mandate":
        answer = stub.RevokeMandate(
            control_pb2.RevokeMandateRequest(
                mandate_id=args.mandate_id, agent_key_thumbprint=args.agent_key, reason=args.reason
            ),
            timeout=30,
        )
        r = answer.revocation
        what = f"mandate {r.mandate_id}" if r.mandate_id else f"agent key {r.agent_key_thumbprint}"
        done = "revoked" if answer.created else "already revoked"
        print(f"{what}: {done} ({r.reason}); {answer.mandates_revoked} mandate(s) revoked now")
        return 0
    if args.ctl_command == "revoke":
        resp = stub.RevokeIdentity(
            control_pb2.RevokeIdentityRequest(
                principal_id=args.principal, cert_serial=args.serial, reason=args.reason
            ),
            timeout=30,
        )
        done = "revoked" if resp.created else "already revoked"
        print(f"{_revoked(resp.revocation)}: {done} ({resp.revocation.reason})")
        return 0
    revocations = stub.ListRevocations(control_pb2.ListRevocationsRequest(), timeout=30)
    if not revocations.revocations:
        print("nothing is revoked")
    for r in revocations.revocations:
        print(f"{_revoked(r)}  by {r.operator}  at {r.at}  {r.reason}")
    return 0


def _revoked(r: control_pb2.RevocationRecord) -> str:
    return f"principal {r.principal_id}" if r.principal_id else f"serial {r.cert_serial}"

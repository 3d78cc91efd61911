"""``paywarden approvals list|show|approve|deny``: the human side, over mTLS.

The approver's certificate names the approver; the service refuses anyone
else. The agent's purpose text is shown, marked as untrusted: it was written
by the agent, possibly under prompt injection, and decides nothing.
"""

from __future__ import annotations

import argparse
import json
import time

from paywarden.policy.vocabulary import Vote
from paywarden.signer.cli.dial import add_connection_arguments, call
from paywarden.v1 import approvals_pb2, approvals_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, "approver-dev-approver")
    sub = parser.add_subparsers(dest="approvals_command", required=True)
    sub.add_parser("list", help="payments waiting for approval")
    show = sub.add_parser("show", help="one approval with its payload and decision trace")
    show.add_argument("approval_id")
    approve = sub.add_parser("approve", help="add your approval")
    approve.add_argument("approval_id")
    approve.add_argument("--note", default="")
    deny = sub.add_parser("deny", help="deny the payment")
    deny.add_argument("approval_id")
    deny.add_argument("--note", default="")


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def summary(a: approvals_pb2.Approval) -> str:
    approvals = f"{len(a.approved_by)}/{a.approvals_required}"
    return (
        f"{a.approval_id}  {a.state:<8}  {a.amount} {a.asset} to {a.payee}  "
        f"agent {a.agent_id}  approvals {approvals}  expires {_when(a.expires_at)}"
    )


def details(a: approvals_pb2.Approval) -> str:
    lines = [
        f"approval   {a.approval_id} ({a.state})",
        f"payment    {a.amount} {a.asset} to {a.payee!r} with key {a.key_id}",
        f"asked by   agent {a.agent_id} in session {a.session_id} (opened by {a.planner_id})",
        f"why held   {a.reason}",
        f"approvals  {len(a.approved_by)} of {a.approvals_required}: "
        + (", ".join(a.approved_by) or "none yet"),
        f"expires    {_when(a.expires_at)}",
        f"policy     pack {a.pack_id} v{a.pack_version} (sha256 {a.pack_sha256[:16]}…)",
    ]
    if a.denied_by:
        lines.append(f"denied by  {a.denied_by}: {a.denial_note or '(no note)'}")
    lines.append("rules:")
    for rule in json.loads(a.trace_json or "[]"):
        limit = f" limit {rule['limit']}" if rule.get("limit") is not None else ""
        seen = f" observed {rule['observed']}" if rule.get("observed") is not None else ""
        lines.append(f"  {rule['outcome']:<7} {rule['rule']:<20} {rule['reason']}{limit}{seen}")
    lines.append(f"payload    {a.canonical_payload.decode('utf-8', 'replace')}")
    lines.append(
        "UNTRUSTED in the payload (decides nothing): its ref, and an x402 payment's "
        "resource and extra, the agent's and the resource server's words"
    )
    purpose = json.dumps(a.untrusted_purpose, ensure_ascii=True)
    lines.append(f"UNTRUSTED purpose written by the agent (decides nothing): {purpose}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    return call(args, approvals_pb2_grpc.ApprovalsStub, _call)


def _call(stub: approvals_pb2_grpc.ApprovalsStub, args: argparse.Namespace) -> int:
    command = args.approvals_command
    if command == "list":
        pending = stub.ListPending(approvals_pb2.ListPendingRequest(), timeout=30).approvals
        if not pending:
            print("no payments are waiting for approval")
        for a in pending:
            print(summary(a))
        return 0
    if command == "show":
        req = approvals_pb2.GetApprovalRequest(approval_id=args.approval_id)
        print(details(stub.GetApproval(req, timeout=30).approval))
        return 0
    if command == Vote.APPROVE:  # the subcommand is named after the vote it casts
        approved = stub.Approve(
            approvals_pb2.ApproveRequest(approval_id=args.approval_id, note=args.note), timeout=30
        )
        print(details(approved.approval))
        return 0
    denied = stub.Deny(
        approvals_pb2.DenyRequest(approval_id=args.approval_id, note=args.note), timeout=30
    )
    print(details(denied.approval))
    return 0

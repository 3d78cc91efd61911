"""``paywarden receipt (--decision ID | --seq N) [--out FILE]``: a signed receipt of what the
signer answered (``Signer.GetReceipt``, over mutual TLS as any caller allowed to see it: the
agent for its own answers, a payee for payments naming it, approvers and operators).

The receipt is written as the ``GetReceiptResponse`` in the proto3 JSON mapping with the
field names of the ``.proto`` (:func:`receipt_json`): the document ``paywarden
verify-receipt`` checks offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf import json_format
from paywarden.signer.cli.dial import add_connection_arguments, call
from paywarden.v1 import signer_pb2, signer_pb2_grpc


def receipt_json(response: signer_pb2.GetReceiptResponse) -> str:
    """The stable JSON form of a receipt (what ``verify-receipt`` reads)."""
    text: str = json_format.MessageToJson(
        response, preserving_proto_field_name=True, indent=2, sort_keys=True
    )
    return text + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, "agent-dev-agent")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--decision", metavar="ID", help="the decision's id")
    which.add_argument(
        "--seq", type=int, metavar="N", help="the audit record's sequence number (a refusal's)"
    )
    parser.add_argument("--out", type=Path, help="write the receipt here (default: stdout)")


def run(args: argparse.Namespace) -> int:
    return call(args, signer_pb2_grpc.SignerStub, _fetch)


def _fetch(stub: signer_pb2_grpc.SignerStub, args: argparse.Namespace) -> int:
    if args.decision is not None:
        request = signer_pb2.GetReceiptRequest(decision_id=args.decision)
    else:
        request = signer_pb2.GetReceiptRequest(audit_seq=args.seq)
    text = receipt_json(stub.GetReceipt(request, timeout=30))
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0

"""A payee's two calls over mutual TLS, as the ``payee`` role (or an operator):

- ``paywarden jwks [--out FILE]``: the signer's JWKS (``Signer.GetPublicKeys``), the key set
  ``paywarden verify`` checks payments against offline;
- ``paywarden check-payment DECISION_ID [--json]``: whether a signed payment still stands
  (``Signer.CheckPayment``). Exit 0 only for ``VALID``; 1 for ``VOIDED``, ``EXPIRED``, a
  refusal (a payment that does not name the caller is ``NOT_FOUND``) or an answer this
  command does not know; 2 when nothing was asked (usage, unreadable certificate files).

The default certificate is the development payee's (``data/pki/payee-api.example.*``, made by
``scripts/dev-provision.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from paywarden.signer.cli.dial import add_connection_arguments, call
from paywarden.signer.cli.support import CliExit
from paywarden.v1 import signer_pb2, signer_pb2_grpc

DEV_PAYEE = "payee-api.example"
TIMEOUT = 30.0


def add_jwks_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, DEV_PAYEE)
    parser.add_argument("--out", type=Path, help="write the JWKS here (default: stdout)")


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser, DEV_PAYEE)
    parser.add_argument("decision_id", help="the payment's decision id (its JWS 'jti')")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def run_jwks(args: argparse.Namespace) -> int:
    return call(args, signer_pb2_grpc.SignerStub, _jwks)


def run_check(args: argparse.Namespace) -> int:
    return call(args, signer_pb2_grpc.SignerStub, _check)


def _jwks(stub: signer_pb2_grpc.SignerStub, args: argparse.Namespace) -> int:
    answer = stub.GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=TIMEOUT)
    text = json.dumps(json.loads(answer.jwks_json), indent=2, sort_keys=True) + "\n"
    if args.out is None:
        print(text, end="")
        return 0
    out: Path = args.out
    try:  # written aside and renamed: a reader never sees half a key set
        fd, tmp = tempfile.mkstemp(dir=out.parent or Path("."), prefix=f".{out.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except OSError as exc:
        raise CliExit(2, f"--out: cannot write {out}: {exc.strerror}") from None
    return 0


def _check(stub: signer_pb2_grpc.SignerStub, args: argparse.Namespace) -> int:
    request = signer_pb2.CheckPaymentRequest(decision_id=args.decision_id)
    answer = stub.CheckPayment(request, timeout=TIMEOUT)
    standing = signer_pb2.PaymentStanding.Name(answer.standing)
    fields = {
        "standing": standing,
        "reason": answer.reason,
        "detail": answer.detail,
        "decision_id": answer.decision_id,
        "payee": answer.payee,
        "amount": answer.amount,
        "asset": answer.asset,
        "key_id": answer.key_id,
        "expires_at": answer.expires_at,
        "checked_at": answer.checked_at,
    }
    if args.json:
        print(json.dumps(fields, sort_keys=True))
    elif answer.standing == signer_pb2.VALID:
        print(
            f"VALID: {answer.amount} {answer.asset} to {answer.payee} "
            f"(decision {answer.decision_id}, key {answer.key_id}, expires {answer.expires_at})"
        )
    else:
        print(f"{standing}: {answer.reason}: {answer.detail}")
    return 0 if answer.standing == signer_pb2.VALID else 1

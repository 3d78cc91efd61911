"""``paywarden verify-receipt FILE --audit-key PEM [--sealed] [--json]``: checks a receipt offline.

``FILE`` is a receipt as ``paywarden receipt --out`` writes it; ``PEM`` the audit public key,
obtained out of band (``paywarden-keys`` exports it): never the copy inside the receipt.
Exit 0 when it verifies, 1 when it does not (the reason code on stderr, or in the JSON),
2 for a usage error (a file that cannot be read, a key that is not a P-256 public key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paywarden.verify.receipts import (
    ReceiptInvalid,
    VerifiedReceipt,
    load_audit_key,
    parse_receipt_document,
    verify_receipt,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="the receipt (JSON, from `paywarden receipt`)")
    parser.add_argument(
        "--audit-key", type=Path, required=True, help="the audit public key (SPKI PEM)"
    )
    parser.add_argument(
        "--sealed",
        action="store_true",
        help="fail unless a checkpoint covers the record (RECEIPT_NOT_SEALED)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_bytes()
        pem = args.audit_key.read_bytes()
    except OSError as exc:
        print(f"paywarden: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        key = load_audit_key(pem)
    except ReceiptInvalid as exc:
        print(f"paywarden: --audit-key: {exc}", file=sys.stderr)
        return 2
    try:
        verified = verify_receipt(parse_receipt_document(text), key, require_sealed=args.sealed)
    except ReceiptInvalid as exc:
        if args.json:
            print(json.dumps({"valid": False, "reason": exc.reason, "detail": exc.detail}))
        print(f"paywarden: receipt invalid: {exc.reason}: {exc.detail}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(_document(verified), sort_keys=True))
    else:
        print(_summary(verified))
    return 0


def _document(v: VerifiedReceipt) -> dict[str, object]:
    sealed = v.sealed_by
    return {
        "valid": True,
        "body": dict(v.body),
        "checkpoint": None
        if sealed is None
        else {"size": sealed.size, "root": sealed.root, "time": sealed.time, "kid": sealed.key_id},
    }


def _summary(v: VerifiedReceipt) -> str:
    b = v.body
    what = f"decision {b['decision_id']}" if b["decision_id"] else "a refusal"
    line = f"receipt valid: audit record {b['seq']}, {what}: {b['outcome']} ({b['reason']})"
    if v.sealed_by is None:
        return line + "; no checkpoint covers it yet"
    return line + f"; included in checkpoint {v.sealed_by.size} (root {v.sealed_by.root})"

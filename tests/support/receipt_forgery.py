"""Receipt and checkpoint documents signed by a test key, to try the offline checker's
parsing on inputs the signer never writes (no server: ``paywarden.verify`` is offline)."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils


def receipt_fields(**changes: Any) -> dict[str, Any]:
    """A receipt body's fields as the signer writes them (a denial), with ``changes``."""
    body: dict[str, Any] = {
        "typ": "paywarden.receipt.v1",
        "kid": "audit.v1",
        "action": "sign",
        "decision_id": "dec_0123456789abcdef",
        "request_hash": "ab" * 32,
        "outcome": "deny",
        "reason": "BUDGET_EXCEEDED",
        "approval": "",
        "pack_sha256": "cd" * 32,
        "seq": 7,
        "leaf": "ef" * 32,
        "agent": "agent-1",
        "payee": "acme-weather",
        "time": 1_764_000_000,
    }
    body.update(changes)
    return body


def canonical(fields: dict[str, Any]) -> str:
    """RFC 8785 for flat objects of strings and safe integers."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ES256 r || s (32 bytes each) over ``data``."""
    r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def receipt_doc(body: str, signature: str, kid: str = "audit.v1") -> dict[str, Any]:
    """A GetReceiptResponse document without a checkpoint."""
    return {"receipt": {"body": body, "signature": signature, "key_id": kid}}


def spki_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )

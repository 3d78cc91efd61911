"""Audit checkpoints: the record of a signed tree head, its signed body, and checking one.

A checkpoint signs ``{"typ", "size", "root", "time", "kid"}`` in canonical JSON
with the audit key (ES256, the signature as base64url of r‖s). The signer makes
them (:mod:`paywarden.signer.core.control`); :mod:`.verification` and the audit
CLI check them against the audit public keys.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from paywarden.hsm.audit_bodies import CHECKPOINT_FIELDS, CHECKPOINT_TYPE, audit_body
from paywarden.signer.encoding import jcs


@dataclass(frozen=True, slots=True)
class Checkpoint:
    size: int
    root: str  # hex
    at: int
    key_id: str
    body: str  # the signed RFC 8785 JSON
    signature: str  # base64url r||s (ES256)


def checkpoint_body(size: int, root: bytes, at: int, key_id: str) -> bytes:
    return jcs(
        {"typ": CHECKPOINT_TYPE, "size": size, "root": root.hex(), "time": at, "kid": key_id}
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_signature(raw: bytes) -> str:
    return _b64url(raw)


def verify_checkpoint_signature(
    checkpoint: Checkpoint, public_key: ec.EllipticCurvePublicKey
) -> bool:
    try:
        raw = _unb64url(checkpoint.signature)
    except (ValueError, TypeError):
        return False
    if len(raw) != 64:
        return False
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    try:
        public_key.verify(der, checkpoint.body.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def check_checkpoint(
    cp: Checkpoint, public_keys: Sequence[ec.EllipticCurvePublicKey]
) -> str | None:
    if not any(verify_checkpoint_signature(cp, key) for key in public_keys):
        return f"checkpoint {cp.size}: bad signature (no given audit key verifies it)"
    try:  # a checkpoint's typ and fields exactly, each once: never a receipt's body
        body = audit_body(cp.body, CHECKPOINT_TYPE, CHECKPOINT_FIELDS)
    except ValueError as exc:
        return f"checkpoint {cp.size}: its body is not a checkpoint's: {exc}"
    if (
        type(body["size"]) is not int
        or type(body["time"]) is not int
        or not isinstance(body["root"], str)
        or not isinstance(body["kid"], str)
    ):
        return f"checkpoint {cp.size}: its body's fields have the wrong types"
    if body["size"] != cp.size or body["root"] != cp.root:
        return f"checkpoint {cp.size}: its row disagrees with its signed body"
    return None

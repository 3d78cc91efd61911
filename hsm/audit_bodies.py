"""What the audit key signs: a receipt body, a checkpoint body or the signing input of a
mandate receipt (a compact JWS), each told apart by its ``typ`` and its exact set of
fields, read with every member once.

The audit key signs through three doors (:meth:`Hsm.sign_receipt`,
:meth:`Hsm.sign_checkpoint`, :meth:`Hsm.sign_mandate_receipt`); each takes only its own
kind of body, so no signature can pass for another's (a JWS signing input is base64url
text, never a JSON object). Python's
``json`` keeps the last of two equal keys, so a body with ``"typ"`` twice could show one
``typ`` here and the other to a reader that keeps the first: a repeated member is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

RECEIPT_TYPE = "paywarden.receipt.v1"
CHECKPOINT_TYPE = "paywarden.checkpoint.v1"
# paywarden.verify.receipts holds the same sets (tests/test_audit_bodies.py compares them).
RECEIPT_FIELDS = frozenset(
    {
        "typ", "kid", "action", "decision_id", "request_hash", "outcome", "reason",
        "approval", "pack_sha256", "seq", "leaf", "agent", "payee", "time",
    }
)  # fmt: skip
CHECKPOINT_FIELDS = frozenset({"typ", "size", "root", "time", "kid"})
# An AP2-shaped receipt of a refused mandate: a JWT whose header is exactly
# MANDATE_RECEIPT_HEADER and whose claims are exactly these.
MANDATE_RECEIPT_TYPE = "paywarden.mandate-receipt.v1"
MANDATE_RECEIPT_FIELDS = frozenset(
    {
        "typ", "iss", "iat", "result", "reference", "error", "error_description", "reason",
        "mandate_id",
    }
)  # fmt: skip
MANDATE_RECEIPT_HEADER = frozenset({"alg", "kid", "typ"})
_B64URL = re.compile(rb"^[A-Za-z0-9_-]+$")


def _once(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the member {key!r} is repeated")
        out[key] = value
    return out


def _no_float(text: str) -> object:
    raise ValueError(f"a number that is not an integer: {text}")


def parse_unique(body: bytes | str) -> object:
    """``body`` as JSON, each object's members once, no number but integers
    (:class:`ValueError` otherwise)."""
    try:
        return json.loads(body, object_pairs_hook=_once, parse_float=_no_float,
                          parse_constant=_no_float)  # fmt: skip
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None


def audit_body(body: bytes | str, typ: str, fields: frozenset[str]) -> dict[str, object]:
    """The members of ``body`` if it is a JSON object of exactly ``fields``, each once,
    whose ``typ`` is ``typ``; :class:`ValueError` otherwise."""
    parsed = parse_unique(body)
    if not isinstance(parsed, dict):
        raise ValueError("the body is not a JSON object")
    if parsed.get("typ") != typ:
        raise ValueError(f"the body's typ is not {typ!r}")
    if set(parsed) != fields:
        missing, extra = sorted(fields - set(parsed)), sorted(set(parsed) - fields)
        raise ValueError(f"the body's fields: missing {missing}, not allowed {extra}")
    return parsed


def _b64url(part: bytes) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part:
        raise ValueError("not canonical base64url")
    return raw


def mandate_receipt_input(signing_input: bytes) -> dict[str, object]:
    """The claims of a mandate receipt's JWS signing input (``header.payload``) if its
    header is exactly ``{"alg": "ES256", "kid", "typ": "JWT"}`` and its claims are exactly
    :data:`MANDATE_RECEIPT_FIELDS` with that ``typ``; :class:`ValueError` otherwise."""
    parts = signing_input.split(b".")
    if len(parts) != 2:
        raise ValueError("a JWS signing input is header.payload")
    header = parse_unique(_b64url(parts[0]))
    if not isinstance(header, dict) or set(header) != MANDATE_RECEIPT_HEADER:
        raise ValueError("the JWS header must be exactly alg, kid and typ")
    if header["alg"] != "ES256" or header["typ"] != "JWT":
        raise ValueError("the JWS header must say ES256 and JWT")
    return audit_body(_b64url(parts[1]), MANDATE_RECEIPT_TYPE, MANDATE_RECEIPT_FIELDS)

"""What the audit key signs: a receipt body or a checkpoint body, each told apart by its
``typ`` and its exact set of fields, read with every member once.

The audit key signs through two doors (:meth:`Hsm.sign_receipt`, :meth:`Hsm.sign_checkpoint`);
each takes only its own kind of body, so neither signature can pass for the other. Python's
``json`` keeps the last of two equal keys, so a body with ``"typ"`` twice could show one
``typ`` here and the other to a reader that keeps the first: a repeated member is refused.
"""

from __future__ import annotations

import json

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

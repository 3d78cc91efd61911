"""Strict decoding of what a payment carries: base64url without padding, and JSON objects
that hold only strings and safe integers, once each, in RFC 8785 (JCS) form.

Python's own decoders are lenient where a verifier must not be: ``base64`` ignores
non-canonical trailing bits, ``json`` keeps the last of two equal keys and reads NaN,
floats and integers of any size. Here each of those is a rejection.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from paywarden.policy.vocabulary import Reason
from paywarden.verify.errors import PaymentRejected

MAX_SAFE_INT = 2**53 - 1
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

Flat = dict[str, str | int]


def b64url_decode(text: str, what: str) -> bytes:
    """The bytes ``text`` encodes; only the canonical unpadded base64url spelling."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise PaymentRejected(Reason.JWS_MALFORMED, f"the {what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise PaymentRejected(Reason.JWS_MALFORMED, f"the {what} is not base64url") from None
    if b64url_encode(data) != text:  # unused trailing bits set: another spelling
        raise PaymentRejected(Reason.JWS_MALFORMED, f"the {what} is not canonical base64url")
    return data


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _refuse(text: str) -> object:
    raise ValueError(f"{text} is not allowed")


def strict_loads(text: str) -> object:
    """``text`` as JSON with each member of an object once and no number but integers
    (no fraction, exponent, NaN or Infinity); raises ValueError (or RecursionError)."""
    return json.loads(text, object_pairs_hook=_pairs, parse_float=_refuse, parse_constant=_refuse)


def json_object(data: bytes, what: str) -> dict[str, object]:
    """``data`` as a JSON object, each member once, no number but integers
    (:class:`PaymentRejected` with ``JWS_MALFORMED``)."""
    try:
        value = strict_loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PaymentRejected(Reason.JWS_MALFORMED, f"the {what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PaymentRejected(Reason.JWS_MALFORMED, f"the {what} is not a JSON object")
    return value


def flat(value: dict[str, object], what: str) -> Flat:
    """``value`` if it holds only strings and safe integers (else ``JWS_MALFORMED``);
    :func:`check_canonical` then says whether it was written in its RFC 8785 form."""
    out: Flat = {}
    for key, member in value.items():
        if type(member) is int:
            if abs(member) > MAX_SAFE_INT:
                raise PaymentRejected(Reason.JWS_MALFORMED, f"the {what}'s {key} is too large")
        elif type(member) is not str:
            raise PaymentRejected(
                Reason.JWS_MALFORMED, f"the {what}'s {key} is neither a string nor an integer"
            )
        out[key] = member
    return out


def check_canonical(value: Flat, data: bytes, what: str) -> None:
    """``JWS_NOT_CANONICAL`` unless ``data`` is the RFC 8785 form of ``value``."""
    if canonical(value) != data:
        raise PaymentRejected(Reason.JWS_NOT_CANONICAL, f"the {what} is not RFC 8785 JSON")


def canonical(value: Flat) -> bytes:
    """RFC 8785 for a flat object of strings and integers: members sorted by the UTF-16
    code units of their names, no whitespace, strings escaped as JSON's shortest form
    (which Python's encoder writes with ``ensure_ascii=False``), integers in decimal."""
    members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be", "surrogatepass"))
    parts = []
    for key, member in members:
        shown = str(member) if type(member) is int else json.dumps(member, ensure_ascii=False)
        parts.append(f"{json.dumps(key, ensure_ascii=False)}:{shown}")
    try:
        return ("{" + ",".join(parts) + "}").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no UTF-8 text holds it
        raise PaymentRejected(Reason.JWS_MALFORMED, "a string holds a lone surrogate") from None

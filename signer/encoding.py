"""The byte encodings the signer signs and logs: RFC 8785 (JCS) JSON, base64url
without padding, SHA-256 in hex.

The payload and every audit record are JCS JSON built from typed fields. They hold
only strings, integers (|n| < 2**53), booleans, null, arrays and objects, for which
JCS reduces to: keys sorted by UTF-16 code units, no whitespace, minimal string
escaping, integers in plain decimal. The tests check this encoder against an
independent RFC 8785 implementation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping

_MAX_SAFE_INT = 2**53 - 1


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- RFC 8785 ------------------------------------------------------------------

Json = str | int | bool | None | Mapping[str, "Json"] | list["Json"]


def jcs(value: Json) -> bytes:
    """RFC 8785 serialisation for strings, safe integers, booleans, null, arrays, objects.

    For these types JCS is what the C JSON encoder writes with sorted keys, no
    whitespace and UTF-8 output, once two things are checked: every value has one of
    those types (and every integer is safe), and no key holds a character beyond the
    Basic Multilingual Plane (where code-point order and JCS's UTF-16 order differ).
    The checks are one pass without building text; anything they do not vouch for
    (a Mapping that is not a dict, a character beyond the BMP) takes the slower
    encoder written from the RFC."""
    if _plain(value):
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        if not _ASTRAL.search(text):
            return text.encode("utf-8")
    return _jcs(value).encode("utf-8")


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _plain(value: object) -> bool:
    """Does ``value`` hold only str (or a subclass: a StrEnum is its text), safe int,
    bool, None, list and dict with str keys?
    Raises what :func:`_jcs` raises for an unsafe integer or a non-string key."""
    kind = type(value)
    if isinstance(value, str) or kind is bool or value is None:  # StrEnum: its text
        return True
    if kind is int:
        if abs(value) > _MAX_SAFE_INT:  # type: ignore[arg-type]
            raise ValueError("integer outside the range JCS represents exactly")
        return True
    if kind is list:
        return all(_plain(v) for v in value)  # type: ignore[attr-defined]
    if kind is dict:
        for k, v in value.items():  # type: ignore[attr-defined]
            if type(k) is not str:
                if isinstance(k, str):  # a StrEnum key: the encoder from the RFC writes it
                    return False
                raise TypeError("object keys must be strings")
            if not _plain(v):
                return False
        return True
    return False


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be")


def _jcs(value: Json) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise ValueError("integer outside the range JCS represents exactly")
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(_jcs(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("object keys must be strings")
        items = sorted(value.items(), key=lambda kv: _utf16_key(kv[0]))
        return "{" + ",".join(f"{_jcs(k)}:{_jcs(v)}" for k, v in items) + "}"
    raise TypeError(f"cannot canonicalise {type(value).__name__}")

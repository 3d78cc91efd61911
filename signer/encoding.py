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
from collections.abc import Mapping

_MAX_SAFE_INT = 2**53 - 1


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- RFC 8785 ------------------------------------------------------------------

Json = str | int | bool | None | Mapping[str, "Json"] | list["Json"]


def jcs(value: Json) -> bytes:
    """RFC 8785 serialisation for strings, safe integers, booleans, null, arrays, objects."""
    return _jcs(value).encode("utf-8")


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

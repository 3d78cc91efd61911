"""Is a record's text its RFC 8785 form? The C JSON codec decides almost every record.

RFC 8785 of what a record holds (strings, integers up to 2**53 - 1, booleans, null,
arrays, objects) is what the C JSON encoder writes with sorted keys and no spaces,
but for the order of keys: RFC 8785 sorts them by UTF-16 code units, the encoder by
code points, and the two differ only between a character above U+FFFF and one from
U+E000 to U+FFFF. So a record parsed without floats, constants or larger integers,
that holds no character above U+FFFF, is canonical exactly when the C encoder gives
back its text; anything else is decided by :func:`paywarden.signer.encoding.jcs`
itself, as the verifier always did. The verifier reads each record once with
:func:`parse` and :func:`is_canonical`, about twice as fast as ``jcs`` over the
parsed value, with the same answers (a property test compares them).
"""

from __future__ import annotations

import json
import re
from typing import Any

from paywarden.signer.encoding import jcs

_MAX_SAFE = 2**53 - 1


class Unusual(Exception):
    """A value that the fast test leaves to ``jcs`` (a float, NaN, an integer past 2**53)."""


def _unusual(_text: str) -> Any:
    raise Unusual


def _safe_int(text: str) -> int:
    value = int(text)
    if -_MAX_SAFE <= value <= _MAX_SAFE:
        return value
    raise Unusual


# json.loads, but Unusual on a value that the fast test leaves to jcs.
PLAIN = json.JSONDecoder(parse_float=_unusual, parse_int=_safe_int, parse_constant=_unusual)
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def parse(body: str) -> tuple[Any, bool]:
    """``json.loads(body)`` (ValueError if it is not JSON), and whether it is plain:
    free of the values that the fast test leaves to ``jcs``."""
    try:
        return PLAIN.decode(body), True
    except Unusual:
        return json.loads(body), False


def is_canonical(parsed: Any, body: str, plain: bool) -> bool:
    """``jcs(parsed) == body``, raising what ``jcs`` raises for a value it cannot write
    (TypeError, ValueError, RecursionError)."""
    if plain and (body.isascii() or _ASTRAL.search(body) is None) and _ENCODE(parsed) == body:
        return True
    return jcs(parsed).decode("utf-8") == body

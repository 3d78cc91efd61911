# ruff: noqa: RUF001 - the homoglyph table holds look-alike characters on purpose
"""Payee identifiers: normalisation, patterns and confusable look-alikes.

Two identifiers are *equal* when they are equal after NFC normalisation (and
case-folding when the asset says identifiers are case-insensitive). They are
*confusable* when they differ but their skeletons match: the skeleton folds
compatibility forms (NFKC), case, invisible characters and a table of common
homoglyphs (Cyrillic and Greek letters that look Latin, 0/o, 1/l, rn/m, …),
in the spirit of Unicode TS #39.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

# Single characters that render like a Latin letter or digit.
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "ӏ": "l", "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "г": "r",
    "ѕ": "s", "т": "t", "ц": "u", "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "з": "3", "ь": "b",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "μ": "u",
    # Latin look-alikes and digits
    "ı": "i", "ɩ": "i", "ɡ": "g", "ʟ": "l", "ɑ": "a", "0": "o", "1": "l", "|": "l", "!": "l",
    "5": "s", "$": "s", "@": "a",
    # punctuation
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "−": "-", "․": ".", "。": ".", "·": ".",
}  # fmt: skip
_SEQUENCES = (("rn", "m"), ("vv", "w"), ("cl", "d"))
_IGNORABLE = {"Cf", "Mn", "Me"}  # format characters and combining marks


def normalise(identifier: str, *, case_insensitive: bool) -> str:
    text = unicodedata.normalize("NFC", identifier)
    return text.casefold() if case_insensitive else text


@lru_cache(maxsize=4096)
def skeleton(identifier: str) -> str:
    text = unicodedata.normalize("NFKD", identifier).casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _IGNORABLE)
    text = "".join(_HOMOGLYPHS.get(ch, ch) for ch in text)
    text = text.replace("i", "l")  # i and l are the commonest confusion after folding
    for seq, repl in _SEQUENCES:
        text = text.replace(seq, repl)
    return text


def confusable_with(identifier: str, candidates: Iterable[str]) -> str | None:
    """The first candidate that looks like ``identifier`` without being equal to it."""
    target = skeleton(identifier)
    for candidate in candidates:
        if candidate != identifier and skeleton(candidate) == target:
            return candidate
    return None


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str, case_insensitive: bool) -> re.Pattern[str]:
    """Patterns are anchored to the whole identifier (``fullmatch``) and, like
    identifiers, read in NFC."""
    # re.ASCII: classes like [a-z] or \w never match non-ASCII look-alikes (with
    # IGNORECASE, [a-z] would otherwise also match the dotless i).
    text = unicodedata.normalize("NFC", pattern)
    return re.compile(text, re.ASCII | (re.IGNORECASE if case_insensitive else 0))


def matches_any(identifier: str, patterns: Iterable[str], *, case_insensitive: bool) -> str | None:
    for pattern in patterns:
        if compile_pattern(pattern, case_insensitive).fullmatch(identifier):
            return pattern
    return None

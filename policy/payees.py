# ruff: noqa: RUF001 - the look-alike tables hold look-alike characters on purpose
"""Payee identifiers: normalisation, patterns and confusable look-alikes.

Two identifiers are *equal* when they are equal after NFC normalisation (and
case-folding when the asset says identifiers are case-insensitive). An
identifier is *canonical* when that normalisation changes nothing but ASCII
letter case: only a canonical identifier is ever matched, so the text that is
signed is the identifier the policy approved, up to ASCII case.

Two identifiers are *confusable* when they differ but their skeletons match:
the skeleton folds compatibility forms (NFKD), case, invisible characters and
a table of common homoglyphs (Cyrillic and Greek letters that look Latin,
dashes that look like "-", 0/o, 1/l, rn/m, …), in the spirit of Unicode
TS #39. The *prototype* of an identifier only replaces non-ASCII look-alikes
by the ASCII characters they imitate, keeping ASCII as it is: a deny pattern,
which cannot itself be skeletonised, is matched against it as well.

Patterns run on RE2 (linear time in the identifier, whatever the pattern) and
are anchored to the whole identifier. They are compiled when a pack is loaded,
by :func:`compile_pattern`, exactly as they run.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import re2  # type: ignore[import-untyped]
from paywarden.policy.vocabulary import Reason

# Non-ASCII characters that render like an ASCII letter, digit or punctuation
# mark (both cases: the prototype keeps case, for case-sensitive assets).
_LOOKALIKES = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "ӏ": "l", "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "г": "r",
    "ѕ": "s", "т": "t", "ц": "u", "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "з": "3", "ь": "b",
    "А": "A", "В": "B", "С": "C", "Е": "E", "Ё": "E", "Н": "H", "І": "I", "Ї": "I", "Ј": "J",
    "К": "K", "М": "M", "О": "O", "Р": "P", "Ԛ": "Q", "Ѕ": "S", "Т": "T", "Ԝ": "W", "Х": "X",
    "У": "Y", "Ү": "Y", "ү": "y", "Ӏ": "I", "З": "3", "Ь": "b", "є": "e", "Є": "E", "ԍ": "G",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "μ": "u", "ϲ": "c", "Ϲ": "C", "ϳ": "j",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Armenian
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "ց": "g", "զ": "q",
    # Latin letters that are not ASCII, and small capitals
    "ı": "i", "ɩ": "i", "ɡ": "g", "ʟ": "l", "ɑ": "a", "ǀ": "l", "ɪ": "i", "ᴀ": "a", "ʙ": "b",
    "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ᴊ": "j", "ᴋ": "k", "ᴍ": "m", "ɴ": "n",
    "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y",
    "ᴢ": "z", "ł": "l", "đ": "d", "ħ": "h", "ø": "o", "Ø": "O",
    # dashes and minus signs
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-", "﹣": "-", "－": "-",
    "⁃": "-", "˗": "-", "➖": "-", "ー": "-", "一": "-",
    # dots
    "․": ".", "‧": ".", "。": ".", "·": ".", "．": ".", "｡": ".", "۔": ".", "܁": ".", "܂": ".",
    # at signs and underscores
    "＠": "@", "﹫": "@", "＿": "_",
}  # fmt: skip
# ASCII characters commonly read as another ASCII character (skeleton only).
_ASCII_CONFUSIONS = {"0": "o", "1": "l", "|": "l", "!": "l", "5": "s", "$": "s", "@": "a"}
_SEQUENCES = (("rn", "m"), ("vv", "w"), ("cl", "d"))
_IGNORABLE = {"Cf", "Mn", "Me"}  # format characters and combining marks
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# RE2 keeps the DFA of one pattern within this budget (it falls back to its
# NFA, still linear, when the DFA would need more); a pattern whose program
# alone is larger is refused at load.
PATTERN_MAX_MEM = 1 << 20


def normalise(identifier: str, *, case_insensitive: bool) -> str:
    text = unicodedata.normalize("NFC", identifier)
    return text.casefold() if case_insensitive else text


def ascii_lower(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def is_canonical(identifier: str, *, case_insensitive: bool) -> bool:
    """Normalisation changes nothing but ASCII letter case (no long s, ligature,
    sharp s, decomposed accent …), and the text is valid Unicode."""
    if any(unicodedata.category(ch) == "Cs" for ch in identifier):
        return False
    expected = ascii_lower(identifier) if case_insensitive else identifier
    return normalise(identifier, case_insensitive=case_insensitive) == expected


def _lookalikes(text: str) -> str:
    return "".join(_LOOKALIKES.get(ch, ch) for ch in text)


def _strip(identifier: str) -> str:
    # Look-alikes are mapped before NFKD too: compatibility decomposition turns
    # some of them into characters the table does not hold (lunate sigma -> final sigma).
    text = unicodedata.normalize("NFKD", _lookalikes(identifier))
    return "".join(ch for ch in text if unicodedata.category(ch) not in _IGNORABLE)


@lru_cache(maxsize=4096)
def prototype(identifier: str) -> str:
    """Non-ASCII look-alikes replaced by the ASCII they imitate; ASCII and case kept."""
    if identifier.isascii():
        return identifier
    return _lookalikes(_strip(identifier))


@lru_cache(maxsize=4096)
def skeleton(identifier: str) -> str:
    text = _lookalikes(_strip(_strip(identifier).casefold()))  # casefold may add marks (İ)
    text = "".join(_ASCII_CONFUSIONS.get(ch, ch) for ch in text)
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


# -- patterns ------------------------------------------------------------------------


class PatternError(ValueError):
    """RE2 cannot compile a pattern; the message says why."""


@dataclass(frozen=True, slots=True, eq=False)
class Pattern:
    """A pack pattern compiled by RE2: matching takes time linear in the identifier."""

    source: str
    regex: object

    def fullmatch(self, identifier: str) -> bool:
        if not identifier.isascii():
            # RE2 reads UTF-8, which cannot encode a lone surrogate.
            identifier = identifier.encode("utf-8", "replace").decode("utf-8")
        return self.regex.fullmatch(identifier) is not None  # type: ignore[attr-defined]


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str, case_insensitive: bool) -> Pattern:
    """The one way a payee pattern is compiled, at load and for evaluation alike.

    Patterns are read in NFC, like identifiers. RE2 refuses what it cannot run in
    linear time (backreferences, lookarounds, atomic groups, possessive
    quantifiers) and inline flags other than ``i``, ``m``, ``s`` and ``U``.
    """
    text = unicodedata.normalize("NFC", pattern)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PatternError(f"pattern {pattern!r} is not valid Unicode") from None
    options = re2.Options()
    options.case_sensitive = not case_insensitive
    options.log_errors = False
    options.max_mem = PATTERN_MAX_MEM
    try:
        regex = re2.compile(text, options)
    except re2.error as exc:
        why = exc.args[0] if exc.args else exc
        if isinstance(why, bytes):
            why = why.decode("utf-8", "replace")
        raise PatternError(
            f"pattern {pattern!r} cannot be compiled by RE2 ({why}); payee patterns must "
            "match in linear time: no backreferences, lookarounds, atomic groups, possessive "
            "quantifiers, or inline flags other than (?i), (?m), (?s) and (?U)"
        ) from None
    return Pattern(pattern, regex)


def first_match(identifiers: Iterable[str], patterns: Iterable[Pattern]) -> Pattern | None:
    """The first pattern that matches any of ``identifiers`` in full."""
    texts = tuple(dict.fromkeys(identifiers))
    for pattern in patterns:
        if any(pattern.fullmatch(text) for text in texts):
            return pattern
    return None


# -- a pack's payee lists, compiled for one asset ------------------------------------

ADMITTED: frozenset[Reason] = frozenset({Reason.PAYEE_ALLOWED, Reason.PAYEE_ALLOWED_BY_PATTERN})


@dataclass(frozen=True, slots=True)
class Finding:
    """Why a payee is refused (or admitted): a reason code, details for the audit
    trail, and the limit that decided."""

    reason: Reason
    detail: str
    limit: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class PayeeLists:
    """The allow and deny lists of a pack as they apply to one asset."""

    case_insensitive: bool
    allow: frozenset[str]  # normalised keys
    deny: frozenset[str]
    allow_patterns: tuple[Pattern, ...]
    deny_patterns: tuple[Pattern, ...]
    allow_skeletons: dict[str, str]  # skeleton -> an allowed key with it
    deny_skeletons: dict[str, str]  # skeleton -> a denied key with it

    @classmethod
    def build(
        cls,
        *,
        allow: Iterable[str],
        deny: Iterable[str],
        allow_patterns: Iterable[str],
        deny_patterns: Iterable[str],
        case_insensitive: bool,
    ) -> PayeeLists:
        """Raises :class:`PatternError` for a pattern RE2 cannot compile."""
        ci = case_insensitive
        allowed = frozenset(normalise(p, case_insensitive=ci) for p in allow)
        denied = frozenset(normalise(p, case_insensitive=ci) for p in deny)
        return cls(
            ci,
            allowed,
            denied,
            tuple(compile_pattern(p, ci) for p in allow_patterns),
            tuple(compile_pattern(p, ci) for p in deny_patterns),
            {skeleton(k): k for k in sorted(allowed, reverse=True)},
            {skeleton(k): k for k in sorted(denied, reverse=True)},
        )

    def canonical(self, text: str, key: str) -> bool:
        ci = self.case_insensitive
        return (
            is_canonical(text, case_insensitive=ci) and normalise(text, case_insensitive=ci) == key
        )

    def denial(self, text: str, key: str) -> Finding | None:
        """Deny entries and patterns catch the payee as written, its normalised key,
        and its look-alikes (unless the pack names the payee exactly in ``allow``)."""
        if key in self.deny:
            return Finding(Reason.PAYEE_DENYLISTED, "the payee is on the denylist")
        pattern = first_match((text, key), self.deny_patterns)
        if pattern is not None:
            return Finding(
                Reason.PAYEE_DENYLISTED,
                f"the payee matches deny pattern {pattern.source!r}",
                pattern.source,
            )
        if key in self.allow and self.canonical(text, key):
            return None  # named exactly: a look-alike match does not override the pack's own name
        twin = self.deny_skeletons.get(skeleton(text))
        if twin is not None:
            return Finding(
                Reason.PAYEE_LOOKS_DENYLISTED, f"the payee looks like the denylisted {twin!r}", twin
            )
        pattern = first_match((prototype(text), prototype(key)), self.deny_patterns)
        if pattern is not None:
            return Finding(
                Reason.PAYEE_LOOKS_DENYLISTED,
                f"the payee looks like a payee deny pattern {pattern.source!r} matches",
                pattern.source,
            )
        return None

    def admission(self, text: str, key: str) -> Finding:
        """``PAYEE_ALLOWED`` or ``PAYEE_ALLOWED_BY_PATTERN`` admit; any other reason refuses.

        Only a canonical spelling is matched; a pattern admits only ASCII payees; a
        look-alike of a named payee is refused even when a pattern would admit it.
        """
        limit = f"{len(self.allow)} payees, {len(self.allow_patterns)} patterns"
        canonical = self.canonical(text, key)
        if canonical and key in self.allow:
            return Finding(Reason.PAYEE_ALLOWED, "", limit)
        if not canonical:
            return Finding(
                Reason.PAYEE_NOT_CANONICAL,
                "the payee changes under normalisation beyond ASCII lower-casing "
                "(compatibility form, long s, ligature, sharp s, decomposed accent …)",
                "canonical spelling",
            )
        # The look-alike check reads the payee as written, not its folded key.
        twin = self.allow_skeletons.get(skeleton(text))
        if twin is not None:
            return Finding(
                Reason.PAYEE_CONFUSABLE,
                f"the payee looks like the allowed payee {twin!r} but is not it",
                twin,
            )
        pattern = first_match((key,), self.allow_patterns)
        if pattern is None:
            return Finding(Reason.PAYEE_NOT_ALLOWED, "the pack does not allow this payee", limit)
        if not (text.isascii() and key.isascii()):
            return Finding(
                Reason.PAYEE_NOT_ASCII,
                f"pattern {pattern.source!r} matches, but patterns admit ASCII payees only",
                "ASCII",
            )
        return Finding(Reason.PAYEE_ALLOWED_BY_PATTERN, "", pattern.source)

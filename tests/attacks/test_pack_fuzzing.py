"""Fuzzing policy packs and payee evaluation (issue 8: "fuzzing of pack files").

Two threats:

- A pack file an operator (or an attacker who can write one) hands to
  ``paywarden policy check`` or to the signer at start-up crashes or hangs the
  loader instead of being refused with a clear error. Generated packs, valid
  and mutated, go through the real loader; the only failure allowed is a
  :class:`PackError` (exit status 1 and "invalid policy pack" from the CLI).
- A payee is paid that a simple reference model of the pack refuses: a
  non-ASCII payee admitted by a pattern, or a look-alike of a denied payee.

Example counts are modest for CI; set ``PAYWARDEN_FUZZ_EXAMPLES`` for a
longer local run.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paywarden.policy import (
    Asset,
    Facts,
    PackError,
    PolicyPack,
    Verdict,
    compile_pack,
    evaluate,
    load_pack,
)
from paywarden.signer.cli import commands

from tests.attacks.kit import signer_facts

EXAMPLES = int(os.environ.get("PAYWARDEN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a hang is caught by the test timeout, not by timing examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ASSETS = {"USD": Asset("USD", 2), "EUR": Asset("EUR", 2, case_insensitive=True)}

# -- writing TOML (tomllib only reads it) ------------------------------------------------


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(type(value))


def to_toml(doc: dict[str, object]) -> str:
    lines = [
        f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)
    ]
    for key, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{toml_string(key)}]")
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# -- generated packs ---------------------------------------------------------------------

# Characters a pack may hold: any scalar value TOML can carry in a UTF-8 file.
_text = st.text(st.characters(codec="utf-8"), max_size=40)  # no lone surrogates


def mostly(
    valid: st.SearchStrategy[object], wild: st.SearchStrategy[object]
) -> st.SearchStrategy[object]:
    """Usually a valid value, now and then a wild one: whole packs are often valid."""
    return st.integers(0, 19).flatmap(lambda n: wild if n == 0 else valid)


_amount = mostly(
    st.from_regex(r"(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?", fullmatch=True),
    st.one_of(st.from_regex(r"-?[0-9]{1,50}(\.[0-9]{0,5})?", fullmatch=True), _text),
)
# Pattern pieces: ordinary ones, ones a backtracking matcher explodes on, and
# constructs RE2 refuses; joined at random, so many are not even regexes.
_PIECES = [
    "[a-z0-9-]+", r"\.", "example", ".*", ".+", "[^.]+", "(", ")", ")*", ")+", "|", "?",
    "([a-z0-9]+-?)*", "(a|aa)*", "(a+)+", r"\1", "(?=x)", "(?!x)", "(?<=x)", "(?>a)", "a++",
    "(?u)", "(?i)", "(?x)", "(?P<n>a)", "{2,5}", "{1000}", "{1001}", "[", "]", "\\", r"\p{Greek}",
    r"\C", r"\w+", r"\d", "^", "$", "\u0430", "\u2010", "ß",
]  # fmt: skip
_GOOD_PATTERNS = [
    r"[a-z0-9-]+\.example", r"([a-z0-9]+-?)*\.evil\.example", "(a|aa)*b", "(a+)+", r"[^.]+\.cdn",
    "bad-.*", r"(?i)shop\..*", ".+",
]  # fmt: skip
_pattern = mostly(
    st.sampled_from(_GOOD_PATTERNS),
    st.one_of(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8).map("".join), _text),
)
_payee_name = mostly(st.from_regex(r"[a-z0-9][a-z0-9.@-]{0,20}", fullmatch=True), _text)


@st.composite
def pack_doc(draw: st.DrawFn) -> dict[str, object]:
    codes = mostly(st.sampled_from(["USD", "EUR"]), st.sampled_from(["XYZ", "usd", ""]))
    assets = draw(st.lists(codes, min_size=1, max_size=2, unique=True))
    doc: dict[str, object] = {
        "id": draw(mostly(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True), _text)),
        "version": draw(mostly(st.integers(1, 1000), st.integers(-1, 2**60))),
        "agents": draw(mostly(st.just(["agent-1"]), st.lists(_text, max_size=3))),
    }
    for code in assets:
        keys = mostly(st.just(["payments.v1"]), st.lists(st.sampled_from(["payments.v2", "Bad"])))
        asset: dict[str, object] = {
            "keys": draw(keys),
            "max_per_payment": draw(_amount),
        }
        if draw(st.booleans()):
            asset["daily_limit"] = draw(_amount)
        if draw(st.booleans()):
            asset["approval_above"] = draw(_amount)
        doc[f"assets.{code}"] = asset
    doc["payees"] = {
        "allow": draw(st.lists(_payee_name, max_size=4)),
        "allow_patterns": draw(st.lists(_pattern, min_size=1, max_size=3)),
        "deny": draw(st.lists(_payee_name, max_size=3)),
        "deny_patterns": draw(st.lists(_pattern, max_size=3)),
        "first_payment": draw(
            mostly(st.sampled_from(["allow", "approve", "deny"]), st.just("maybe"))
        ),
    }
    if draw(st.booleans()):
        start = mostly(st.just("09:00"), st.sampled_from(["24:00", "9:00"]))
        end = mostly(st.just("17:00"), st.sampled_from(["09:00", "xx"]))
        doc["hours"] = {"start": draw(start), "end": draw(end)}
    doc["sessions"] = {
        "max_ttl_seconds": draw(mostly(st.integers(1, 86_400), st.integers(-5, 40 * 86_400))),
        "max_budget": {code: draw(_amount) for code in assets if draw(st.booleans())},
    }
    return doc


def render(doc: dict[str, object]) -> str:
    # "assets.USD" stands for the dotted table [assets.USD]
    top = {k: v for k, v in doc.items() if not k.startswith("assets.")}
    text = to_toml({k: v for k, v in top.items() if not isinstance(v, dict)})
    for key, table in doc.items():
        if isinstance(table, dict):
            header = f"assets.{toml_string(key[7:])}" if key.startswith("assets.") else key
            text += f"[{header}]\n" + "".join(
                f"{toml_string(k)} = {toml_value(v)}\n" for k, v in table.items()
            )
    return text


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = render(draw(pack_doc())).encode("utf-8")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "insert", "duplicate", "flip"]))
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, min(len(data), i + 40)))
        if op == "delete":
            data = data[:i] + data[j:]
        elif op == "insert":
            junk = draw(st.one_of(st.binary(max_size=12), st.sampled_from(
                [b"[", b"]", b"=", b'"', b"\n[payees]\n", b"{", b"\\u0000", b"\xff", b"[[x]]\n",
                 b"a.b.c = 1\n", b"= [[[[[[[[[[", b"\n\n", b"#"]
            )))  # fmt: skip
            data = data[:i] + junk + data[i:]
        elif op == "duplicate":
            data = data[:j] + data[i:j] + data[j:]
        elif data:
            k = min(i, len(data) - 1)
            data = data[:k] + bytes([data[k] ^ draw(st.integers(1, 255))]) + data[k + 1 :]
    return data


def check_with_cli(path: Path) -> tuple[int, str]:
    """``paywarden policy check FILE``, in process, as the command runs it."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = commands.main(["policy", "check", str(path)])
    return code, err.getvalue()


def load_and_compile(path: Path) -> None:
    try:
        pack = load_pack(path)
        policy = compile_pack(pack, ASSETS)
    except PackError as exc:
        assert str(exc).startswith(str(path)), exc  # names the file
        return
    for payee in ["a", "api.cdn.example", "a" * 33 + "!", "\u0430pi", "bad\u2010x"]:
        for asset in ("USD", "EUR"):
            evaluate(policy, facts(payee, asset, ci=ASSETS[asset].case_insensitive))


def _write_temp_pack(data: bytes) -> Path:
    fd, name = tempfile.mkstemp(suffix=".toml")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def _refused_or_loaded(path: Path) -> None:
    """The CLI accepts the pack or refuses it as a pack error, and loading it never
    crashes; the file is removed either way."""
    try:
        code, err = check_with_cli(path)
        assert code in (0, 1), err
        if code == 1:
            assert err.startswith("paywarden: invalid policy pack"), err
        load_and_compile(path)
    finally:
        path.unlink()


@FUZZ
@given(doc=pack_doc())
def test_generated_pack_is_loaded_or_refused_never_crashes(doc: dict[str, object]) -> None:
    text = render(doc)
    tomllib.loads(text)  # the generator writes valid TOML; the pack need not be valid
    path = _write_temp_pack(text.encode("utf-8"))
    _refused_or_loaded(path)


@FUZZ
@given(data=mutated())
def test_mutated_pack_file_is_refused_with_a_pack_error(data: bytes) -> None:
    path = _write_temp_pack(data)
    _refused_or_loaded(path)


# -- payee evaluation against a reference model ------------------------------------------

# The reference's own look-alikes: characters people read as the ASCII one.
UNICODE_SWAPS = {
    "a": ["\u0430", "\u03b1", "\u0251"], "c": ["\u0441", "\u03f2"], "e": ["\u0435", "\u0454"],
    "i": ["\u0456", "\u03b9", "\u0131"], "j": ["\u0458"], "o": ["\u043e", "\u03bf", "\u0585"],
    "p": ["\u0440", "\u03c1"], "s": ["\u0455"], "x": ["\u0445", "\u03c7"], "y": ["\u0443"],
    "d": ["\u0501"], "h": ["\u04bb"], "k": ["\u03ba"], "n": ["\u0578"],
    "-": ["\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2015", "\u2212", "\ufe63", "\uff0d"],
    ".": ["\u2024", "\uff0e"],
}  # fmt: skip
ASCII_SWAPS = {"l": ["1", "I"], "o": ["0"], "m": ["rn"], "i": ["1", "l"]}
WORDS = ["api", "shop", "bad", "evil", "mail", "cdn", "pay", "data", "x", "io"]
TLDS = ["example", "cdn.example", "shop.example"]


@dataclass(frozen=True)
class Case:
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    allow_patterns: tuple[str, ...]
    deny_patterns: tuple[str, ...]
    ci: bool
    base: str  # the ASCII payee before look-alike swaps
    payee: str
    ascii_swapped: bool  # base was changed by ASCII swaps (deny patterns need not see them)


_name = st.builds(
    lambda w1, sep, w2, tld: f"{w1}{sep}{w2}.{tld}",
    st.sampled_from(WORDS), st.sampled_from(["-", "", "."]), st.sampled_from(WORDS),
    st.sampled_from(TLDS),
)  # fmt: skip
_simple_pattern = st.builds(
    lambda form, word, tld: form.format(w=word, t=re.escape(tld)),
    st.sampled_from(["{w}-.*", r".*\.{t}", r"[^.]+\.{t}", r"[a-z0-9-]+\.{t}", "{w}[a-z]*\\..*",
                     r"({w}-)?[a-z]+\.{t}", "(?i){w}.*"]),
    st.sampled_from(WORDS), st.sampled_from(TLDS),
)  # fmt: skip


def _swap(draw: st.DrawFn, text: str, table: dict[str, list[str]]) -> str:
    spots = [i for i, ch in enumerate(text) if ch in table]
    if not spots:
        return text
    chosen = draw(st.sets(st.sampled_from(spots), max_size=3))
    return "".join(
        draw(st.sampled_from(table[ch])) if i in chosen else ch for i, ch in enumerate(text)
    )


@st.composite
def payee_case(draw: st.DrawFn) -> Case:
    allow = tuple(draw(st.lists(_name, max_size=3)))
    deny = tuple(draw(st.lists(_name, max_size=3)))
    allow_patterns = tuple(draw(st.lists(_simple_pattern, min_size=1, max_size=2)))
    deny_patterns = tuple(draw(st.lists(_simple_pattern, max_size=2)))
    ci = draw(st.booleans())
    base = draw(st.one_of(st.sampled_from([*allow, *deny] or ["api.cdn.example"]), _name))
    ascii_swapped = draw(st.booleans())
    payee = _swap(draw, base, ASCII_SWAPS) if ascii_swapped else base
    ascii_swapped = payee != base
    if ci and draw(st.booleans()):
        payee = "".join(ch.upper() if draw(st.booleans()) else ch for ch in payee)
    if draw(st.booleans()):
        payee = _swap(draw, payee, UNICODE_SWAPS)
    return Case(allow, deny, allow_patterns, deny_patterns, ci, base, payee, ascii_swapped)


def reference_denies(case: Case) -> bool:
    """A payee is refused when: it is denied as written; it is a look-alike of a
    denied name (or, by Unicode look-alikes only, of a name a deny pattern
    matches) and not itself named in allow; or it is not ASCII and not named."""
    flags = re.IGNORECASE if case.ci else 0
    fold = str.lower if case.ci else str
    payee = unicodedata.normalize("NFC", case.payee)
    deny_names = {fold(d) for d in case.deny}
    if fold(payee) in deny_names or any(re.fullmatch(p, payee, flags) for p in case.deny_patterns):
        return True
    named = payee.isascii() and fold(payee) in {fold(a) for a in case.allow}
    if named:
        return False
    lookalike = payee != case.base
    if lookalike and fold(case.base) in deny_names:
        return True
    if (
        lookalike
        and not case.ascii_swapped
        and any(re.fullmatch(p, case.base, flags) for p in case.deny_patterns)
    ):
        return True
    return not payee.isascii()


def facts(payee: str, asset: str, *, ci: bool) -> Facts:
    """As signer/core/facts.py builds them: the key, and the payee as written."""
    return signer_facts(unicodedata.normalize("NFC", payee), asset, case_insensitive=ci)


def compiled_case(case: Case) -> tuple[object, str]:
    asset = "EUR" if case.ci else "USD"
    doc = {
        "id": "fuzz",
        "version": 1,
        "agents": ["agent-1"],
        "assets": {asset: {"keys": ["payments.v1"], "max_per_payment": "10.00"}},
        "payees": {
            "allow": list(case.allow),
            "allow_patterns": list(case.allow_patterns),
            "deny": list(case.deny),
            "deny_patterns": list(case.deny_patterns),
            "first_payment": "allow",
        },
        "sessions": {"max_ttl_seconds": 3600},
    }
    from paywarden.policy.packs import PolicyPackModel

    pack = PolicyPack(PolicyPackModel.model_validate(doc), "0" * 64, "fuzz")
    return compile_pack(pack, ASSETS), asset


@FUZZ
@given(case=payee_case())
def test_nothing_is_paid_that_the_reference_model_refuses(case: Case) -> None:
    policy, asset = compiled_case(case)
    decision = evaluate(policy, facts(case.payee, asset, ci=case.ci))  # type: ignore[arg-type]
    if decision.verdict is Verdict.ALLOW:
        assert not reference_denies(case), (case, decision.trace_json())


@st.composite
def denied_lookalike(draw: st.DrawFn) -> Case:
    """A Unicode look-alike of a payee the pack denies, by name or by pattern."""
    case = draw(payee_case())
    by_name = draw(st.booleans())
    base = draw(_name)
    deny = (*case.deny, base) if by_name else case.deny
    deny_patterns = case.deny_patterns if by_name else (*case.deny_patterns, re.escape(base))
    payee = base
    if case.ci:
        payee = "".join(ch.upper() if draw(st.booleans()) else ch for ch in payee)
    spots = [i for i, ch in enumerate(payee.lower()) if ch in UNICODE_SWAPS]
    chosen = draw(st.sets(st.sampled_from(spots), min_size=1, max_size=3))
    payee = "".join(
        draw(st.sampled_from(UNICODE_SWAPS[ch.lower()])) if i in chosen else ch
        for i, ch in enumerate(payee)
    )
    return Case(case.allow, deny, case.allow_patterns, deny_patterns, case.ci, base, payee, False)


@FUZZ
@given(case=denied_lookalike())
def test_unicode_lookalike_of_a_denied_payee_is_caught_by_the_denylist(case: Case) -> None:
    """The denylist rule itself refuses it (not only the ASCII-only rule for patterns)."""
    assert reference_denies(case)
    policy, asset = compiled_case(case)
    decision = evaluate(policy, facts(case.payee, asset, ci=case.ci))  # type: ignore[arg-type]
    denylist = next(r for r in decision.trace if r.rule == "payee_denylist")
    assert denylist.reason in {"PAYEE_DENYLISTED", "PAYEE_LOOKS_DENYLISTED"}, (
        case,
        decision.trace_json(),
    )
    assert decision.verdict is Verdict.DENY

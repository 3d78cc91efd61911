"""Strict validation of every field an agent or planner sends.

Each rejection asserts the exact exception class and its reason code, so a
change that rejects for the wrong reason (or with a generic error) fails.
"""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from typing import Any

import pytest
from paywarden.policy.vocabulary import Asset
from paywarden.signer.config import AssetConfig
from paywarden.signer.core.payments import IntentFields, check_expiry, validate_intent
from paywarden.signer.core.session_input import (
    new_session_id,
    parse_session_id,
    validate_session_request,
)
from paywarden.signer.core.validation import Amount, clean_text, parse_amount, parse_nonce
from paywarden.signer.errors import InvalidInput, Reason

MAX = "1000000000"


def _asset(decimals: int, max_amount: str) -> Asset:
    return Asset("X", decimals, max_amount=max_amount)


def _reject(reason: Reason, fn: Any, *args: Any, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    assert type(info.value) is InvalidInput
    assert info.value.reason is reason
    return info.value


# -- amounts ---------------------------------------------------------------------

# Every spelling other than plain ASCII digits with at most one inner dot.
MALFORMED_AMOUNTS = ["-1", "+1", "1e3", "1E3", " 1", "1 ", "1\n", "\n1", "1\t", "1\u00a0"]
MALFORMED_AMOUNTS += ["NaN", "nan", "Infinity", "inf", "-inf", "0x10", "1,00", "1.", ".5"]
MALFORMED_AMOUNTS += ["01", "00", "00.5", "1.2.3", "1_000", "one"]
MALFORMED_AMOUNTS += ["\uff11", "\u0661"]  # fullwidth one, Arabic-Indic one


@pytest.mark.parametrize("text", MALFORMED_AMOUNTS)
def test_amount_malformed(text: str) -> None:
    err = _reject(Reason.AMOUNT_MALFORMED, parse_amount, "amount", text, _asset(2, MAX))
    assert "amount" in err.message


def test_amount_empty_is_missing() -> None:
    _reject(Reason.FIELD_MISSING, parse_amount, "amount", "", _asset(2, MAX))


@pytest.mark.parametrize(("text", "decimals"), [("0", 2), ("0.00", 2), ("0", 0), ("0.0", 8)])
def test_amount_zero_is_not_positive(text: str, decimals: int) -> None:
    _reject(Reason.AMOUNT_NOT_POSITIVE, parse_amount, "amount", text, _asset(decimals, MAX))


@pytest.mark.parametrize(
    ("text", "decimals"),
    [("1.001", 2), ("1.5", 0), ("1.0", 0), ("0.000000001", 8), ("12.500", 2)],
)
def test_amount_too_precise_is_never_rounded(text: str, decimals: int) -> None:
    _reject(Reason.AMOUNT_TOO_PRECISE, parse_amount, "amount", text, _asset(decimals, MAX))


@pytest.mark.parametrize(
    ("text", "decimals", "max_amount"),
    [
        ("1000000000.01", 2, MAX),
        ("1000000001", 2, MAX),
        ("100.01", 2, "100"),
        ("21.00000001", 8, "21"),
        ("6", 0, "5"),
        ("9" * 31, 2, MAX),
        ("1" + "0" * 40, 0, "1" + "0" * 45),  # the 30-digit cap holds whatever the limit
    ],
)
def test_amount_too_large(text: str, decimals: int, max_amount: str) -> None:
    _reject(Reason.AMOUNT_TOO_LARGE, parse_amount, "amount", text, _asset(decimals, max_amount))


@pytest.mark.parametrize(
    ("text", "decimals", "max_amount", "minor", "canonical"),
    [
        ("12.5", 2, MAX, 1250, "12.50"),
        ("12.50", 2, MAX, 1250, "12.50"),
        ("0.01", 2, MAX, 1, "0.01"),
        ("0.00000001", 8, "21", 1, "0.00000001"),
        ("21", 8, "21", 2_100_000_000, "21.00000000"),
        ("7", 0, MAX, 7, "7"),
        ("100", 2, "100", 10_000, "100.00"),
        ("1000000000", 2, MAX, 100_000_000_000, "1000000000.00"),
    ],
)
def test_amount_valid(
    text: str, decimals: int, max_amount: str, minor: int, canonical: str
) -> None:
    amount = parse_amount("amount", text, _asset(decimals, max_amount))
    assert amount == Amount(minor, decimals)
    assert amount.minor == minor
    assert str(amount) == canonical


# -- strings ---------------------------------------------------------------------


def test_clean_text_applies_nfc() -> None:
    assert clean_text("payee", "Caf" + "e\u0301", max_len=10) == "Caf\u00e9"
    assert clean_text("payee", "\u212b", max_len=10) == "\u00c5"  # ANGSTROM SIGN


def test_clean_text_length_counts_after_normalisation() -> None:
    # 4 code points that NFC composes to 2: within a limit of 2.
    assert clean_text("payee", "e\u0301e\u0301", max_len=2) == "\u00e9\u00e9"


@pytest.mark.parametrize("limit", [1, 8, 256])
def test_clean_text_length_bound(limit: int) -> None:
    assert clean_text("payee", "x" * limit, max_len=limit) == "x" * limit
    _reject(Reason.STRING_TOO_LONG, clean_text, "payee", "x" * (limit + 1), max_len=limit)


# C0/C1 controls and DEL; zero-width space and joiner, RTL override, LTR isolate, BOM;
# private use; a language tag.
FORBIDDEN = ["\x00", "\x07", "\x1b", "\x7f", "\u0085", "\u009b", "\u200b", "\u200d"]
FORBIDDEN += ["\u202e", "\u2066", "\ufeff", "\ue000", "\U000e0001", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", FORBIDDEN)
@pytest.mark.parametrize("position", ["start", "middle", "end"])
def test_clean_text_refuses_control_and_format_chars(char: str, position: str) -> None:
    text = {"start": char + "abc", "middle": "ab" + char + "c", "end": "abc" + char}[position]
    _reject(Reason.STRING_CONTROL_CHAR, clean_text, "payee", text, max_len=64)


@pytest.mark.parametrize("char", ["\n", "\t"])
def test_clean_text_newlines_only_where_allowed(char: str) -> None:
    _reject(Reason.STRING_CONTROL_CHAR, clean_text, "payee", f"a{char}b", max_len=64)
    assert clean_text("purpose", f"a{char}b", max_len=64, allow_newlines=True) == f"a{char}b"


def test_clean_text_carriage_return_refused_even_in_free_text() -> None:
    _reject(Reason.STRING_CONTROL_CHAR, clean_text, "p", "a\rb", max_len=9, allow_newlines=True)


@pytest.mark.parametrize("text", [" a", "a ", "\u00a0a", "a\u3000", "  ", "\u2003x\u2003"])
def test_clean_text_refuses_surrounding_whitespace(text: str) -> None:
    _reject(Reason.STRING_INVALID, clean_text, "payee", text, max_len=64)


def test_clean_text_trailing_newline_refused_even_when_newlines_allowed() -> None:
    _reject(Reason.STRING_INVALID, clean_text, "purpose", "text\n", max_len=64, allow_newlines=True)


def test_clean_text_required_and_optional() -> None:
    _reject(Reason.FIELD_MISSING, clean_text, "payee", "", max_len=64)
    assert clean_text("purpose", "", max_len=64, required=False) == ""
    assert clean_text("payee", "ACME Corp \u00d6", max_len=64) == "ACME Corp \u00d6"


# -- nonces ----------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@pytest.mark.parametrize("size", [16, 17, 32, 63, 64])
def test_nonce_accepted_sizes(size: int) -> None:
    text = _b64(bytes(range(size)))
    assert parse_nonce(text) == text


@pytest.mark.parametrize("size", [1, 15, 65, 128])
def test_nonce_wrong_size(size: int) -> None:
    _reject(Reason.NONCE_MALFORMED, parse_nonce, _b64(b"\xfb" * size))


NONCE16 = _b64(bytes(range(16)))  # 22 characters, the last one carries 4 padding bits
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _set_padding_bit(text: str) -> str:
    """The same bytes spelt with a non-zero unused bit in the last character."""
    return text[:-1] + _ALPHABET[_ALPHABET.index(text[-1]) | 1]


@pytest.mark.parametrize(
    "text",
    [
        NONCE16 + "==",
        base64.urlsafe_b64encode(bytes(range(16))).decode("ascii"),
        NONCE16[:-1] + "=",
        "+" + NONCE16[1:],
        NONCE16[:-1] + "/",
        base64.b64encode(b"\xfb\xff" * 8).decode("ascii").rstrip("="),  # standard alphabet
        NONCE16 + "\n",
        " " + NONCE16,
        NONCE16[:10] + "." + NONCE16[11:],
        NONCE16 + "AAA",  # 25 characters: length % 4 == 1 can never be base64
        _set_padding_bit(NONCE16),  # a second spelling of the same 16 bytes
        _set_padding_bit(_b64(bytes(range(32)))),  # 32 bytes: 2 unused bits
        _set_padding_bit(_b64(bytes(range(64)))),
        "A" * 21,
    ],
)
def test_nonce_malformed(text: str) -> None:
    _reject(Reason.NONCE_MALFORMED, parse_nonce, text)


def test_nonce_trailing_bits_variant_decodes_to_same_bytes() -> None:
    # Guards the non-canonical vector above: both spellings decode to one nonce.
    for size in (16, 32, 64):
        text = _b64(bytes(range(size)))
        variant = _set_padding_bit(text)
        assert variant != text
        pad = "=" * (-len(text) % 4)
        assert base64.urlsafe_b64decode(variant + pad) == bytes(range(size))


def test_nonce_empty_is_missing() -> None:
    _reject(Reason.FIELD_MISSING, parse_nonce, "")


# -- expiry ----------------------------------------------------------------------

NOW = 1_700_000_000
MAX_AHEAD = 300
SESSION_END = NOW + 3_600


@pytest.mark.parametrize(
    ("expires_at", "session_end", "reason"),
    [
        (NOW - 1, SESSION_END, Reason.EXPIRY_IN_PAST),
        (NOW, SESSION_END, Reason.EXPIRY_IN_PAST),
        (0, SESSION_END, Reason.EXPIRY_IN_PAST),
        (NOW + MAX_AHEAD + 1, SESSION_END, Reason.EXPIRY_TOO_FAR),
        (NOW + 10**9, SESSION_END, Reason.EXPIRY_TOO_FAR),
        (NOW + 61, NOW + 60, Reason.EXPIRY_AFTER_SESSION),
        (NOW + MAX_AHEAD, NOW + MAX_AHEAD - 1, Reason.EXPIRY_AFTER_SESSION),
    ],
)
def test_expiry_rejected(expires_at: int, session_end: int, reason: Reason) -> None:
    _reject(reason, check_expiry, expires_at, NOW, MAX_AHEAD, session_end)


@pytest.mark.parametrize(
    ("expires_at", "session_end"),
    [(NOW + 1, SESSION_END), (NOW + MAX_AHEAD, SESSION_END), (NOW + 60, NOW + 60)],
)
def test_expiry_accepted(expires_at: int, session_end: int) -> None:
    check_expiry(expires_at, NOW, MAX_AHEAD, session_end)  # accepted: it does not raise


# -- intents ---------------------------------------------------------------------

ASSETS = {
    "USD": AssetConfig(decimals=2).asset("USD"),
    "BTC": AssetConfig(decimals=8, max_amount="21").asset("BTC"),
}
KEYS = {"payments.v1", "payments.v2"}
GOOD = IntentFields(
    session_id=new_session_id(),
    key_id="payments.v1",
    payee="ACME Caf\u00e9",
    amount="12.5",
    asset="USD",
    reference="inv-1",
    purpose="",
    nonce=NONCE16,
    expires_at=NOW + 60,
)


def test_intent_valid_is_normalised() -> None:
    intent = validate_intent(replace(GOOD, payee="ACME Cafe\u0301"), ASSETS, KEYS)
    assert intent.payee == "ACME Caf\u00e9"
    assert intent.amount == Amount(1250, 2)
    assert (intent.session_id, intent.key_id) == (GOOD.session_id, "payments.v1")
    assert intent.asset == "USD"
    assert (intent.nonce, intent.expires_at, intent.purpose) == (NONCE16, NOW + 60, "")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"asset": "GBP"}, Reason.UNKNOWN_ASSET),
        ({"asset": "usd"}, Reason.UNKNOWN_ASSET),
        ({"asset": ""}, Reason.FIELD_MISSING),
        ({"key_id": "payments.v3"}, Reason.UNKNOWN_KEY),
        ({"key_id": "PAYMENTS.v1"}, Reason.UNKNOWN_KEY),
        ({"key_id": ""}, Reason.FIELD_MISSING),
        ({"session_id": "ses_short"}, Reason.SESSION_ID_MALFORMED),
        ({"session_id": ""}, Reason.FIELD_MISSING),
        ({"amount": "1e3"}, Reason.AMOUNT_MALFORMED),
        ({"amount": "0.001", "asset": "USD"}, Reason.AMOUNT_TOO_PRECISE),
        ({"amount": "22", "asset": "BTC"}, Reason.AMOUNT_TOO_LARGE),
        ({"payee": ""}, Reason.FIELD_MISSING),
        ({"payee": "ACME\u202eroC"}, Reason.STRING_CONTROL_CHAR),
        ({"payee": "p" * 257}, Reason.STRING_TOO_LONG),
        ({"reference": ""}, Reason.FIELD_MISSING),
        ({"reference": "r" * 129}, Reason.STRING_TOO_LONG),
        ({"purpose": "x" * 1025}, Reason.STRING_TOO_LONG),
        ({"purpose": "a\x1b[2Jb"}, Reason.STRING_CONTROL_CHAR),
        ({"nonce": NONCE16 + "=="}, Reason.NONCE_MALFORMED),
        ({"nonce": ""}, Reason.FIELD_MISSING),
        ({"expires_at": 0}, Reason.FIELD_MISSING),
        ({"expires_at": -5}, Reason.EXPIRY_IN_PAST),
        ({"expires_at": 2**53}, Reason.EXPIRY_TOO_FAR),
        ({"expires_at": 2**63 - 1}, Reason.EXPIRY_TOO_FAR),
    ],
)
def test_intent_rejected(change: dict[str, Any], reason: Reason) -> None:
    _reject(reason, validate_intent, replace(GOOD, **change), ASSETS, KEYS)


# -- session ids -------------------------------------------------------------------

_SID = re.compile(r"\Ases_[A-Za-z0-9_-]{43}\Z")


def test_new_session_ids_unique_and_carry_256_bits() -> None:
    ids = [new_session_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for sid in ids[:500]:
        assert _SID.match(sid), sid
        raw = base64.urlsafe_b64decode(sid[4:] + "=")
        assert len(raw) >= 16  # at least 128 bits
        assert len(raw) == 32
        assert parse_session_id(sid) == sid
    # The random part is not constant: every position varies across draws.
    for pos in range(4, 4 + 42):
        assert len({sid[pos] for sid in ids}) > 1


GOOD_SID = "ses_" + "Ab9-_" * 8 + "xyz"  # well-formed (43 characters after the prefix)


@pytest.mark.parametrize(
    "text",
    [
        *["ses_", "ses_" + "A" * 42, "ses_" + "A" * 44, "SES_" + "A" * 43, "ses-" + "A" * 43],
        *["dec_" + "A" * 43, "A" * 47, " " + GOOD_SID, GOOD_SID + " ", GOOD_SID + "\n"],
        *["ses_" + "A" * 42 + c for c in "=+/."],
        "ses_" + "\uff21" * 43,  # fullwidth letters
    ],
)
def test_session_id_malformed(text: str) -> None:
    _reject(Reason.SESSION_ID_MALFORMED, parse_session_id, text)


def test_session_id_empty_is_missing() -> None:
    _reject(Reason.FIELD_MISSING, parse_session_id, "")


# -- session requests ----------------------------------------------------------------


def _open(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "agent_id": "agent-7",
        "task_description": "Buy the\ncheapest flight",
        "budgets": [("USD", "100"), ("BTC", "0.5")],
        "ttl_seconds": 600,
        "allowed_payees": ["zeta air", "Alpha Air", "zeta air"],
    }
    args.update(overrides)
    return validate_session_request(**args, assets=ASSETS, max_ttl=3_600)


def test_session_request_valid() -> None:
    spec = _open()
    assert spec.agent_id == "agent-7"
    assert spec.task_description == "Buy the\ncheapest flight"
    assert spec.budgets_minor == {"USD": 10_000, "BTC": 50_000_000}
    assert spec.ttl_seconds == 600
    assert spec.allowed_payees == ("Alpha Air", "zeta air")
    assert _open(ttl_seconds=1).ttl_seconds == 1
    assert _open(ttl_seconds=3_600).ttl_seconds == 3_600


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"budgets": []}, Reason.BUDGET_INVALID),
        ({"budgets": [("USD", "1"), ("USD", "2")]}, Reason.BUDGET_INVALID),
        ({"budgets": [("GBP", "1")]}, Reason.UNKNOWN_ASSET),
        ({"budgets": [("USD", "0")]}, Reason.AMOUNT_NOT_POSITIVE),
        ({"budgets": [("USD", "-5")]}, Reason.AMOUNT_MALFORMED),
        ({"budgets": [("BTC", "22")]}, Reason.AMOUNT_TOO_LARGE),
        ({"ttl_seconds": 0}, Reason.TTL_INVALID),
        ({"ttl_seconds": -1}, Reason.TTL_INVALID),
        ({"ttl_seconds": 3_601}, Reason.TTL_INVALID),
        ({"agent_id": ""}, Reason.FIELD_MISSING),
        ({"agent_id": "-agent"}, Reason.STRING_INVALID),
        ({"agent_id": "agent 7"}, Reason.STRING_INVALID),
        ({"agent_id": "agent/7"}, Reason.STRING_INVALID),
        ({"agent_id": "a" * 129}, Reason.STRING_INVALID),
        ({"agent_id": "agent-\u00e9"}, Reason.STRING_INVALID),
        ({"agent_id": "agent-7\n"}, Reason.STRING_INVALID),
        ({"task_description": ""}, Reason.FIELD_MISSING),
        ({"task_description": "x" * 4097}, Reason.STRING_TOO_LONG),
        ({"allowed_payees": ["ok", "bad\u200b"]}, Reason.STRING_CONTROL_CHAR),
        ({"allowed_payees": [""]}, Reason.FIELD_MISSING),
        ({"allowed_payees": [f"p{i}" for i in range(257)]}, Reason.STRING_INVALID),
    ],
)
def test_session_request_rejected(change: dict[str, Any], reason: Reason) -> None:
    _reject(reason, _open, **change)

"""The shared vocabulary: its values are what audit records and the wire carry, and
amounts are parsed and formatted in one place."""

from __future__ import annotations

import ast
from enum import Enum
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paywarden.policy import vocabulary
from paywarden.policy.vocabulary import (
    ALLOWING,
    ASKING_APPROVAL,
    Amount,
    AmountError,
    ApprovalStatus,
    Asset,
    Direction,
    FirstPaymentMode,
    FreezeScope,
    FreezeSource,
    Outcome,
    Phase,
    Reason,
    ReloadState,
    ReservationStatus,
    SessionState,
    SignStatus,
    Verdict,
    Vote,
    format_amount,
    is_plain_decimal,
    parse_amount,
)

ROOT = Path(__file__).resolve().parent.parent


def test_every_reason_code_is_its_own_name() -> None:
    assert all(r.value == r.name for r in Reason)


def test_allowing_and_approval_codes_are_apart() -> None:
    assert not ALLOWING & ASKING_APPROVAL


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (Outcome, ["allow", "deny", "approve"]),
        (Verdict, ["allow", "deny", "pending"]),
        (Phase, ["normal", "explore", "execute"]),
        (SessionState, ["open", "closed", "expired"]),
        (ApprovalStatus, ["pending", "approved", "denied", "expired"]),
        (Vote, ["approve", "deny"]),
        (ReservationStatus, ["spent", "held", "released"]),
        (FreezeScope, ["global", "agent", "session", "key"]),
        (FreezeSource, ["operator", "breaker"]),
        (SignStatus, ["signed", "pending_approval"]),
        (FirstPaymentMode, ["allow", "approve", "deny"]),
        (Direction, ["widens", "narrows", "neutral"]),
        (ReloadState, ["applied", "unchanged", "pending", "rejected", "expired", "superseded"]),
    ],
)
def test_state_values_are_what_the_store_holds(enum: type[Enum], values: list[str]) -> None:
    # The store's CHECK constraints and every audit record spell them so.
    assert [m.value for m in enum] == values


def test_the_vocabulary_imports_nothing_of_paywarden() -> None:
    tree = ast.parse((ROOT / "policy" / "vocabulary.py").read_text(encoding="utf-8"))
    imported = {
        n.module if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"__future__", "re", "dataclasses", "enum"}, imported
    assert vocabulary.__name__ == "paywarden.policy.vocabulary"


@pytest.mark.parametrize(
    ("text", "decimals", "minor", "shown"),
    [
        ("12.5", 2, 1250, "12.50"),
        ("0", 2, 0, "0.00"),
        ("0.01", 2, 1, "0.01"),
        ("7", 0, 7, "7"),
        ("21", 8, 2_100_000_000, "21.00000000"),
    ],
)
def test_parse_then_format(text: str, decimals: int, minor: int, shown: str) -> None:
    amount = parse_amount(text, decimals)
    assert amount == Amount(minor, decimals)
    assert str(amount) == format_amount(minor, decimals) == shown


@pytest.mark.parametrize(
    ("text", "decimals", "reason"),
    [
        ("", 2, Reason.AMOUNT_MALFORMED),
        ("-1", 2, Reason.AMOUNT_MALFORMED),
        ("01", 2, Reason.AMOUNT_MALFORMED),
        ("1.", 2, Reason.AMOUNT_MALFORMED),
        ("1e3", 2, Reason.AMOUNT_MALFORMED),
        (" 1", 2, Reason.AMOUNT_MALFORMED),
        ("\u0661", 0, Reason.AMOUNT_MALFORMED),  # ARABIC-INDIC DIGIT ONE
        ("1.005", 2, Reason.AMOUNT_TOO_PRECISE),
        ("1.5", 0, Reason.AMOUNT_TOO_PRECISE),
    ],
)
def test_parse_refuses(text: str, decimals: int, reason: Reason) -> None:
    with pytest.raises(AmountError) as info:
        parse_amount(text, decimals)
    assert info.value.reason is reason
    assert not is_plain_decimal(text) or reason is Reason.AMOUNT_TOO_PRECISE


def test_max_digits_bounds_the_whole_part() -> None:
    assert parse_amount("9" * 30, 2, max_digits=30).minor == int("9" * 30) * 100
    with pytest.raises(AmountError) as info:
        parse_amount("9" * 31, 2, max_digits=30)
    assert info.value.reason is Reason.AMOUNT_TOO_LARGE


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=18))
def test_format_then_parse_round_trips(minor: int, decimals: int) -> None:
    assert parse_amount(format_amount(minor, decimals), decimals) == Amount(minor, decimals)


def test_asset_parses_its_maximum_once() -> None:
    asset = Asset("BTC", 8, max_amount="21")
    assert asset.max_amount_minor == 21 * 10**8
    assert Asset("USD", 2).max_amount_minor is None
    with pytest.raises(AmountError):
        Asset("USD", 2, max_amount="1.001")

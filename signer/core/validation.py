"""Strict validation of payment fields: amounts, strings and nonces.

The payload built from them is RFC 8785 (JCS) JSON (:mod:`paywarden.signer.encoding`).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from paywarden.policy import vocabulary
from paywarden.policy.vocabulary import Amount as Amount
from paywarden.policy.vocabulary import AmountError, Asset
from paywarden.signer.encoding import b64url
from paywarden.signer.errors import InvalidInput, Reason

_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
MIN_NONCE_BYTES = 16
MAX_NONCE_BYTES = 64


# -- amounts -----------------------------------------------------------------

MAX_WHOLE_DIGITS = 30  # digits before the dot an amount in a request may have


def parse_amount(field: str, text: str, asset: Asset) -> Amount:
    """A request's amount of ``asset`` (:func:`paywarden.policy.vocabulary.parse_amount`),
    positive and at most the asset's maximum; refusals are :class:`InvalidInput` with an
    ``AMOUNT_*`` reason naming ``field``.

    Rejected: empty, sign, exponent, whitespace, NaN/Infinity, leading zeros
    ("01"), a dot without digits on both sides, more decimals than the asset
    has, zero, and anything above the asset's ``max_amount``.
    """
    if not text:
        raise InvalidInput(Reason.FIELD_MISSING, f"{field} is required")
    decimals = asset.decimals
    try:
        amount = vocabulary.parse_amount(text, decimals, max_digits=MAX_WHOLE_DIGITS)
    except AmountError as exc:
        raise InvalidInput(exc.reason, _amount_refusal(field, text, decimals, exc)) from None
    if amount.minor <= 0:
        raise InvalidInput(Reason.AMOUNT_NOT_POSITIVE, f"{field} must be greater than zero")
    if asset.max_amount_minor is not None and amount.minor > asset.max_amount_minor:
        raise InvalidInput(
            Reason.AMOUNT_TOO_LARGE, f"{field} exceeds the asset's maximum of {asset.max_amount}"
        )
    return amount


def _amount_refusal(field: str, text: str, decimals: int, exc: AmountError) -> str:
    if exc.reason == Reason.AMOUNT_TOO_PRECISE:
        given = len(text.partition(".")[2])
        return f"{field} has {given} decimals; the asset allows {decimals}"
    if exc.reason == Reason.AMOUNT_TOO_LARGE:
        return f"{field} is too large"
    return (
        f"{field} must be a plain decimal like 12.50 (digits, at most one dot; "
        "no sign, exponent or whitespace)"
    )


# -- strings -----------------------------------------------------------------


def _is_forbidden_char(ch: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cf: format characters (bidi overrides,
    # zero-width joiners) that make two identifiers look alike; Cs/Co/Cn:
    # surrogates, private use and unassigned code points.
    # Zl/Zp: line and paragraph separators would break what a human reads.
    return unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def clean_text(
    field: str, text: str, *, max_len: int, required: bool = True, allow_newlines: bool = False
) -> str:
    """NFC-normalises and bounds a string; refuses controls and format characters."""
    if not text:
        if required:
            raise InvalidInput(Reason.FIELD_MISSING, f"{field} is required")
        return ""
    normalised = unicodedata.normalize("NFC", text)
    for ch in normalised:
        if allow_newlines and ch in "\n\t":
            continue
        if _is_forbidden_char(ch):
            raise InvalidInput(
                Reason.STRING_CONTROL_CHAR,
                f"{field} contains a control or format character (U+{ord(ch):04X})",
            )
    if normalised != normalised.strip():
        raise InvalidInput(Reason.STRING_INVALID, f"{field} has leading or trailing whitespace")
    if len(normalised) > max_len:
        raise InvalidInput(Reason.STRING_TOO_LONG, f"{field} is longer than {max_len} characters")
    return normalised


def parse_nonce(text: str) -> str:
    """16 to 64 bytes as base64url without padding; returns the canonical text."""
    if not text:
        raise InvalidInput(Reason.FIELD_MISSING, "nonce is required")
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidInput(Reason.NONCE_MALFORMED, "nonce must be base64url without padding")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidInput(Reason.NONCE_MALFORMED, "nonce is not valid base64url") from None
    if not MIN_NONCE_BYTES <= len(raw) <= MAX_NONCE_BYTES:
        raise InvalidInput(
            Reason.NONCE_MALFORMED,
            f"nonce must decode to {MIN_NONCE_BYTES} to {MAX_NONCE_BYTES} bytes, not {len(raw)}",
        )
    canonical = b64url(raw)
    if canonical != text:
        # non-zero padding bits: two spellings of one nonce would defeat the guard
        raise InvalidInput(Reason.NONCE_MALFORMED, "nonce is not in canonical base64url form")
    return canonical

"""The RFC 8785 encoder (`jcs`) against an independent implementation (`rfc8785`):
random values here, fixed vectors in tests/vectors/jcs.json (tests/test_vectors.py).

Also checks that the payload and JWS header the signer builds from a validated
intent are already in canonical form, so a verifier that re-canonicalises the
decoded JSON gets exactly the bytes that were signed.
"""

from __future__ import annotations

import base64
import enum
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from paywarden.signer.config import AssetConfig
from paywarden.signer.core.payments import (
    PAYLOAD_TYPE,
    IntentFields,
    claims,
    jws_compact,
    jws_signing_input,
    validate_intent,
)
from paywarden.signer.core.session_input import new_decision_id, new_session_id
from paywarden.signer.encoding import jcs

from tests.helpers import b64url_decode

MAX_SAFE = 2**53 - 1

# Any Unicode text except lone surrogates (which cannot be encoded as UTF-8).
_text = st.text(alphabet=st.characters(codec="utf-8"))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-MAX_SAFE, max_value=MAX_SAFE),
    _text,
)
_json = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(_text, children, max_size=6),
    ),
    max_leaves=40,
)


# -- property: same bytes as the reference implementation -----------------------


@settings(max_examples=400, deadline=None)
@given(_json)
def test_jcs_matches_rfc8785(value: Any) -> None:
    assert jcs(value) == rfc8785.dumps(value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_text, _scalars, min_size=2, max_size=12))
def test_jcs_object_keys_match_rfc8785_order(value: dict[str, Any]) -> None:
    out = jcs(value)
    assert out == rfc8785.dumps(value)
    # Canonical output is a fixed point: parse and re-encode gives the same bytes.
    assert jcs(json.loads(out)) == out


# -- fixed vectors -----------------------------------------------------------------

# RFC 8785 section 3.2.3: keys sort by UTF-16 code units, not by code points.
RFC_SORT_VECTOR = {
    "\u20ac": "Euro Sign",
    "\r": "Carriage Return",
    "\ufb33": "Hebrew Letter Dalet With Dagesh",
    "1": "One",
    "\U0001f600": "Emoji: Grinning Face",
    "\u0080": "Control",
    "\u00f6": "Latin Small Letter O With Diaeresis",
    "a": "Letter a",
}
RFC_SORT_ORDER = ["\r", "1", "a", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_utf16_key_order_vector_differs_from_code_point_order() -> None:
    # The vector is only useful if code-point order would give a different answer.
    assert sorted(RFC_SORT_VECTOR) != RFC_SORT_ORDER


def test_jcs_sorts_keys_by_utf16_code_units() -> None:
    out = jcs(RFC_SORT_VECTOR)  # rfc8785's bytes for it: tests/vectors/jcs.json
    assert list(json.loads(out)) == RFC_SORT_ORDER
    expected = (
        "{"
        + ",".join(
            json.dumps(k, ensure_ascii=False) + ":" + json.dumps(RFC_SORT_VECTOR[k])
            for k in RFC_SORT_ORDER
        )
        + "}"
    )
    assert out == expected.encode("utf-8")


def test_jcs_sorts_nested_object_keys() -> None:
    value: dict[str, Any] = {"b": {"\U0001f600": 1, "\ufb33": 2}, "a": [{"z": None, "y": True}]}
    out = jcs(value)  # rfc8785's bytes for it: tests/vectors/jcs.json
    assert out == '{"a":[{"y":true,"z":null}],"b":{"\U0001f600":1,"\ufb33":2}}'.encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # C0 controls: the five short escapes, the rest as lowercase \u00XX.
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
        ("\b\t\n\x0b\f\r", '"\\b\\t\\n\\u000b\\f\\r"'),
        # DEL and C1 controls are not escaped by JCS.
        ("\x7f\x85", '"\x7f\x85"'),
        # Only quote and backslash are escaped among printable ASCII; "/" is not.
        ('q"b\\s/', '"q\\"b\\\\s/"'),
        # Non-ASCII is written as raw UTF-8, never as \u escapes.
        ("\u00e9\u20ac\U0001f600", '"\u00e9\u20ac\U0001f600"'),
        ("\u2028\u2029", '"\u2028\u2029"'),
        ("e\u0301", '"e\u0301"'),  # no normalisation inside the encoder
    ],
)
def test_jcs_string_escaping(value: str, expected: str) -> None:
    assert jcs(value) == expected.encode("utf-8")  # and rfc8785's: tests/vectors/jcs.json


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (0, b"0"),
        (-1, b"-1"),
        (MAX_SAFE, b"9007199254740991"),
        (-MAX_SAFE, b"-9007199254740991"),
        ([], b"[]"),
        ({}, b"{}"),
        ([1, "a", None, [True]], b'[1,"a",null,[true]]'),
        ({"k": [False, {}]}, b'{"k":[false,{}]}'),
    ],
)
def test_jcs_scalars_and_containers(value: Any, expected: bytes) -> None:
    assert jcs(value) == expected  # and rfc8785's: tests/vectors/jcs.json


@pytest.mark.parametrize(
    "value",
    [
        2**53,
        -(2**53),
        2**64,
        -(2**64),
        [2**53],
        {"n": -(2**53)},
        {"outer": [{"inner": 2**63}]},
    ],
)
def test_jcs_rejects_unsafe_integers(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        jcs(value)


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        0.5,
        -0.0,
        float("nan"),
        float("inf"),
        [1, 2.5],
        {"amount": 12.5},
        {"a": {"b": [0.1]}},
        (1, 2),
        b"bytes",
        {1, 2},
        object(),
    ],
)
def test_jcs_rejects_floats_and_other_types(value: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        jcs(value)


# -- the payload the signer signs ----------------------------------------------------

ASSETS = {
    "USD": AssetConfig(decimals=2).asset("USD"),
    "BTC": AssetConfig(decimals=8, max_amount="21").asset("BTC"),
}
KEY_ID = "payments.v1"
NONCE = base64.urlsafe_b64encode(bytes(range(16))).rstrip(b"=").decode()


def _intent(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "session_id": new_session_id(),
        "key_id": KEY_ID,
        "payee": "Caf\u00e9 \u20ac\U0001f600 \u00d6sterreich",
        "amount": "12.5",
        "asset": "USD",
        "reference": "inv-\u0416-1",
        "purpose": "line one\nline two",
        "nonce": NONCE,
        "expires_at": 1_700_000_300,
    }
    fields.update(overrides)
    return validate_intent(IntentFields(**fields), ASSETS, {KEY_ID})


def _signing_parts(intent: Any, agent_id: str = "agent-7") -> tuple[bytes, bytes, dict[str, Any]]:
    body = claims(
        intent,
        agent_id=agent_id,
        task_digest="ab" * 32,
        issued_at=1_700_000_000,
        decision_id=new_decision_id(),
    )
    payload = jcs(body)
    return payload, jws_signing_input(KEY_ID, payload), body


def test_claims_payload_is_canonical() -> None:
    payload, _, body = _signing_parts(_intent())
    assert rfc8785.dumps(json.loads(payload)) == payload
    assert json.loads(payload) == body
    assert body["typ"] == PAYLOAD_TYPE
    assert body["amount"] == "12.50"
    assert body["exp"] == 1_700_000_300
    assert body["iat"] == 1_700_000_000
    assert "purpose" not in body  # reasoning text is never part of the signed payload


def test_jws_signing_input_holds_canonical_header_and_exact_payload() -> None:
    payload, signing_input, _ = _signing_parts(_intent(amount="0.00000001", asset="BTC"))
    header_b64, payload_b64 = signing_input.decode("ascii").split(".")
    assert "=" not in header_b64 + payload_b64
    header = b64url_decode(header_b64)
    assert rfc8785.dumps(json.loads(header)) == header
    assert json.loads(header) == {"alg": "ES256", "kid": KEY_ID, "typ": "paywarden-payment+jwt"}
    decoded = b64url_decode(payload_b64)
    assert decoded == payload
    assert rfc8785.dumps(json.loads(decoded)) == decoded
    assert json.loads(decoded)["amount"] == "0.00000001"


def test_jws_compact_appends_signature() -> None:
    _, signing_input, _ = _signing_parts(_intent())
    compact = jws_compact(signing_input, b"\xff" * 64)
    head, _, sig = compact.rpartition(".")
    assert head.encode("ascii") == signing_input
    assert b64url_decode(sig) == b"\xff" * 64
    assert "=" not in sig


_payee_chars = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"))


@settings(max_examples=150, deadline=None)
@given(
    payee=st.text(alphabet=_payee_chars, min_size=1, max_size=40),
    reference=st.text(alphabet=_payee_chars, min_size=1, max_size=40),
    agent=st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z"),
)
def test_claims_payload_canonical_for_any_valid_text(
    payee: str, reference: str, agent: str
) -> None:
    payload, signing_input, body = _signing_parts(
        _intent(payee=payee, reference=reference), agent_id=agent
    )
    assert rfc8785.dumps(json.loads(payload)) == payload
    assert b64url_decode(signing_input.decode("ascii").split(".")[1]) == payload
    assert body["sub"] == agent


def test_jcs_refuses_non_string_keys() -> None:
    with pytest.raises(TypeError):
        jcs({1: "a"})  # type: ignore[dict-item]


def test_jcs_writes_str_enum_keys_and_values_as_their_text() -> None:
    class Key(enum.StrEnum):
        B = "b"
        A = "a"

    value: dict[str, Any] = {Key.B: Key.A, Key.A: [Key.B], "c": 1}
    plain: dict[str, Any] = {"b": "a", "a": ["b"], "c": 1}
    assert jcs(value) == rfc8785.dumps(plain) == jcs(plain)

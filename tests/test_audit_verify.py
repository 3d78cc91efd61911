"""The canonical-form test of the audit verifier (issue 10) against ``jcs`` itself.

The verifier checks that each record is its own RFC 8785 text. It now asks the C
JSON codec first and ``jcs`` only where the codec cannot decide
(``auditlog.canonical``): on random values, written canonically or not, and on the
edge cases (floats, large integers, keys that UTF-16 orders differently, lone
surrogates, duplicate keys, escapes), both give the same answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paywarden.signer.auditlog import canonical
from paywarden.signer.encoding import jcs

# -- the canonical-form test against jcs ----------------------------------------------------------

_MAX_SAFE = 2**53 - 1
_chars = st.characters(codec="utf-8") | st.sampled_from(["\ue000", "\uffff", "\U0001f4b8", "\x7f"])
_keys = st.text(alphabet=_chars, max_size=4)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False),
    st.text(alphabet=_chars, max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


def _jcs_says(parsed: Any, body: str) -> bool | str:
    try:
        return jcs(parsed).decode("utf-8") == body
    except (TypeError, ValueError, RecursionError) as exc:
        return type(exc).__name__


def _fast_says(body: str) -> bool | str:
    try:
        parsed, plain = canonical.parse(body)
        return canonical.is_canonical(parsed, body, plain)
    except (TypeError, ValueError, RecursionError) as exc:
        return type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(value=st.dictionaries(_keys, _values, max_size=6), style=st.integers(0, 4))
def test_the_fast_canonical_test_agrees_with_jcs(value: dict[str, Any], style: int) -> None:
    texts = [
        json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        json.dumps(value, ensure_ascii=False, sort_keys=True),
        json.dumps(value, separators=(",", ":"), sort_keys=True),
        json.dumps(value, ensure_ascii=False, separators=(",", ":")),
    ]
    try:
        texts.append(jcs(value).decode("utf-8"))
    except (TypeError, ValueError):
        pass
    body = texts[style % len(texts)]
    assert _fast_says(body) == _jcs_says(json.loads(body), body), body


@pytest.mark.parametrize(
    "body",
    [
        '{"a":1.0}',
        '{"a":1e2}',
        '{"a":NaN}',
        '{"a":9007199254740992}',
        '{"a":9007199254740991}',
        '{"\\ud800":1}',
        '{"a":"\\ud800"}',
        '{"a":1,"a":1}',
        '{"\ue000":1,"\U0001f4b8":2}',
        '{"\U0001f4b8":2,"\ue000":1}',
        '{"a":"\\u00e9"}',
        '{"a":"é"}',
        '{"a":"\\u001f"}',
        '{"a":"\\/"}',
        "[1]",
        '{"a":true,"b":null}',
    ],
)
def test_the_fast_canonical_test_on_edge_cases(body: str) -> None:
    assert _fast_says(body) == _jcs_says(json.loads(body), body)

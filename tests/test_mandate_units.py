"""The one conversion of mandate amounts (AP2 ``payment.budget.max`` in MAJOR units,
``payment.amount_range`` in MINOR units), the RFC 7638 thumbprint of a mandate's agent key,
the strict P-256 JWK reader, and the verifier under random input: a MandateError, never
another exception."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwcrypto.jwk import JWK
from paywarden.verify.mandates import (
    MandateCode,
    MandateError,
    jwk_thumbprint,
    major_to_minor,
    p256_key,
    verify_mandate,
)

from tests.support.mandates import (
    NOW,
    allowed_payees,
    amount_range,
    budget,
    decimals_of,
    execution_date,
    issue_credential,
    issue_user_mandate,
    join_hops,
    mandate_key,
    mandate_parties,
    merchant,
    open_mandate,
    public_jwk,
    recurrence,
    reference,
    trusted_issuers,
    user_credential_chain,
)

# RFC 9449 (DPoP) section 6.1: the P-256 key of its examples and its RFC 7638 thumbprint
# ("jkt"). RFC 7638's own example (section 3.1) is an RSA key, which this reader refuses.
DPOP_JWK = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}
DPOP_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
RFC7638_RSA = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
    "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
    "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
    "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_RSA_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# --- major_to_minor: budget.max is in MAJOR units -----------------------------------------------


@pytest.mark.parametrize(
    ("amount", "decimals", "minor"),
    [
        ("100.00", 2, 10000),  # 100.00 USD
        (Decimal("100.00"), 2, 10000),
        (100, 2, 10000),
        (100.5, 2, 10050),
        ("1000", 0, 1000),  # 1000 JPY: no minor unit
        (Decimal("1000.0"), 0, 1000),  # an exact value, written with a zero fraction
        ("2.5", 3, 2500),  # KWD: three decimals
        ("0", 2, 0),
        ("10000000000000000.00", 2, 10**18),  # the largest amount a mandate may name
        (10**18, 0, 10**18),
    ],
)
def test_major_to_minor_converts_exactly(amount: Any, decimals: int, minor: int) -> None:
    assert major_to_minor(amount, decimals) == minor


@pytest.mark.parametrize(
    ("amount", "decimals"),
    [
        ("1.005", 2),  # more fractional digits than USD has: never rounded
        (1.005, 2),
        (Decimal("1.005"), 2),
        (0.1 + 0.2, 2),  # 0.30000000000000004
        ("1000.5", 0),
        ("-1", 2),
        ("1e3", 2),  # only plain decimals as text
        (" 1", 2),
        ("1_000", 2),
        ("NaN", 2),
        (float("inf"), 2),
        (Decimal("Infinity"), 2),
        (True, 2),
        (None, 2),
        ("10000000000000000.01", 2),  # one more than the largest minor amount
        ("92233720368547758.07", 2),  # 2**63 - 1 minor units
        (10**18 + 1, 0),
        (Decimal("1e400"), 2),
        ("1", -1),
        ("1", 19),
    ],
)
def test_major_to_minor_refuses_what_it_cannot_convert_exactly(amount: Any, decimals: int) -> None:
    with pytest.raises(MandateError) as caught:
        major_to_minor(amount, decimals)
    assert caught.value.code == MandateCode.UNRESOLVED_CONSTRAINT
    assert caught.value.reason == "MANDATE_CONSTRAINT_INVALID"


def _bounds(constraints: list[Any]) -> Any:
    parties = mandate_parties()
    chain = user_credential_chain(parties, constraints)
    verified = verify_mandate(chain, trusted_issuers(parties), now=NOW, decimals=decimals_of)
    return verified.constraints


def test_a_budget_in_a_chain_is_read_in_major_units() -> None:
    assert _bounds([budget(100.0)]).budget_minor == 10000  # 100.00 USD
    assert _bounds([budget(1000, "JPY")]).budget_minor == 1000
    assert _bounds([budget(0.07)]).budget_minor == 7


def test_an_amount_range_is_read_in_minor_units_unconverted() -> None:
    usd = _bounds([amount_range(20000, 0), budget(500)])
    assert (usd.min_minor, usd.max_minor, usd.budget_minor) == (0, 20000, 50000)
    jpy = _bounds([amount_range(1000, currency="JPY"), recurrence("MONTHLY", 12)])
    assert (jpy.min_minor, jpy.max_minor, jpy.max_uses) == (None, 1000, 12)
    assert jpy.spacing_seconds == 28 * 86400
    for bad in (amount_range(100.5), amount_range(-1), amount_range(True), amount_range("100")):
        with pytest.raises(MandateError) as caught:
            _bounds([bad, budget(1)])
        assert caught.value.reason == "MANDATE_CONSTRAINT_INVALID", bad


def _refused(reason: str, constraints: list[Any], **claims: Any) -> None:
    parties = mandate_parties()
    chain = user_credential_chain(parties, constraints, **claims)
    with pytest.raises(MandateError) as caught:
        verify_mandate(chain, trusted_issuers(parties), now=NOW, decimals=decimals_of)
    assert caught.value.reason == reason, (constraints, claims, caught.value)


def test_amounts_and_uses_are_capped() -> None:
    # a2.py: 2**63 - 1 minor units, as a range max with as many uses, was accepted.
    top = _bounds([amount_range(10**18, 10**18), budget(10**16)])
    assert (top.min_minor, top.max_minor, top.budget_minor) == (10**18, 10**18, 10**18)
    assert _bounds([amount_range(1), recurrence("DAILY", 1_000_000)]).max_uses == 1_000_000
    for constraints, claims in (
        ([amount_range(10**18 + 1), budget(1)], {}),
        ([amount_range(2**63 - 1), recurrence("ON_DEMAND", 2**63 - 1)], {}),
        ([budget(10**16 + 1)], {}),
        ([budget(10**16, "JPY")], {"payment_amount": {"amount": 10**18 + 1, "currency": "JPY"}}),
        ([amount_range(1), recurrence("DAILY", 1_000_001)], {}),
    ):
        _refused("MANDATE_CONSTRAINT_INVALID", constraints, **claims)


def test_time_claims_are_integers_up_to_2_53() -> None:
    # a2.py: an exp of 2**80 was accepted.
    assert _bounds([budget(1)]).budget_minor == 100
    late = 2**53 - NOW
    parties = mandate_parties()
    chain = user_credential_chain(parties, [budget(1)], ttl=late)
    verified = verify_mandate(chain, trusted_issuers(parties), now=NOW, decimals=decimals_of)
    assert verified.mandate_expires_at == NOW + 365 * 86400  # the credential's is sooner
    for claims in ({"ttl": late + 1}, {"ttl": 2**80}, {"iat": -1}, {"nbf": 2**53 + 1}):
        _refused("MANDATE_MALFORMED", [budget(1)], **claims)
    credential = issue_credential(parties.issuer, parties.user, ttl=2**80)
    hop1 = issue_user_mandate(parties.user, credential, open_mandate(parties.agent, [budget(1)]))
    with pytest.raises(MandateError) as caught:
        verify_mandate(
            join_hops(credential, hop1), trusted_issuers(parties), now=NOW, decimals=decimals_of
        )
    assert caught.value.reason == "MANDATE_MALFORMED"
    for date in ("0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z"):
        _refused("MANDATE_MALFORMED", [budget(1), execution_date(not_after=date)])


def test_a_reference_and_a_payee_id_are_printable_ascii_without_spaces() -> None:
    # a2.py: a reference "a\x00\ud800b" and a payee id "\ud800" were accepted.
    bounds = _bounds([budget(1), reference("r" * 256), allowed_payees(merchant("~!" * 128))])
    assert (bounds.reference, bounds.payees) == ("r" * 256, ("~!" * 128,))
    for bad in ("", "a b", "r" * 257, "a\x00\ud800b", "caf\u00e9", "tab\t"):
        _refused("MANDATE_CONSTRAINT_INVALID", [budget(1), reference(bad)])
        _refused("MANDATE_CONSTRAINT_INVALID", [budget(1), allowed_payees(merchant(bad))])
    _refused("MANDATE_CONSTRAINT_INVALID", [budget(1)], payee=merchant("m 1"))


# --- the agent key's thumbprint ------------------------------------------------------------------


def test_jwk_thumbprint_matches_the_rfc_vector_and_jwcrypto() -> None:
    assert jwk_thumbprint(DPOP_JWK) == DPOP_JKT
    assert JWK(**DPOP_JWK).thumbprint() == DPOP_JKT
    for _ in range(5):
        key = mandate_key("some-kid")
        assert jwk_thumbprint(public_jwk(key)) == key.thumbprint()
    # members beyond the required ones, and their order, do not change it
    assert (
        jwk_thumbprint({"use": "sig", "kid": "k", **dict(reversed(DPOP_JWK.items()))}) == DPOP_JKT
    )


def test_jwk_thumbprint_is_for_p256_keys_only() -> None:
    assert JWK(**RFC7638_RSA).thumbprint() == RFC7638_RSA_THUMBPRINT  # the RFC's own example
    with pytest.raises(MandateError):
        jwk_thumbprint(RFC7638_RSA)
    with pytest.raises(MandateError):
        jwk_thumbprint(public_jwk(mandate_key(curve="P-384")))


@pytest.mark.parametrize(
    "change",
    [
        {"d": "AAAA"},  # a private key is never a cnf
        {"kty": "OKP"},
        {"crv": "secp256k1"},
        {"x": DPOP_JWK["x"] + "A"},
        {"x": DPOP_JWK["x"][:-1] + "A"},  # another point: off the curve
        {"y": DPOP_JWK["y"] + "="},
        {"x": 5},
        {"alg": "ES384"},
        {"use": "enc"},
        {"key_ops": ["verify"]},
    ],
)
def test_p256_key_is_strict(change: dict[str, Any]) -> None:
    with pytest.raises(MandateError) as caught:
        p256_key({**DPOP_JWK, **change})
    assert (caught.value.code, caught.value.reason) == (
        MandateCode.INVALID_CREDENTIAL,
        "MANDATE_MALFORMED",
    )
    assert p256_key(DPOP_JWK).curve.name == "secp256r1"


# --- random input never raises but MandateError ---------------------------------------------------

_PARTIES = mandate_parties()
_ISSUERS = trusted_issuers(_PARTIES)
_CHAIN = user_credential_chain(_PARTIES, [budget(100.0), recurrence("DAILY", 3)], closed=True)

_names = st.text(max_size=8).filter(lambda name: name not in ("_sd", "..."))  # the issuer's own
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_names, inner, max_size=4),
    max_leaves=12,
)


def _verify_any(chain: object) -> None:
    try:
        verify_mandate(chain, _ISSUERS, now=NOW, decimals=decimals_of)  # type: ignore[arg-type]
    except MandateError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(min_value=0, max_value=len(_CHAIN) - 1),
    cut=st.integers(min_value=0, max_value=40),
    insert=st.text(alphabet='~.-_=AZaz09{}"[]', max_size=6),
)
def test_a_mangled_chain_raises_only_mandate_error(position: int, cut: int, insert: str) -> None:
    _verify_any(_CHAIN[:position] + insert + _CHAIN[position + cut :])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=_json, constraints=st.lists(_json, max_size=3))
def test_a_signed_chain_of_any_json_raises_only_mandate_error(item: Any, constraints: Any) -> None:
    credential = issue_credential(_PARTIES.issuer, _PARTIES.user)
    mandate = {**open_mandate(_PARTIES.agent, constraints), "risk_data": item}
    if isinstance(item, dict):
        mandate = {**item, **mandate} if "cnf" in item else {**mandate, **item}
    _verify_any(join_hops(credential, issue_user_mandate(_PARTIES.user, credential, mandate)))


@settings(max_examples=200, deadline=None)
@given(payload=_json)
def test_a_hop_of_any_json_raises_only_mandate_error(payload: Any) -> None:
    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    hop = f"{part({'alg': 'ES256', 'typ': 'dc+sd-jwt', 'kid': 'cred-issuer-1'})}.{part(payload)}."
    _verify_any(hop + "A" * 86 + "~" + part(["salt", payload]) + "~")
    _verify_any(hop + "A" * 86 + "~" + part(payload) + "~")


def test_what_is_not_a_chain_raises_only_mandate_error() -> None:
    for chain in (None, b"abc", 5, "", "~", "~~", "a~~b~~c~~d~", "é~", "x" * 70000):
        with pytest.raises(MandateError):
            verify_mandate(chain, _ISSUERS, now=NOW, decimals=decimals_of)  # type: ignore[arg-type]

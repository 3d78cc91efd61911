# ruff: noqa: RUF002, RUF003 - the attacks spell payees with look-alike characters on purpose
"""Patterns and deny lists must not miss look-alikes (issue 8, defect 6).

The attacks: the allow pattern ``[^.]+\\.cdn\\.example`` admitted
``аpi.cdn.example`` (Cyrillic а), and the deny pattern ``bad-.*`` let
``bad‐x.cdn.example`` (U+2010 HYPHEN) through. Now a pattern admits only ASCII
payees, and deny entries and deny patterns also catch the look-alikes of what
they name (``PAYEE_LOOKS_DENYLISTED``): entries by confusable skeleton, patterns
on the payee's prototype (its non-ASCII look-alikes replaced by the ASCII they
imitate).
"""

from __future__ import annotations

import grpc
import pytest
from paywarden.policy.payees import skeleton
from paywarden.v1 import signer_pb2

from tests.helpers import Stack, reason_of
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.sessions import open_session

PACK = """
id = "cdn"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "10.00"

[payees]
allow = ["bücher.example", "paypal.example"]
allow_patterns = ["[^.]+\\\\.cdn\\\\.example"]
deny = ["evil.cdn.example", "paypa1.example"]
deny_patterns = ["bad-.*"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "100.00" }
"""

PACKS = {"cdn.toml": PACK}
pytestmark = pytest.mark.stack(packs=PACKS)

# The dash family of issue 8: each renders like "-".
DASHES = ["\u2010", "\u2011", "\u2012", "\u2013", "\u2014", "\u2015", "\u2212", "\ufe63", "\uff0d"]
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def session_id(api: Api) -> str:
    return open_session(api.planner, "agent-1", "100.00", task="fetch assets", ttl=3600)


def denial_reason(api: Api, stack: Stack, session_id: str, payee: str) -> str | None:
    """The reason code of the PERMISSION_DENIED a payment to ``payee`` gets."""
    with pytest.raises(grpc.RpcError) as info:
        api.signer.Sign(sign_request(stack, session_id, payee=payee, amount="0.01"))
    assert info.value.code() is DENIED, info.value.details()
    return reason_of(info.value)


@pytest.mark.parametrize(
    "payee",
    [
        "\u0430pi.cdn.example",  # Cyrillic а
        "ap\u0456.cdn.example",  # Cyrillic і
        "\u03bfrigin.cdn.example",  # Greek ο
        "café.cdn.example",
    ],
)
def test_cyrillic_a_does_not_pass_an_allow_pattern(
    api: Api, stack: Stack, session_id: str, payee: str
) -> None:
    assert denial_reason(api, stack, session_id, payee) == "PAYEE_NOT_ASCII"
    assert (
        api.signer.Sign(
            sign_request(stack, session_id, payee="api.cdn.example", amount="0.01")
        ).status
        == signer_pb2.SIGNED
    )


@pytest.mark.parametrize("dash", DASHES)
def test_unicode_hyphen_does_not_slip_past_a_deny_pattern(
    api: Api, stack: Stack, session_id: str, dash: str
) -> None:
    payee = f"bad{dash}x.cdn.example"
    assert denial_reason(api, stack, session_id, payee) == "PAYEE_LOOKS_DENYLISTED"
    assert denial_reason(api, stack, session_id, "bad-x.cdn.example") == "PAYEE_DENYLISTED"


@pytest.mark.parametrize(
    "payee",
    [
        "ev\u0456l.cdn.example",  # Cyrillic і
        "\u0435vil.cdn.example",  # Cyrillic е
        "evi1.cdn.example",  # digit one: ASCII, and the allow pattern matches it
        "evii.cdn.example",
        "EVIL.cdn.example",  # the asset is case-sensitive, but this looks the same
        "\u0454vil.cdn.example",  # Cyrillic є
        "evil.\u03f2dn.example",  # Greek lunate sigma, which NFKD turns into final sigma
    ],
)
def test_lookalike_of_a_denied_payee_is_denied(
    api: Api, stack: Stack, session_id: str, payee: str
) -> None:
    assert skeleton(payee) == skeleton("evil.cdn.example")
    assert denial_reason(api, stack, session_id, payee) == "PAYEE_LOOKS_DENYLISTED"


def test_payee_the_pack_names_exactly_is_not_taken_for_a_lookalike(
    api: Api, stack: Stack, session_id: str
) -> None:
    # "paypal.example" is allowed by name and its look-alike "paypa1.example" is denied:
    # the skeletons are equal, and the pack's own exact names decide.
    assert skeleton("paypal.example") == skeleton("paypa1.example")
    assert (
        api.signer.Sign(
            sign_request(stack, session_id, payee="paypal.example", amount="0.01")
        ).status
        == signer_pb2.SIGNED
    )
    assert denial_reason(api, stack, session_id, "paypa1.example") == "PAYEE_DENYLISTED"
    # a non-ASCII payee the pack names exactly is paid: only patterns are ASCII-only
    assert (
        api.signer.Sign(
            sign_request(stack, session_id, payee="bücher.example", amount="0.01")
        ).status
        == signer_pb2.SIGNED
    )


def test_session_cannot_list_a_lookalike_either(api: Api) -> None:
    for payee, reason in [
        ("\u0430pi.cdn.example", "PAYEE_NOT_ASCII"),
        ("bad\u2010x.cdn.example", "PAYEE_LOOKS_DENYLISTED"),
        ("ev\u0456l.cdn.example", "PAYEE_LOOKS_DENYLISTED"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            open_session(
                api.planner,
                "agent-1",
                "100.00",
                task="fetch assets",
                ttl=600,
                allowed_payees=[payee],
            )
        assert (info.value.code(), reason_of(info.value)) == (DENIED, reason), payee

# ruff: noqa: RUF001, RUF002 - the attacks spell payees with look-alike characters on purpose
"""Case-folding must not sign a spelling the policy never approved (issue 8, defect 4).

The attack: on an asset with ``case_insensitive_payees = true`` the signer
case-folded the payee before matching it, so ``ſhop@example.com`` (long s) and
``ﬀ@example.com`` (ligature) matched the allowed ``shop@example.com`` and
``ff@example.com`` — and were SIGNED with the look-alike text in the JWS. A
payee is now matched only in its canonical spelling: normalisation may change
nothing but ASCII letter case; anything else is refused (``PAYEE_NOT_CANONICAL``)
and nothing is signed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest
from paywarden.policy import AllOf, Asset, Verdict, check_session, compile_pack, evaluate
from paywarden.policy.packs import PolicyPack, PolicyPackModel
from paywarden.policy.payees import normalise
from paywarden.v1 import signer_pb2

from tests.attacks.kit import signer_facts
from tests.helpers import Stack, reason_of
from tests.support.clients import Api
from tests.support.intents import sign_request
from tests.support.sessions import open_session

PACK = """
id = "mail"
version = 1
agents = ["agent-1"]

[assets.MAIL]
keys = ["payments.v1"]
max_per_payment = "10.00"

[payees]
allow = ["shop@example.com", "ff@example.com", "strasse@example.com"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { MAIL = "100.00" }
"""

PACKS = {"mail.toml": PACK}
EXTRA_CONFIG = """
[assets.MAIL]
decimals = 2
case_insensitive_payees = true
"""
pytestmark = pytest.mark.stack(packs=PACKS, extra=EXTRA_CONFIG)

# (payee as an attacker writes it, the allowed payee it folds onto)
ATTACKS = [
    ("ſhop@example.com", "shop@example.com"),  # U+017F LATIN SMALL LETTER LONG S
    ("ﬀ@example.com", "ff@example.com"),  # U+FB00 LATIN SMALL LIGATURE FF
    ("ſHOP@example.com", "shop@example.com"),
    ("straße@example.com", "strasse@example.com"),  # sharp s folds to "ss"
]


def jws_payee(jws: str) -> Any:
    body = jws.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["payee"]


@pytest.mark.parametrize(("payee", "allowed"), ATTACKS)
def test_case_folded_lookalike_of_an_allowed_payee_is_not_signed(
    api: Api, stack: Stack, payee: str, allowed: str
) -> None:
    assert normalise(payee, case_insensitive=True) == allowed  # it does fold onto it
    session_id = open_session(
        api.planner, "agent-1", "100.00", task="buy mail credits", asset="MAIL"
    )
    with pytest.raises(grpc.RpcError) as info:
        api.signer.Sign(sign_request(stack, session_id, payee=payee, amount="1.00", asset="MAIL"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "PAYEE_NOT_CANONICAL"
    # the genuine payee, in any ASCII case, is still paid, and signed as written
    resp = api.signer.Sign(
        sign_request(stack, session_id, payee=allowed.upper(), amount="1.00", asset="MAIL")
    )
    assert resp.status == signer_pb2.SIGNED
    assert jws_payee(resp.jws) == allowed.upper()


@pytest.mark.parametrize(("payee", "allowed"), ATTACKS)
def test_session_cannot_name_a_case_folded_lookalike(api: Api, payee: str, allowed: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        open_session(
            api.planner,
            "agent-1",
            "100.00",
            task="buy mail credits",
            asset="MAIL",
            allowed_payees=(payee,),
        )
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(info.value) == "PAYEE_NOT_CANONICAL"
    open_session(
        api.planner,
        "agent-1",
        "100.00",
        task="buy mail credits",
        asset="MAIL",
        allowed_payees=(allowed,),
    )


# -- the same rule inside the policy engine, on the facts the signer builds ----------------


def _policy() -> tuple[AllOf, PolicyPack]:
    import tomllib

    model = PolicyPackModel.model_validate(tomllib.loads(PACK))
    pack = PolicyPack(model, "0" * 64, "mail.toml")
    return compile_pack(pack, {"MAIL": Asset("MAIL", 2, case_insensitive=True)}), pack


@pytest.mark.parametrize(("payee", "allowed"), ATTACKS)
def test_policy_refuses_the_folded_spelling_on_the_signers_facts(payee: str, allowed: str) -> None:
    policy, pack = _policy()
    decision = evaluate(policy, signer_facts(payee, "MAIL", case_insensitive=True))
    assert (decision.verdict, decision.reason) == (Verdict.DENY, "PAYEE_NOT_CANONICAL")
    assert (
        evaluate(policy, signer_facts(allowed.title(), "MAIL", case_insensitive=True)).verdict
        is Verdict.ALLOW
    )
    violation = check_session(
        pack, {"MAIL": Asset("MAIL", 2, True)}, {"MAIL": 100}, 60, [payee], plan_bound=False
    )
    assert violation is not None and violation.reason == "PAYEE_NOT_CANONICAL"


def test_non_ascii_payee_already_in_folded_form_is_still_paid() -> None:
    """Canonical is not "ASCII": a lower-case non-ASCII name that folding leaves
    alone is the identifier the policy matched, and is paid when the pack names it."""
    import tomllib

    text = PACK.replace('"strasse@example.com"', '"strasse@example.com", "müller@example.de"')
    model = PolicyPackModel.model_validate(tomllib.loads(text))
    policy = compile_pack(
        PolicyPack(model, "0" * 64, "mail.toml"), {"MAIL": Asset("MAIL", 2, case_insensitive=True)}
    )
    assert (
        evaluate(policy, signer_facts("müller@example.de", "MAIL", case_insensitive=True)).verdict
        is Verdict.ALLOW
    )
    # but its upper-case Ü would be folded by more than ASCII lower-casing
    refused = evaluate(policy, signer_facts("MÜLLER@example.de", "MAIL", case_insensitive=True))
    assert (refused.verdict, refused.reason) == (Verdict.DENY, "PAYEE_NOT_CANONICAL")

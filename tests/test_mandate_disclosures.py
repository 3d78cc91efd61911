"""How a mandate-chain hop's disclosures are resolved (RFC 9901 section 7.1, strictly): each
presented disclosure answers exactly one digest of its hop, in the place its shape allows,
once; hops made by hand, because the reference issuer never makes these mistakes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from paywarden.verify import sdjwt
from paywarden.verify.mandate_terms import constraints
from paywarden.verify.mandates import MandateCode, MandateError, verify_mandate

from tests.support.mandates import (
    NOW,
    MandateParties,
    budget,
    decimals_of,
    execution_date,
    issue_credential,
    issue_user_mandate,
    join_hops,
    mandate_parties,
    open_mandate,
    trusted_issuers,
    x5c_issuer,
)


def json_b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def hand_made(payload: dict[str, Any], *disclosures: str) -> sdjwt.Hop:
    """A hop with ``payload`` and ``disclosures``, signature not checked (resolve only)."""
    jwt = f"{json_b64({'alg': 'ES256', 'typ': 'dc+sd-jwt'})}.{json_b64(payload)}.{'A' * 86}"
    (hop,) = sdjwt.parse_chain("~".join([jwt, *disclosures, ""]), 65536)
    return hop


def resolution_refused(hop: sdjwt.Hop) -> str:
    with pytest.raises(MandateError) as caught:
        sdjwt.resolve(hop)
    assert caught.value.code == MandateCode.INVALID_CREDENTIAL
    assert caught.value.reason == "MANDATE_DISCLOSURE_INVALID", caught.value
    return caught.value.message


PROPERTY = json_b64(["salt-a", "given_name", "Ada"])
ELEMENT = json_b64(["salt-b", {"id": "m1"}])


def test_a_property_and_an_element_resolve_where_their_digests_are() -> None:
    hop = hand_made(
        {"_sd": [sdjwt.digest(PROPERTY), "decoy"], "list": [{"...": sdjwt.digest(ELEMENT)}]},
        PROPERTY,
        ELEMENT,
    )
    resolved = sdjwt.resolve(hop)
    assert resolved == {"list": [{"id": "m1"}], "given_name": "Ada", "_sd": ["decoy"]}
    assert sdjwt.strip(resolved) == {"list": [{"id": "m1"}], "given_name": "Ada"}


@pytest.mark.parametrize(
    ("payload", "disclosures", "message"),
    [
        ({"_sd": [sdjwt.digest(ELEMENT)]}, [ELEMENT], "not an object property"),
        ({"l": [{"...": sdjwt.digest(PROPERTY)}]}, [PROPERTY], "not an array element"),
        ({"_sd": [sdjwt.digest(PROPERTY)], "given_name": "x"}, [PROPERTY], "already in"),
        ({"_sd": ["d1"], "o": {"_sd": ["d1"]}}, [], "digest appears twice"),
        ({"_sd": [sdjwt.digest(PROPERTY), sdjwt.digest(PROPERTY)]}, [PROPERTY], "twice"),
        ({"l": [{"...": "d", "x": 1}]}, [], "other members"),
        ({"o": {"...": "d"}}, [], "outside an array"),
        ({"_sd": "d"}, [], "not an array"),
        ({"_sd": [5]}, [], "not a string"),
        ({"o": {"_sd_alg": "sha-256"}}, [], "only allowed at the top"),
        ({"_sd_alg": "sha-512"}, [], "not sha-256"),
        ({}, [json_b64(["s", "_sd", ["x"]])], "claim name"),
        ({}, [json_b64(["s", "...", "x"])], "claim name"),
        ({}, [json_b64([5, "n", "x"])], "salt"),
        ({}, [json_b64(["s"])], "array of 2 or 3"),
        ({}, [json_b64({"s": 1})], "array of 2 or 3"),
        ({}, [json_b64(["s", "a", "b", "c"])], "array of 2 or 3"),
        ({}, ["bm90IGpzb24"], "not strict JSON"),
        ({}, [PROPERTY], "answers no digest"),
    ],
)
def test_a_misplaced_or_malformed_disclosure_is_refused(
    payload: dict[str, Any], disclosures: list[str], message: str
) -> None:
    assert message in resolution_refused(hand_made(payload, *disclosures))


def test_a_disclosure_inside_a_disclosure_resolves_and_counts_as_referenced() -> None:
    inner = json_b64(["salt-c", {"id": "m2"}])
    outer = json_b64(["salt-d", "allowed", [{"...": sdjwt.digest(inner)}]])
    resolved = sdjwt.resolve(hand_made({"_sd": [sdjwt.digest(outer)]}, inner, outer))
    assert resolved == {"allowed": [{"id": "m2"}]}
    assert "answers no digest" in resolution_refused(hand_made({}, inner))


def test_nesting_is_bounded() -> None:
    deep: Any = "x"
    for _ in range(sdjwt.MAX_DEPTH + 2):
        deep = [deep]
    assert "too deep" in resolution_refused(hand_made({"deep": deep}))


# --- trust through x5c, and execution dates ----------------------------------------------------


def x5c_chain(parties: MandateParties, pki: Any) -> str:
    credential = issue_credential(pki.key, parties.user, x5c=pki.chain)
    return join_hops(
        credential,
        issue_user_mandate(parties.user, credential, open_mandate(parties.agent, [budget(10)])),
    )


def test_an_x5c_chain_through_an_intermediate_ca_is_trusted() -> None:
    parties = mandate_parties()
    pki = x5c_issuer(intermediate=True)
    assert len(pki.chain) == 2
    issuers = trusted_issuers(parties, x5c_roots=[pki.root])
    verified = verify_mandate(x5c_chain(parties, pki), issuers, now=NOW, decimals=decimals_of)
    assert verified.issuer == "CN=Wallet Issuer"
    leaf_only = type(pki)(pki.root, pki.chain[:1], pki.key)  # the intermediate left out
    with pytest.raises(MandateError) as caught:
        verify_mandate(x5c_chain(parties, leaf_only), issuers, now=NOW, decimals=decimals_of)
    assert caught.value.reason == "MANDATE_ISSUER_UNTRUSTED"
    swapped = type(pki)(pki.root, pki.chain[::-1], pki.key)  # not leaf first
    with pytest.raises(MandateError) as caught:
        verify_mandate(x5c_chain(parties, swapped), issuers, now=NOW, decimals=decimals_of)
    assert caught.value.code == MandateCode.INVALID_CREDENTIAL


def x5c_refused(chain: str, issuers: Any, message: str) -> None:
    with pytest.raises(MandateError) as caught:
        verify_mandate(chain, issuers, now=NOW, decimals=decimals_of)
    assert caught.value.reason == "MANDATE_ISSUER_UNTRUSTED", caught.value
    assert message in caught.value.message


def test_an_x5c_leaf_must_be_no_ca_and_may_sign_and_cas_keep_their_path_length() -> None:
    # a4.py X1 (the root itself), X2 (a CA leaf), X3 (past the root's pathLen), X4 (a leaf
    # whose keyUsage does not allow signing): each was accepted.
    parties = mandate_parties()
    signing, issuing = ["digital_signature"], ["key_cert_sign", "crl_sign"]
    for accepted in (
        x5c_issuer(leaf_usage=signing, ca_usage=issuing),
        x5c_issuer(intermediate=True, root_path_length=1),
        x5c_issuer(root_path_length=0),
    ):
        issuers = trusted_issuers(parties, x5c_roots=[accepted.root])
        verify_mandate(x5c_chain(parties, accepted), issuers, now=NOW, decimals=decimals_of)
    pki = x5c_issuer()
    assert pki.root_key is not None
    root_der = base64.b64encode(pki.root.public_bytes(serialization.Encoding.DER)).decode()
    root_only = type(pki)(pki.root, [root_der], pki.root_key)  # the root key signs
    for pki, message in (
        (root_only, "only its root"),
        (x5c_issuer(leaf_ca=True), "leaf is a CA"),
        (x5c_issuer(intermediate=True, root_path_length=0), "path length"),
        (x5c_issuer(leaf_usage=["crl_sign"]), "digitalSignature"),
        (x5c_issuer(ca_usage=["crl_sign"]), "keyCertSign"),
        (x5c_issuer(intermediate=True, ca_usage=["digital_signature"]), "keyCertSign"),
    ):
        issuers = trusted_issuers(parties, x5c_roots=[pki.root])
        x5c_refused(x5c_chain(parties, pki), issuers, message)


def test_execution_dates_bound_the_window_and_a_preset_date_is_a_utc_day() -> None:
    def window(*listed: Any, **item: Any) -> tuple[int | None, int | None]:
        bounds = constraints({"constraints": [budget(1), *listed], **item}, decimals_of)
        return bounds.not_before, bounds.not_after

    assert window(execution_date("2026-09-21T00:00:00.5Z")) == (1789948801, None)
    assert window(execution_date(not_after="2026-09-21T02:00:00+02:00")) == (None, 1789948800)
    assert window(execution_date=("2026-09-21")) == (1789948800, 1789948800 + 86399)
    assert window(execution_date("2026-09-21T12:00:00Z"), execution_date="2026-09-21") == (
        1789992000,
        1789948800 + 86399,
    )
    for bad in ({"execution_date": "2026-09-21T00:00:00Z"}, {"execution_date": "2026-02-30"}):
        with pytest.raises(MandateError) as caught:
            window(**bad)
        assert caught.value.reason == "MANDATE_CONSTRAINT_INVALID"
    for listed in (
        execution_date("2026-09-21T00:00:00"),
        execution_date("2026-13-01T00:00:00Z"),
        execution_date("2026-09-22T00:00:00Z", "2026-09-21T00:00:00Z"),
    ):
        with pytest.raises(MandateError) as caught:
            window(listed)
        assert caught.value.reason == "MANDATE_CONSTRAINT_INVALID", listed

"""Mandate chains (AP2 v0.2 open payment mandates) checked by paywarden.verify.mandates:
valid chains agree with the sd-jwt reference implementation hop by hop, AP2's own encoded
example tokens are fixed vectors for the hash links, and every refusal has its code and
reason."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwcrypto.jwk import JWK
from paywarden.verify import sdjwt
from paywarden.verify.mandate_terms import constraints as mandate_constraints
from paywarden.verify.mandates import (
    MandateCode,
    MandateError,
    TrustedIssuer,
    TrustedIssuers,
    VerifiedMandate,
    p256_key,
    verify_mandate,
)
from sd_jwt.common import SDObj
from sd_jwt.verifier import SDJWTVerifier

from tests.support.mandates import (
    CLOSED_PAYMENT,
    ISSUER_KID,
    NOW,
    PROVIDER_KID,
    MandateParties,
    allowed_payees,
    amount_range,
    budget,
    closed_mandate,
    decimals_of,
    decoded_disclosures,
    ec_public_key,
    execution_date,
    hop_hash,
    issue_closed_hop,
    issue_credential,
    issue_hop,
    issue_root_mandate,
    issue_user_mandate,
    join_hops,
    malleable_twin,
    mandate_id_of,
    mandate_key,
    mandate_parties,
    merchant,
    open_mandate,
    oracle_verify,
    recurrence,
    reference,
    trusted_issuers,
    with_jws_header,
    withhold,
    x5c_issuer,
)

BOUNDED = [budget(100.0), recurrence("DAILY", 3), allowed_payees(merchant("m1"), merchant("m2"))]
CREDENTIAL = MandateCode.INVALID_CREDENTIAL
MANDATE = MandateCode.INVALID_MANDATE
UNRESOLVED = MandateCode.UNRESOLVED_CONSTRAINT


def verified_chain(chain: str, parties: MandateParties, **options: Any) -> VerifiedMandate:
    issuers = options.pop("issuers", None) or trusted_issuers(parties)
    return verify_mandate(
        chain, issuers, now=options.pop("now", NOW), decimals=decimals_of, **options
    )


def chain_refused(
    chain: str, parties: MandateParties, code: MandateCode, reason: str, **options: Any
) -> MandateError:
    with pytest.raises(MandateError) as caught:
        verified_chain(chain, parties, **options)
    assert (caught.value.code, caught.value.reason) == (code, reason), caught.value
    return caught.value


def chain_parts(
    parties: MandateParties, constraints: list[Any] | None = None, **claims: Any
) -> tuple[str, str]:
    """The credential and the user's mandate hop over it."""
    credential = issue_credential(parties.issuer, parties.user)
    item = open_mandate(parties.agent, BOUNDED if constraints is None else constraints, **claims)
    return credential, issue_user_mandate(parties.user, credential, item)


# --- valid chains, and the oracle ------------------------------------------------------------


def test_a_user_credential_chain_verifies_as_the_reference_implementation_reads_it() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties, payee=merchant("m1"))
    chain = join_hops(credential, hop1)
    oracle = oracle_verify(chain, {ISSUER_KID: parties.issuer})
    verified = verified_chain(chain, parties)
    item = oracle[1]["delegate_payload"][0]
    assert verified.disclosed == item
    assert verified.id == mandate_id_of(hop1)
    assert verified.holder_jkt == JWK(**item["cnf"]["jwk"]).thumbprint()
    assert verified.holder_jkt == parties.agent.thumbprint()
    assert (verified.issuer, verified.vct, verified.hops) == (ISSUER_KID, item["vct"], 2)
    assert (verified.issued_at, verified.expires_at) == (NOW, NOW + 3600)
    assert (verified.presentation, verified.nonce) == (None, None)
    bounds = verified.constraints
    assert (bounds.currency, bounds.budget_minor, bounds.max_uses) == ("USD", 10000, 3)
    assert (bounds.spacing_seconds, bounds.payees) == (86400, ("m1",))
    assert (bounds.min_minor, bounds.max_minor, bounds.reference) == (None, None, None)


def test_a_closed_agent_hop_is_a_third_hop_whose_hash_and_nonce_are_returned() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    closed = issue_closed_hop(parties.agent, hop1, nonce="agent-nonce-7", mandate=closed_mandate())
    chain = join_hops(credential, hop1, closed)
    oracle = oracle_verify(chain, {ISSUER_KID: parties.issuer})
    assert oracle[2]["sd_hash"] == hop_hash(hop1)
    verified = verified_chain(chain, parties)
    assert verified.hops == 3
    assert verified.presentation == mandate_id_of(closed)
    assert verified.nonce == "agent-nonce-7"
    assert verified.id == mandate_id_of(hop1)  # the id does not change with the closed hop
    assert verified.disclosed == oracle[1]["delegate_payload"][0]


def test_the_mandate_id_is_the_signed_jwt_not_the_disclosures_presented() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    fewer = withhold(hop1, lambda d: d[-1] == merchant("m2"))
    assert fewer != hop1
    first = verified_chain(join_hops(credential, hop1), parties)
    second = verified_chain(join_hops(credential, fewer), parties)
    assert first.id == second.id
    assert (first.constraints.payees, second.constraints.payees) == (("m1", "m2"), ("m1",))


def test_a_malleable_twin_of_a_hop_is_the_same_mandate_and_the_same_presentation() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    twin = malleable_twin(hop1)
    assert twin != hop1
    closed, twin_closed = (issue_closed_hop(parties.agent, h) for h in (hop1, twin))
    first = verified_chain(join_hops(credential, hop1, closed), parties)
    second = verified_chain(join_hops(credential, twin, twin_closed), parties)
    assert first.id == second.id == mandate_id_of(hop1)
    replayed = verified_chain(join_hops(credential, hop1, malleable_twin(closed)), parties)
    assert replayed.presentation == first.presentation


def test_an_issuer_jwt_hash_link_is_accepted_as_the_oracle_accepts_it() -> None:
    parties = mandate_parties()
    credential = issue_credential(parties.issuer, parties.user)
    item = open_mandate(parties.agent, BOUNDED)
    hop1 = issue_user_mandate(parties.user, credential, item, link="issuer_jwt_hash")
    closed = issue_closed_hop(parties.agent, hop1, link="issuer_jwt_hash")
    chain = join_hops(credential, hop1, closed)
    oracle_verify(chain, {ISSUER_KID: parties.issuer})
    assert verified_chain(chain, parties).hops == 3


def test_a_provider_root_signs_the_mandate_itself_only_when_configured_so() -> None:
    parties = mandate_parties()
    root = issue_root_mandate(parties.provider, open_mandate(parties.agent, BOUNDED))
    closed = issue_closed_hop(parties.agent, root)
    for chain, hops in ((root, 1), (join_hops(root, closed), 2)):
        oracle_verify(chain, {PROVIDER_KID: parties.provider})
        verified = verified_chain(chain, parties)
        assert (verified.issuer, verified.hops, verified.id) == (
            PROVIDER_KID,
            hops,
            mandate_id_of(root),
        )
        chain_refused(
            chain,
            parties,
            CREDENTIAL,
            "MANDATE_ISSUER_UNTRUSTED",
            issuers=trusted_issuers(parties, provider_root=False),
        )


def test_a_credential_issuer_may_not_sign_a_mandate_as_the_root() -> None:
    parties = mandate_parties()
    root = issue_root_mandate(parties.issuer, open_mandate(parties.agent, BOUNDED), kid=ISSUER_KID)
    chain_refused(root, parties, CREDENTIAL, "MANDATE_ISSUER_UNTRUSTED")


def test_a_provider_root_key_never_roots_a_credential_chain() -> None:
    # A1: the provider's plain JWT binding the agent key, then a mandate the agent signs
    # itself with any budget; A2b: a provider mandate whose delegate_payload is a withheld
    # SD property, with a top-level cnf = the agent, read as a credential once withheld.
    parties = mandate_parties()
    rich = open_mandate(parties.agent, [budget(10**6), recurrence("ON_DEMAND", 1000)])
    provider: dict[str, Any] = {"typ": "example+sd-jwt", "header": {"kid": PROVIDER_KID}}
    plain = issue_hop(
        parties.provider,
        {"iss": "p", "iat": NOW, "exp": NOW + 60},
        **provider,
        holder_key=parties.agent,
    )
    body = {"iat": NOW, SDObj("delegate_payload"): [SDObj(open_mandate(parties.agent, BOUNDED))]}
    shown = issue_hop(parties.provider, body, **provider, holder_key=parties.agent)
    hidden = withhold(shown, lambda _disclosure: True)
    for root in (plain, hidden):
        oracle_verify(root, {PROVIDER_KID: parties.provider})  # a valid SD-JWT
        self_signed = issue_user_mandate(parties.agent, root, rich)
        error = chain_refused(
            join_hops(root, self_signed), parties, CREDENTIAL, "MANDATE_ISSUER_UNTRUSTED"
        )
        assert "may sign only a mandate" in error.message
    error = chain_refused(shown, parties, CREDENTIAL, "MANDATE_MALFORMED")  # cnf beside it
    assert "cnf outside its mandate" in error.message


def test_a_credential_names_its_holder_and_a_provider_root_none() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    assert verified_chain(join_hops(credential, hop1), parties).user_jkt == (
        parties.user.thumbprint()
    )
    root = issue_root_mandate(parties.provider, open_mandate(parties.agent, BOUNDED))
    assert verified_chain(root, parties).user_jkt is None
    # the agent holding the credential itself is shown, for the signer to refuse
    own = issue_credential(parties.issuer, parties.agent)
    hop1 = issue_user_mandate(parties.agent, own, open_mandate(parties.agent, BOUNDED))
    verified = verified_chain(join_hops(own, hop1), parties)
    assert verified.user_jkt == verified.holder_jkt == parties.agent.thumbprint()


def test_an_x5c_root_is_trusted_when_its_chain_ends_at_a_configured_root() -> None:
    parties = mandate_parties()
    pki = x5c_issuer()
    credential = issue_credential(pki.key, parties.user, x5c=pki.chain)
    hop1 = issue_user_mandate(parties.user, credential, open_mandate(parties.agent, BOUNDED))
    chain = join_hops(credential, hop1)
    oracle_verify(chain, {})
    issuers = trusted_issuers(parties, x5c_roots=[pki.root])
    assert verified_chain(chain, parties, issuers=issuers).issuer == "CN=Wallet Issuer"
    chain_refused(chain, parties, CREDENTIAL, "MANDATE_ISSUER_UNTRUSTED")  # no root configured
    other = trusted_issuers(parties, x5c_roots=[x5c_issuer().root])
    chain_refused(chain, parties, CREDENTIAL, "MANDATE_ISSUER_UNTRUSTED", issuers=other)
    late = NOW + 40 * 86400  # the leaf has expired (the mandate too, but trust comes first)
    chain_refused(chain, parties, CREDENTIAL, "MANDATE_ISSUER_UNTRUSTED", issuers=issuers, now=late)


def test_an_x5c_rooted_mandate_hop_is_never_a_provider_root() -> None:
    parties = mandate_parties()
    pki = x5c_issuer()
    item = open_mandate(parties.agent, BOUNDED)
    root = issue_hop(
        pki.key, {"delegate_payload": [item]}, typ="example+sd-jwt", header={"x5c": pki.chain}
    )
    chain_refused(
        root,
        parties,
        CREDENTIAL,
        "MANDATE_ISSUER_UNTRUSTED",
        issuers=trusted_issuers(parties, x5c_roots=[pki.root]),
    )


# --- AP2's encoded examples as fixed vectors (docs/ap2/payment_mandate.md @ e1ea56d) ----------

AP2_OPEN = (
    "eyJhbGciOiAiRVMyNTYiLCAidHlwIjogImV4YW1wbGUrc2Qtand0IiwgImtpZCI6ICJhZ2VudC1wcm92aWRlci1rZXktMSJ9."
    "eyJkZWxlZ2F0ZV9wYXlsb2FkIjogW3siLi4uIjogIjNZUnRaLWxCTmhJX1loZ2dTaHJkSGhyU3VEUFNwd012SjNWV2pVbmhEUU0ifV0sICJfc2RfYWxnIjogInNoYS0yNTYifQ."
    "ZQ_5x2hYLusuUNAA2OJloeS2w3fxZRCsSvcU-wg9fK7nlMmsbpK6EPlntD8oHq5waegxsLmSL51V5hfyaQViMg~"
    "WyJzOVdQdDJVNEdhcGNKc255RWI2YmpnIiwgeyJpZCI6ICJtZXJjaGFudF8xIiwgIm5hbWUiOiAiRGVtbyBNZXJjaGFudCIsICJ3ZWJzaXRlIjogImh0dHBzOi8vZGVtby1tZXJjaGFudC5leGFtcGxlIn1d~"
    "WyJadEtTNUZTcklBWTZIbEdCNEhvN21nIiwgeyJ2Y3QiOiAibWFuZGF0ZS5wYXltZW50Lm9wZW4uMSIsICJjb25zdHJhaW50cyI6IFt7InR5cGUiOiAicGF5bWVudC5hbW91bnRfcmFuZ2UiLCAiY3VycmVuY3kiOiAiVVNEIiwgIm1heCI6IDIwMDAwLCAibWluIjogMH0sIHsidHlwZSI6ICJwYXltZW50LmFsbG93ZWRfcGF5ZWVzIiwgImFsbG93ZWQiOiBbeyIuLi4iOiAib0VIN2kxZ3liLXpuNmF3d2p5NTdMdnp4a1FEZkQtOHR2bEMyWHVJa2dPQSJ9XX0sIHsidHlwZSI6ICJwYXltZW50LnJlZmVyZW5jZSIsICJjb25kaXRpb25hbF90cmFuc2FjdGlvbl9pZCI6ICJGekxveGJidGdRR1laeG9TTTJOSllKdGtGVFNzZGZVQm9WRVExMms3Sk44In1dLCAiY25mIjogeyJqd2siOiB7ImNydiI6ICJQLTI1NiIsICJrdHkiOiAiRUMiLCAieCI6ICJRcFN5eFBRSHkzOHhja3l2RHI1NGdaM1Q0MnpqOWlMdFY0a295YjVVMjdjIiwgInkiOiAiMzdITGQ3SkppbnhqSkluOEo3SGlqc3NvZWNCbGZoZFctZ1VMN2ZlSTlsdyJ9fSwgImlhdCI6IDE3NzczNDIzNTcsICJleHAiOiAxNzc3MzQ1OTU3fV0~"
)
AP2_CLOSED = (
    "eyJhbGciOiAiRVMyNTYiLCAidHlwIjogImtiK3NkLWp3dCJ9."
    "eyJkZWxlZ2F0ZV9wYXlsb2FkIjogW3siLi4uIjogIkcyRHVVNklqeURrRC05SXRTdGRzVW80OEM1dUpxRHMxRTlIZjVHVDNUZ00ifV0sICJpYXQiOiAxNzc3MzQyMzcwLCAiYXVkIjogImNyZWRlbnRpYWwtcHJvdmlkZXIiLCAibm9uY2UiOiAiYThiN2M2ZDVlNGYzYTJiMWMwZDllOGY3YTZiNWM0ZDMiLCAic2RfaGFzaCI6ICJ1aXhvSGVtbWZyckNTYlBSRW85ai16aUx1TWtxRXhzUGVXcndBLVBLMENrIiwgIl9zZF9hbGciOiAic2hhLTI1NiJ9."
    "TgI6w9zeL993uzAYE9fnAJXjnrpliDY5DpDKTSQoioH3msapVIz0Ex23ncQXwmsSmT3xOqkSpigQD1EYKck-dQ~"
    "WyJmVzZNY0JKSW1xT0R1aFFscEk0SWR3IiwgeyJ2Y3QiOiAibWFuZGF0ZS5wYXltZW50LjEiLCAidHJhbnNhY3Rpb25faWQiOiAiTml2V2h1cWZ6Y3ZaTmFwdklFSjItM3RzZFFMa2l1SWN5ZTJnNDZXVmdYOCIsICJwYXllZSI6IHsiaWQiOiAibWVyY2hhbnRfMSIsICJuYW1lIjogIkRlbW8gTWVyY2hhbnQiLCAid2Vic2l0ZSI6ICJodHRwczovL2RlbW8tbWVyY2hhbnQuZXhhbXBsZSJ9LCAicGF5bWVudF9hbW91bnQiOiB7ImFtb3VudCI6IDE5OTAwLCAiY3VycmVuY3kiOiAiVVNEIn0sICJwYXltZW50X2luc3RydW1lbnQiOiB7ImlkIjogInN0dWIiLCAidHlwZSI6ICJjYXJkIiwgImRlc2NyaXB0aW9uIjogIkNhcmQgXHUyMDIyXHUyMDIyXHUyMDIyNDI0MiJ9fV0~"
)
AP2_NOW = 1777342400  # between the example's iat (1777342357) and exp (1777345957)


def test_ap2_example_tokens_hash_links_recompute() -> None:
    assert join_hops(AP2_OPEN, AP2_CLOSED) == AP2_OPEN + "~" + AP2_CLOSED  # the spec's chain
    hops = sdjwt.parse_chain(AP2_OPEN[:-1] + "~~" + AP2_CLOSED, 65536)
    assert [h.text for h in hops] == [AP2_OPEN, AP2_CLOSED]
    assert hop_hash(AP2_OPEN) == "uixoHemmfrrCSbPREo9j-ziLuMkqExsPeWrwA-PK0Ck"
    assert hops[1].payload["sd_hash"] == sdjwt.digest(AP2_OPEN)
    assert [sdjwt.digest(d) for d in hops[0].disclosures] == [
        "oEH7i1gyb-zn6awwjy57LvzxkQDfD-8tvlC2XuIkgOA",
        "3YRtZ-lBNhI_YhggShrdHhrSuDPSpwMvJ3VWjUnhDQM",
    ]
    assert sdjwt.digest(hops[1].disclosures[0]) == "G2DuU6IjyDkD-9ItStdsUo48C5uJqDs1E9Hf5GT3TgM"
    sdjwt.check_link(hops[1], hops[0])  # our link check accepts the closed hop's sd_hash
    with pytest.raises(MandateError) as caught:  # ... and only against the open token
        sdjwt.check_link(hops[1], hops[1])
    assert caught.value.reason == "MANDATE_LINK_INVALID"


def test_ap2_example_closed_hop_is_signed_by_the_open_mandates_cnf_key() -> None:
    hops = sdjwt.parse_chain(AP2_OPEN[:-1] + "~~" + AP2_CLOSED, 65536)
    opened = sdjwt.resolve(hops[0])
    (item,) = opened["delegate_payload"]
    sdjwt.check_header(hops[1], frozenset({"kb+sd-jwt"}))
    sdjwt.check_es256(hops[1], p256_key(item["cnf"]["jwk"]))
    # the reference implementation agrees
    SDJWTVerifier(AP2_CLOSED, lambda _i, _h: JWK(**item["cnf"]["jwk"])).get_verified_payload()
    with pytest.raises(MandateError) as caught:
        sdjwt.check_es256(hops[1], ec_public_key(mandate_key()))
    assert caught.value.reason == "MANDATE_SIGNATURE_INVALID"
    with pytest.raises(MandateError) as unbounded:  # a range and no budget: no total bound
        mandate_constraints(item, decimals_of)
    assert unbounded.value.reason == "MANDATE_UNBOUNDED"
    bounded = {**item, "constraints": [*item["constraints"], budget(500)]}
    bounds = mandate_constraints(bounded, decimals_of)
    assert bounds.budget_minor == 50000
    assert (bounds.min_minor, bounds.max_minor, bounds.payees) == (0, 20000, ("merchant_1",))
    assert bounds.reference == "FzLoxbbtgQGYZxoSM2NJYJtkFTSsdfUBoVEQ12k7JN8"
    assert item["exp"] > AP2_NOW >= item["iat"]
    (closed,) = sdjwt.resolve(hops[1])["delegate_payload"]
    assert closed["vct"] == CLOSED_PAYMENT and closed["payment_amount"]["amount"] == 19900


def test_ap2_example_chain_with_another_key_for_its_kid_is_refused() -> None:
    # The agent provider's key is not published: the root can only be shown NOT to verify.
    parties = mandate_parties()
    issuers = TrustedIssuers(
        keys={"agent-provider-key-1": TrustedIssuer(ec_public_key(mandate_key()), True)},
        x5c_roots=(),
    )
    chain_refused(
        AP2_OPEN[:-1] + "~~" + AP2_CLOSED,
        parties,
        CREDENTIAL,
        "MANDATE_SIGNATURE_INVALID",
        issuers=issuers,
        now=AP2_NOW,
    )


# --- refusals: the credential ----------------------------------------------------------------


def _edit_disclosure(hop: str, index: int, edit: Any) -> str:
    jwt, *rest = hop.split("~")
    decoded = decoded_disclosures(hop)
    text = json.dumps(edit(decoded[index])).encode()
    rest[index] = base64.urlsafe_b64encode(text).rstrip(b"=").decode()
    return "~".join([jwt, *rest])


def mandate_index(hop: str) -> int:
    return next(i for i, d in enumerate(decoded_disclosures(hop)) if "vct" in d[-1])


def test_a_tampered_disclosure_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    at = mandate_index(hop1)
    salted = _edit_disclosure(hop1, at, lambda d: [d[0] + "x", d[1]])
    richer = _edit_disclosure(hop1, at, lambda d: [d[0], {**d[1], "constraints": [budget(1e6)]}])
    for hop in (salted, richer):
        error = chain_refused(
            join_hops(credential, hop), parties, CREDENTIAL, "MANDATE_DISCLOSURE_INVALID"
        )
        assert "answers no digest" in error.message
        # The reference implementation does not refuse it: it drops the unreferenced
        # disclosure, and with it the mandate (which we refuse instead of reading none).
        oracle = oracle_verify(join_hops(credential, hop), {ISSUER_KID: parties.issuer})
        assert oracle[1]["delegate_payload"] == []


def test_a_disclosure_no_digest_references_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    extra = base64.urlsafe_b64encode(json.dumps(["salt-1", "max", 10**9]).encode())
    hop = hop1 + extra.rstrip(b"=").decode() + "~"
    chain_refused(join_hops(credential, hop), parties, CREDENTIAL, "MANDATE_DISCLOSURE_INVALID")


def test_a_duplicate_disclosure_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    disclosure = hop1.split("~")[1]
    error = chain_refused(
        join_hops(credential, hop1 + disclosure + "~"),
        parties,
        CREDENTIAL,
        "MANDATE_DISCLOSURE_INVALID",
    )
    assert "twice" in error.message


def test_a_hop_signed_by_a_key_other_than_the_previous_cnf_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    rogue = mandate_key()
    closed = issue_closed_hop(rogue, hop1)  # a rogue agent key
    chain_refused(
        join_hops(credential, hop1, closed), parties, CREDENTIAL, "MANDATE_SIGNATURE_INVALID"
    )
    item = open_mandate(parties.agent, BOUNDED)
    forged = issue_user_mandate(rogue, credential, item)  # not the credential's user
    chain_refused(join_hops(credential, forged), parties, CREDENTIAL, "MANDATE_SIGNATURE_INVALID")


def test_an_untrusted_issuer_kid_is_refused() -> None:
    parties = mandate_parties()
    credential = issue_credential(mandate_key("stranger"), parties.user, kid="stranger")
    hop1 = issue_user_mandate(parties.user, credential, open_mandate(parties.agent, BOUNDED))
    chain_refused(join_hops(credential, hop1), parties, CREDENTIAL, "MANDATE_ISSUER_UNTRUSTED")
    impostor = issue_credential(mandate_key(), parties.user)  # the trusted kid, another key
    hop1 = issue_user_mandate(parties.user, impostor, open_mandate(parties.agent, BOUNDED))
    chain_refused(join_hops(impostor, hop1), parties, CREDENTIAL, "MANDATE_SIGNATURE_INVALID")


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "ES256K", "RS256"])
def test_an_alg_other_than_es256_is_refused(alg: str) -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    header = {"alg": alg, "typ": "kb+sd-jwt+kb"}
    error = chain_refused(
        join_hops(credential, with_jws_header(hop1, header)),
        parties,
        CREDENTIAL,
        "MANDATE_SIGNATURE_INVALID",
    )
    assert f"alg {alg!r} is not ES256" in error.message


def test_hops_signed_with_hs256_or_es384_are_refused() -> None:
    parties = mandate_parties()
    credential = issue_credential(parties.issuer, parties.user)
    item = open_mandate(parties.agent, BOUNDED)
    hs256 = issue_user_mandate(
        JWK.generate(kty="oct", size=256), credential, item, sign_alg="HS256"
    )
    es384 = issue_user_mandate(mandate_key(curve="P-384"), credential, item, sign_alg="ES384")
    for hop in (hs256, es384):
        chain = join_hops(credential, hop)
        error = chain_refused(chain, parties, CREDENTIAL, "MANDATE_SIGNATURE_INVALID")
        assert "is not ES256" in error.message


def test_a_header_with_crit_or_another_key_locator_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    for extra in ({"crit": ["exp"], "exp": 1}, {"jku": "https://x.example"}, {"x5c": ["AA=="]}):
        header = {"alg": "ES256", "typ": "kb+sd-jwt+kb", **extra}
        chain_refused(
            join_hops(credential, with_jws_header(hop1, header)),
            parties,
            CREDENTIAL,
            "MANDATE_MALFORMED",
        )


def test_a_wrong_typ_is_refused() -> None:
    parties = mandate_parties()
    credential = issue_credential(parties.issuer, parties.user)
    item = open_mandate(parties.agent, BOUNDED)
    as_closed = issue_user_mandate(parties.user, credential, item, typ="kb+sd-jwt")
    chain_refused(join_hops(credential, as_closed), parties, CREDENTIAL, "MANDATE_MALFORMED")
    kb_root = issue_credential(parties.issuer, parties.user, typ="kb+jwt")
    hop1 = issue_user_mandate(parties.user, kb_root, item)
    chain_refused(join_hops(kb_root, hop1), parties, CREDENTIAL, "MANDATE_MALFORMED")
    hop1 = issue_user_mandate(parties.user, credential, item)
    closed = issue_closed_hop(parties.agent, hop1, typ="kb+sd-jwt+kb")
    chain_refused(join_hops(credential, hop1, closed), parties, CREDENTIAL, "MANDATE_MALFORMED")


def test_a_hop_linked_to_another_hop_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    _, other = chain_parts(parties)  # the same user's mandate over another credential
    spliced = issue_closed_hop(parties.agent, other)  # a closed hop made for another mandate
    chain_refused(join_hops(credential, hop1, spliced), parties, CREDENTIAL, "MANDATE_LINK_INVALID")
    second = issue_credential(parties.issuer, parties.user)
    chain_refused(join_hops(second, hop1), parties, CREDENTIAL, "MANDATE_LINK_INVALID")
    fewer = withhold(hop1, lambda d: d[-1] == merchant("m2"))  # sd_hash is over what is shown
    closed = issue_closed_hop(parties.agent, hop1)
    chain_refused(join_hops(credential, fewer, closed), parties, CREDENTIAL, "MANDATE_LINK_INVALID")
    unlinked = issue_hop(
        parties.agent, {"iat": NOW, "aud": "paywarden", "nonce": "n"}, typ="kb+sd-jwt"
    )
    chain_refused(
        join_hops(credential, hop1, unlinked), parties, CREDENTIAL, "MANDATE_LINK_INVALID"
    )


def test_a_closed_hop_for_another_audience_or_with_a_cnf_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    closed = issue_closed_hop(parties.agent, hop1, aud="credential-provider")
    chain_refused(join_hops(credential, hop1, closed), parties, CREDENTIAL, "MANDATE_LINK_INVALID")
    handing = issue_closed_hop(parties.agent, hop1, claims={"cnf": {"jwk": {"kty": "EC"}}})
    chain_refused(join_hops(credential, hop1, handing), parties, CREDENTIAL, "MANDATE_MALFORMED")
    reopened = issue_closed_hop(parties.agent, hop1, mandate=open_mandate(parties.agent, BOUNDED))
    chain_refused(join_hops(credential, hop1, reopened), parties, CREDENTIAL, "MANDATE_MALFORMED")
    for nonce in ("", "x" * 257, "tab\there"):
        bad = issue_closed_hop(parties.agent, hop1, nonce=nonce)
        chain_refused(join_hops(credential, hop1, bad), parties, CREDENTIAL, "MANDATE_MALFORMED")


def test_a_trailing_key_binding_jwt_or_a_fourth_hop_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    closed = issue_closed_hop(parties.agent, hop1)
    kb_jwt = closed.split("~")[0]
    chain_refused(join_hops(credential, hop1) + kb_jwt, parties, CREDENTIAL, "MANDATE_MALFORMED")
    inside = join_hops(credential + kb_jwt + "~", hop1)
    chain_refused(inside, parties, CREDENTIAL, "MANDATE_MALFORMED")
    again = issue_closed_hop(parties.agent, closed)
    chain_refused(
        join_hops(credential, hop1, closed, again), parties, CREDENTIAL, "MANDATE_MALFORMED"
    )
    chain_refused(join_hops(credential), parties, CREDENTIAL, "MANDATE_MALFORMED")


# --- refusals: the mandate -------------------------------------------------------------------


def test_an_expired_mandate_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    error = chain_refused(
        join_hops(credential, hop1), parties, MANDATE, "MANDATE_EXPIRED", now=NOW + 3600
    )
    assert "the mandate expired" in error.message
    assert (
        verified_chain(join_hops(credential, hop1), parties, now=NOW + 3599).expires_at
        == NOW + 3600
    )


def test_a_credential_without_a_plain_exp_or_past_it_is_refused() -> None:
    # A4b/A4c/A4e: an exp selectively disclosed (withheld once passed, or stripped after
    # the user linked by issuer_jwt_hash), or none at all.
    parties = mandate_parties()
    item = open_mandate(parties.agent, BOUNDED)
    selective: dict[Any, Any] = {SDObj("exp"): NOW - 10}
    for claims, link, hidden, reason in (
        (selective, "sd_hash", True, "MANDATE_NO_EXPIRY"),
        (selective, "issuer_jwt_hash", True, "MANDATE_NO_EXPIRY"),
        ({SDObj("exp"): NOW + 10}, "sd_hash", False, "MANDATE_NO_EXPIRY"),
        ({}, "sd_hash", False, "MANDATE_NO_EXPIRY"),
        ({"exp": NOW}, "sd_hash", False, "MANDATE_EXPIRED"),
        ({"exp": str(NOW + 10)}, "sd_hash", False, "MANDATE_MALFORMED"),
    ):
        credential = issue_credential(parties.issuer, parties.user, ttl=None, claims=claims)
        signed = issue_user_mandate(parties.user, credential, item, link=link)
        if hidden:
            credential = withhold(credential, lambda d: d[1] == "exp")
            if link == "sd_hash":
                signed = issue_user_mandate(parties.user, credential, item)
        chain = join_hops(credential, signed)
        oracle_verify(chain, {ISSUER_KID: parties.issuer})  # the SD-JWTs are valid
        # A credential without its own expiry fails as a credential (AP2
        # invalid_credential); one past it is an expired mandate, as any hop's expiry.
        code = MANDATE if reason == "MANDATE_EXPIRED" else CREDENTIAL
        chain_refused(chain, parties, code, reason)
    credential = issue_credential(parties.issuer, parties.user, ttl=1)
    hop1 = issue_user_mandate(parties.user, credential, item)
    assert verified_chain(join_hops(credential, hop1), parties).expires_at == NOW + 1


def test_a_mandate_without_exp_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties, ttl=None)
    chain_refused(join_hops(credential, hop1), parties, MANDATE, "MANDATE_NO_EXPIRY")


def test_an_iat_in_the_future_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    chain_refused(
        join_hops(credential, hop1), parties, MANDATE, "MANDATE_NOT_YET_VALID", now=NOW - 61
    )
    assert verified_chain(join_hops(credential, hop1), parties, now=NOW - 60).issued_at == NOW


def test_a_stale_closed_hop_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    closed = issue_closed_hop(parties.agent, hop1, now=NOW - 301)
    chain_refused(join_hops(credential, hop1, closed), parties, MANDATE, "MANDATE_EXPIRED")


@pytest.mark.parametrize(
    "vct", ["mandate.payment.1", "mandate.payment.open", "mandate.checkout.open.1"]
)
def test_another_vct_is_refused(vct: str) -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties, vct=vct)
    chain_refused(join_hops(credential, hop1), parties, MANDATE, "MANDATE_VCT_MISMATCH")
    assert verified_chain(join_hops(credential, hop1), parties, vct=[vct]).vct == vct


# --- refusals: the constraints ---------------------------------------------------------------


@pytest.mark.parametrize(
    "constraint",
    [
        {"type": "payment.cumulative", "max_total": 50000, "currency": "USD"},
        {"type": "payment.allowed_payment_instruments", "allowed": [{"id": "pi", "type": "card"}]},
        {"type": "payment.allowed_pisps", "allowed": []},
        {"type": "payment.budget", "max": 10, "currency": "USD", "period": "MONTHLY"},
    ],
)
def test_an_unknown_constraint_is_refused(constraint: dict[str, Any]) -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties, [budget(100), constraint])
    chain_refused(join_hops(credential, hop1), parties, UNRESOLVED, "MANDATE_CONSTRAINT_UNKNOWN")


def test_a_preset_payment_instrument_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties, payment_instrument={"id": "pi", "type": "card"})
    chain_refused(join_hops(credential, hop1), parties, UNRESOLVED, "MANDATE_CONSTRAINT_UNKNOWN")


def test_an_allow_list_with_every_entry_withheld_is_refused() -> None:
    parties = mandate_parties()
    credential, hop1 = chain_parts(parties)
    bare = withhold(hop1, lambda d: d[-1] in (merchant("m1"), merchant("m2")))
    error = chain_refused(
        join_hops(credential, bare), parties, UNRESOLVED, "MANDATE_ALLOWLIST_WITHHELD"
    )
    assert "no allowed payee" in error.message
    oracle_verify(join_hops(credential, bare), {ISSUER_KID: parties.issuer})  # valid SD-JWT


def test_a_withheld_constraint_is_refused() -> None:
    parties = mandate_parties()
    hidden = [budget(100), SDObj(recurrence("DAILY", 3))]
    credential, hop1 = chain_parts(parties, hidden)
    assert verified_chain(join_hops(credential, hop1), parties).constraints.max_uses == 3
    bare = withhold(hop1, lambda d: d[-1] == recurrence("DAILY", 3))
    chain_refused(join_hops(credential, bare), parties, UNRESOLVED, "MANDATE_CONSTRAINT_UNKNOWN")


def test_an_unbounded_mandate_is_refused() -> None:
    parties = mandate_parties()
    for unbounded in (
        [amount_range(5000)],
        [recurrence("DAILY", 3)],
        [amount_range(5000), recurrence("DAILY")],
        [reference()],
    ):
        credential, hop1 = chain_parts(parties, unbounded)
        chain_refused(join_hops(credential, hop1), parties, UNRESOLVED, "MANDATE_UNBOUNDED")
    credential, hop1 = chain_parts(parties, [amount_range(5000), recurrence("WEEKLY", 4)])
    bounds = verified_chain(join_hops(credential, hop1), parties).constraints
    assert (bounds.max_minor, bounds.max_uses, bounds.budget_minor) == (5000, 4, None)
    assert bounds.spacing_seconds == 7 * 86400


def test_an_unknown_currency_or_mixed_currencies_are_refused() -> None:
    parties = mandate_parties()
    for listed in ([budget(100, "XXX")], [budget(100), amount_range(500, currency="EUR")]):
        credential, hop1 = chain_parts(parties, listed)
        chain_refused(
            join_hops(credential, hop1), parties, UNRESOLVED, "MANDATE_CONSTRAINT_INVALID"
        )


def test_a_budget_with_more_fractional_digits_than_its_currency_is_refused() -> None:
    parties = mandate_parties()
    for listed in ([budget(1.005)], [budget(1000.5, "JPY")], [budget("100.00")]):
        credential, hop1 = chain_parts(parties, listed)
        chain_refused(
            join_hops(credential, hop1), parties, UNRESOLVED, "MANDATE_CONSTRAINT_INVALID"
        )
    credential, hop1 = chain_parts(parties, [budget(1000, "JPY")])
    assert verified_chain(join_hops(credential, hop1), parties).constraints.budget_minor == 1000
    credential, hop1 = chain_parts(parties, [budget(2.5, "KWD")])
    assert verified_chain(join_hops(credential, hop1), parties).constraints.budget_minor == 2500


def test_constraints_narrow_each_other_and_the_presets() -> None:
    parties = mandate_parties()
    listed = [
        amount_range(20000, 100),
        budget(150),
        allowed_payees(merchant("m1"), merchant("m2")),
        execution_date("2026-09-21T00:00:00Z", "2026-09-30T23:59:59+02:00"),
        reference("r"),
    ]
    credential, hop1 = chain_parts(
        parties, listed, payee=merchant("m2"), payment_amount={"amount": 1500, "currency": "USD"}
    )
    bounds = verified_chain(join_hops(credential, hop1), parties).constraints
    assert (bounds.min_minor, bounds.max_minor, bounds.budget_minor) == (1500, 1500, 15000)
    assert (bounds.payees, bounds.reference) == (("m2",), "r")
    assert (bounds.not_before, bounds.not_after) == (1789948800, 1790805599)
    for bad in (
        [amount_range(100, 200), budget(1)],
        [amount_range(1.5), budget(1)],
        [budget(1), budget(2)],
        [budget(1), execution_date("2026-09-21")],
        [budget(1), allowed_payees({"name": "no id"})],
    ):
        credential, hop1 = chain_parts(parties, bad)
        with pytest.raises(MandateError) as caught:
            verified_chain(join_hops(credential, hop1), parties)
        assert caught.value.code == UNRESOLVED, bad


# --- what a refusal echoes -------------------------------------------------------------------


def test_a_refusal_echoes_at_most_64_characters_of_a_value_from_the_chain() -> None:
    # A 30 KB vct echoed whole made the gRPC status exceed 16 KB.
    parties = mandate_parties()
    huge = "x" * 30_000
    item = open_mandate(parties.agent, BOUNDED)
    credential = issue_credential(parties.issuer, parties.user)
    chains = {
        "MANDATE_VCT_MISMATCH": chain_parts(parties, vct=huge),
        "MANDATE_CONSTRAINT_UNKNOWN": chain_parts(parties, [{"type": huge}]),
        "MANDATE_CONSTRAINT_INVALID": chain_parts(parties, [budget(1), recurrence(huge)]),
        "MANDATE_ISSUER_UNTRUSTED": (
            issue_credential(parties.issuer, parties.user, kid=huge),
            None,
        ),
        "MANDATE_MALFORMED": (issue_credential(parties.issuer, parties.user, typ=huge), None),
        "MANDATE_SIGNATURE_INVALID": (
            credential,
            with_jws_header(issue_user_mandate(parties.user, credential, item), {"alg": huge}),
        ),
    }
    for reason, (first, second) in chains.items():
        hops = [first] if second is None else [first, second]
        with pytest.raises(MandateError) as caught:
            verified_chain(join_hops(*hops), parties)
        message = caught.value.message
        assert caught.value.reason == reason, message
        assert repr(huge)[:61] + "..." in message and "x" * 62 not in message, message
        assert len(message) <= 200 and len(str(caught.value)) <= 250
    item_member = chain_parts(parties, None, **{huge: 1})
    with pytest.raises(MandateError) as caught:
        verified_chain(join_hops(*item_member), parties)
    assert caught.value.reason == "MANDATE_CONSTRAINT_UNKNOWN"
    assert len(caught.value.message) <= 200


def test_an_x5c_certificate_with_an_extension_twice_is_refused_not_an_error() -> None:
    """cryptography raises DuplicateExtension (not a ValueError) for a certificate whose
    extension is there twice; it must refuse the chain, not escape as an internal error."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twice")])
    at = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(at - datetime.timedelta(days=1))
        .not_valid_after(at + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    # keyUsage's OID (2.5.29.15) rewritten as basicConstraints' (2.5.29.19): one extension twice
    twice = der.replace(bytes.fromhex("0603551d0f"), bytes.fromhex("0603551d13"))
    assert twice != der
    x5c = [base64.b64encode(c).decode() for c in (der, twice)]
    header = {"alg": "ES256", "typ": "dc+sd-jwt", "x5c": x5c}
    encoded = [
        base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=").decode()
        for p in (header, {"iat": NOW})
    ]
    token = f"{encoded[0]}.{encoded[1]}.{'A' * 86}~"
    issuers = TrustedIssuers({}, (certificate,))
    with pytest.raises(MandateError) as caught:
        verify_mandate(token, issuers, now=NOW, decimals=decimals_of)
    assert caught.value.reason == "MANDATE_ISSUER_UNTRUSTED"

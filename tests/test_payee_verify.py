"""A payee checks a payment offline: ``paywarden.verify`` and ``paywarden verify``.

The payments are signed by the real signer (in-process stack: SoftHSM2 token, store,
mutual TLS) and checked against the JWKS a payee exports with GetPublicKeys. What the
signer would never sign (``alg`` none, a key not in the set, claims it does not write)
is made with pyjwt or by hand, never with the code under test. A genuine payment is also
checked with joserfc and pyjwt against the same JWKS: the export is any JOSE library's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws as joserfc_jws
from joserfc.jwk import KeySet
from paywarden.policy.vocabulary import KeyState, Reason
from paywarden.signer.config import LimitsConfig
from paywarden.signer.core import keys as signer_keys
from paywarden.signer.core import payments as signer_payments
from paywarden.verify import Jwks, PaymentRejected, VerifiedPayment, verify_payment
from paywarden.verify import jwks as verify_jwks
from paywarden.verify import payment as verify_module

from tests.helpers import Stack
from tests.support.cli import paywarden
from tests.support.clients import Api
from tests.support.payments import (
    OTHER_PAYEE,
    PAYEE,
    b64,
    exported_jwks,
    jwk_of,
    paywarden_with_input,
    pyjwt_es256,
    sign_payment,
    unb64,
    with_header,
)


@dataclass(frozen=True)
class Genuine:
    """One payment the signer signed for PAYEE, and the JWKS it is checked against."""

    jws: str
    decision_id: str
    jwks: str
    claims: dict[str, Any]

    @property
    def during(self) -> int:
        """A moment within the payment's lifetime."""
        return int(self.claims["iat"])


@pytest.fixture(scope="module")
def genuine(api: Api, stack: Stack) -> Genuine:
    resp = sign_payment(api, stack, amount="4.20")
    claims = json.loads(resp.canonical_payload)
    return Genuine(resp.jws, resp.decision_id, exported_jwks(api), claims)


def rejection(jws: str, jwks: str, *, payee: str = PAYEE, now: float | None = None) -> Reason:
    with pytest.raises(PaymentRejected) as info:
        verify_payment(jws, jwks, payee=payee, now=now)
    return info.value.reason


# -- the acceptance: one genuine payment accepted, five forgeries rejected ------------------


def test_a_genuine_payment_is_accepted_with_its_claims(genuine: Genuine) -> None:
    payment = verify_payment(genuine.jws, genuine.jwks, payee=PAYEE, now=genuine.during)
    assert isinstance(payment, VerifiedPayment)
    assert (payment.payee, payment.amount, payment.asset) == (PAYEE, "4.20", "USD")
    assert payment.decision_id == genuine.decision_id == genuine.claims["jti"]
    assert (payment.key_id, payment.key_state) == ("payments.v1", KeyState.ACTIVE)
    assert payment.payload == unb64(genuine.jws.split(".")[1])


def test_two_independent_libraries_accept_it_against_the_same_jwks(genuine: Genuine) -> None:
    keys = json.loads(genuine.jwks)["keys"]
    (jwk,) = [k for k in keys if k["kid"] == "payments.v1"]
    payload = unb64(genuine.jws.split(".")[1])
    assert jwt.PyJWS().decode(genuine.jws, jwt.PyJWK.from_dict(jwk).key, ["ES256"]) == payload
    key_set = KeySet.import_key_set(json.loads(genuine.jwks))
    assert joserfc_jws.deserialize_compact(genuine.jws, key_set).payload == payload


def test_a_changed_byte_is_rejected(genuine: Genuine) -> None:
    header, payload, signature = genuine.jws.split(".")
    raw = bytearray(unb64(payload))
    raw[raw.index(b"4.20")] = ord("9")  # "9.20": the amount, one byte
    assert rejection(f"{header}.{b64(bytes(raw))}.{signature}", genuine.jwks) is (
        Reason.BAD_SIGNATURE
    )
    sig = bytearray(unb64(signature))
    sig[10] ^= 0x01
    assert rejection(f"{header}.{payload}.{b64(bytes(sig))}", genuine.jwks) is (
        Reason.BAD_SIGNATURE
    )


def test_no_single_character_changed_anywhere_is_accepted(genuine: Genuine) -> None:
    for i, ch in enumerate(genuine.jws):
        if ch == ".":
            continue
        other = "A" if ch != "A" else "B"
        changed = genuine.jws[:i] + other + genuine.jws[i + 1 :]
        with pytest.raises(PaymentRejected):
            verify_payment(changed, genuine.jwks, payee=PAYEE, now=genuine.during)


def test_nothing_but_the_compact_jws_itself_is_accepted(genuine: Genuine) -> None:
    for padded in (genuine.jws + "\n", " " + genuine.jws, genuine.jws + "."):
        assert rejection(padded, genuine.jwks, now=genuine.during) is Reason.JWS_MALFORMED


_PIECES = st.sampled_from(
    ["eyJhbGciOiJFUzI1NiJ9", "e30", "bnVsbA", "W10", "AA", "_-", "=", ".", "\u00e9", " ", ""]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(min_value=0, max_value=400),
    junk=st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=6).map("".join),
)
def test_whatever_the_input_the_only_failure_is_a_rejection(
    genuine: Genuine, cut: int, junk: str
) -> None:
    """Fail closed, never crash: cut, spliced and random JWS give a PaymentRejected and
    nothing else (no ValueError, KeyError, UnicodeError ... escapes)."""
    for jws in {genuine.jws[:cut] + junk, junk + genuine.jws[cut:], junk} - {genuine.jws}:
        with pytest.raises(PaymentRejected):
            verify_payment(jws, genuine.jwks, payee=PAYEE, now=genuine.during)
    jwks = genuine.jwks[:cut] + junk
    if jwks != genuine.jwks:
        with pytest.raises(PaymentRejected):
            verify_payment(genuine.jws, jwks, payee=PAYEE, now=genuine.during)


def test_a_payment_to_another_payee_is_rejected(genuine: Genuine) -> None:
    assert rejection(genuine.jws, genuine.jwks, payee=OTHER_PAYEE, now=genuine.during) is (
        Reason.WRONG_PAYEE
    )
    # No case folding, trimming or prefix matching: only the payee's own identifier.
    for near in ("Acme-Weather", "acme-weather ", "acme-weathe", "acme-weather2"):
        assert rejection(genuine.jws, genuine.jwks, payee=near, now=genuine.during) is (
            Reason.WRONG_PAYEE
        )


def test_an_expired_payment_is_rejected(genuine: Genuine) -> None:
    exp = int(genuine.claims["exp"])
    verify_payment(genuine.jws, genuine.jwks, payee=PAYEE, now=exp - 1)
    for moment in (exp, exp + 1, exp + 86_400):
        assert rejection(genuine.jws, genuine.jwks, now=moment) is Reason.PAYMENT_EXPIRED


def test_a_payment_signed_by_a_key_not_in_the_jwks_is_rejected(genuine: Genuine) -> None:
    outsider = ec.generate_private_key(ec.SECP256R1())
    payload = unb64(genuine.jws.split(".")[1])  # the genuine claims, another key
    assert rejection(pyjwt_es256(payload, outsider, "payments.v9"), genuine.jwks) is (
        Reason.UNKNOWN_KEY
    )
    # Claiming a kid of the set does not help: the signature is checked with that key.
    assert rejection(pyjwt_es256(payload, outsider, "payments.v1"), genuine.jwks) is (
        Reason.BAD_SIGNATURE
    )


def test_alg_none_is_rejected(genuine: Genuine) -> None:
    payload = unb64(genuine.jws.split(".")[1])
    unsigned = jwt.PyJWS().encode(payload, "", algorithm="none")
    assert unsigned.endswith(".")  # pyjwt's unsecured JWS: an empty signature
    assert rejection(unsigned, genuine.jwks, now=genuine.during) is Reason.ALG_NOT_ALLOWED
    # The genuine header with "none", with or without the genuine signature.
    none = {"alg": "none", "kid": "payments.v1", "typ": signer_payments.JWS_TYPE}
    assert rejection(with_header(genuine.jws, none), genuine.jwks) is Reason.ALG_NOT_ALLOWED
    stripped = with_header(genuine.jws, none).rpartition(".")[0] + "."
    assert rejection(stripped, genuine.jwks) is Reason.ALG_NOT_ALLOWED


# -- the header: only what the signer writes ------------------------------------------------


TYP = signer_payments.JWS_TYPE
HEADERS: list[tuple[dict[str, Any], Reason]] = [
    ({"alg": "HS256", "kid": "payments.v1", "typ": TYP}, Reason.ALG_NOT_ALLOWED),
    ({"alg": "es256", "kid": "payments.v1", "typ": TYP}, Reason.ALG_NOT_ALLOWED),
    ({"alg": "ES384", "kid": "payments.v1", "typ": TYP}, Reason.ALG_NOT_ALLOWED),
    ({"kid": "payments.v1", "typ": TYP}, Reason.ALG_NOT_ALLOWED),
    ({"alg": "ES256", "crit": ["exp"], "kid": "payments.v1"}, Reason.JWS_HEADER_NOT_ALLOWED),
    (
        {"alg": "ES256", "jku": "https://evil.example/jwks", "kid": "payments.v1", "typ": TYP},
        Reason.JWS_HEADER_NOT_ALLOWED,
    ),
    ({"alg": "ES256", "kid": "payments.v1", "typ": TYP, "x5u": "u"}, Reason.JWS_HEADER_NOT_ALLOWED),
    ({"alg": "ES256", "jwk": {"kty": "EC"}, "kid": "payments.v1"}, Reason.JWS_HEADER_NOT_ALLOWED),
    ({"alg": "ES256", "kid": "payments.v1", "typ": "JWT"}, Reason.TYP_NOT_ALLOWED),
    ({"alg": "ES256", "kid": "payments.v1"}, Reason.TYP_NOT_ALLOWED),
    ({"alg": "ES256", "typ": TYP}, Reason.JWS_MALFORMED),
    ({"alg": "ES256", "kid": ["payments.v1"], "typ": TYP}, Reason.JWS_MALFORMED),
    ({"alg": "ES256", "kid": "payments.v0", "typ": TYP}, Reason.UNKNOWN_KEY),
]


@pytest.mark.parametrize(
    ("header", "reason"), HEADERS, ids=[f"{r}-{i}" for i, (_, r) in enumerate(HEADERS)]
)
def test_a_header_the_signer_never_writes_is_rejected(
    genuine: Genuine, header: dict[str, Any], reason: Reason
) -> None:
    assert rejection(with_header(genuine.jws, header), genuine.jwks) is reason


def test_a_header_not_in_rfc8785_form_is_rejected(genuine: Genuine) -> None:
    spaced = b'{"alg": "ES256", "kid": "payments.v1", "typ": "paywarden-payment+jwt"}'
    assert rejection(with_header(genuine.jws, spaced), genuine.jwks) is Reason.JWS_NOT_CANONICAL
    twice = b'{"alg":"none","alg":"ES256","kid":"payments.v1","typ":"paywarden-payment+jwt"}'
    assert rejection(with_header(genuine.jws, twice), genuine.jwks) is Reason.JWS_MALFORMED


@pytest.mark.parametrize(
    "jws",
    ["", "a.b", "a.b.c.d", "eyJ.eyJ.", "é.é.é", "e30.e30.e30", "eyJhbGciOiJFUzI1NiJ9==.e30.AA"],
)
def test_what_is_no_compact_jws_is_malformed(genuine: Genuine, jws: str) -> None:
    assert rejection(jws, genuine.jwks) in {Reason.JWS_MALFORMED, Reason.ALG_NOT_ALLOWED}


# -- the claims: exactly the signer's, canonical (a test key the test's JWKS holds) ---------


@pytest.fixture(scope="module")
def test_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _test_jwks(key: ec.EllipticCurvePrivateKey, **extra: Any) -> str:
    return json.dumps({"keys": [{**jwk_of(key, "test.v1"), **extra}]})


def _changed_claims(genuine: Genuine, **changes: Any) -> dict[str, Any]:
    out = {**genuine.claims, **changes}
    return {k: v for k, v in out.items() if v is not None}


def _jcs(claims: dict[str, Any]) -> bytes:
    return json.dumps(claims, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


CLAIM_CASES: list[tuple[str, dict[str, Any], Reason]] = [
    ("extra claim", {"memo": "pay twice"}, Reason.CLAIMS_INVALID),
    ("missing claim", {"nonce": None}, Reason.CLAIMS_INVALID),
    ("amount as a number", {"amount": 4}, Reason.CLAIMS_INVALID),
    ("exp as text", {"exp": "9999999999"}, Reason.CLAIMS_INVALID),
    ("exp before iat", {"exp": 1}, Reason.CLAIMS_INVALID),
    ("a lifetime over a day", {"exp": 2**40}, Reason.CLAIMS_INVALID),
    ("another typ", {"typ": "paywarden.receipt.v1"}, Reason.TYP_NOT_ALLOWED),
    ("a float", {"amount": 4.2}, Reason.JWS_MALFORMED),
    ("a nested object", {"payee": {"id": PAYEE}}, Reason.JWS_MALFORMED),
    ("an unsafe integer", {"iat": 2**53}, Reason.JWS_MALFORMED),
]


@pytest.mark.parametrize(
    ("changes", "reason"), [c[1:] for c in CLAIM_CASES], ids=[c[0] for c in CLAIM_CASES]
)
def test_claims_the_signer_never_writes_are_rejected_though_signed(
    genuine: Genuine, test_key: ec.EllipticCurvePrivateKey, changes: dict[str, Any], reason: Reason
) -> None:
    token = pyjwt_es256(_jcs(_changed_claims(genuine, **changes)), test_key, "test.v1")
    assert rejection(token, _test_jwks(test_key), now=genuine.during) is reason


def test_the_same_claims_signed_as_the_signer_would_are_accepted(
    genuine: Genuine, test_key: ec.EllipticCurvePrivateKey
) -> None:
    """The control for the cases above: pyjwt over the canonical claims passes."""
    token = pyjwt_es256(_jcs(genuine.claims), test_key, "test.v1")
    assert verify_payment(token, _test_jwks(test_key), payee=PAYEE, now=genuine.during)


def test_a_payload_not_in_rfc8785_form_is_rejected_though_signed(
    genuine: Genuine, test_key: ec.EllipticCurvePrivateKey
) -> None:
    spaced = json.dumps(genuine.claims, sort_keys=True).encode()
    unsorted = json.dumps(dict(reversed(genuine.claims.items())), separators=(",", ":"))
    escaped = json.dumps(genuine.claims, separators=(",", ":"), sort_keys=True).replace(
        "acme", "\\u0061cme"
    )
    jwks = _test_jwks(test_key)
    for payload in (spaced, unsorted.encode(), escaped.encode()):
        token = pyjwt_es256(payload, test_key, "test.v1")
        assert rejection(token, jwks, now=genuine.during) is Reason.JWS_NOT_CANONICAL
    twice = _jcs(genuine.claims).replace(b'{"amount"', b'{"amount":"0.01","amount"', 1)
    token = pyjwt_es256(twice, test_key, "test.v1")
    assert rejection(token, jwks, now=genuine.during) is Reason.JWS_MALFORMED


def test_issued_in_the_future_beyond_the_leeway_is_rejected(genuine: Genuine) -> None:
    iat = genuine.during
    verify_payment(genuine.jws, genuine.jwks, payee=PAYEE, now=iat - 60)
    assert rejection(genuine.jws, genuine.jwks, now=iat - 61) is Reason.PAYMENT_NOT_YET_VALID


# -- the key's state, and the key set itself -----------------------------------------------


def _restated(jwks: str, kid: str, **members: Any) -> str:
    doc = json.loads(jwks)
    for key in doc["keys"]:
        if key["kid"] == kid:
            key.update(members)
    return json.dumps(doc)


def test_a_revoked_key_vouches_only_for_payments_issued_before_its_revocation(
    genuine: Genuine,
) -> None:
    iat = genuine.during
    before = _restated(genuine.jwks, "payments.v1", paywarden_state="revoked")
    later = _restated(before, "payments.v1", paywarden_revoked_at=iat + 1)
    payment = verify_payment(genuine.jws, later, payee=PAYEE, now=iat)
    assert payment.key_state is KeyState.REVOKED
    same_second = _restated(before, "payments.v1", paywarden_revoked_at=iat)
    assert rejection(genuine.jws, same_second, now=iat) is Reason.KEY_REVOKED
    verify_only = _restated(genuine.jwks, "payments.v1", paywarden_state="verify-only")
    assert verify_payment(genuine.jws, verify_only, payee=PAYEE, now=iat).key_state is (
        KeyState.VERIFY_ONLY
    )


def _thiefs_payment(genuine: Genuine, key: ec.EllipticCurvePrivateKey, iat: int, exp: int) -> str:
    return pyjwt_es256(_jcs(_changed_claims(genuine, iat=iat, exp=exp)), key, "test.v1")


def test_a_stolen_revoked_key_cannot_backdate_a_payment_past_the_signers_lifetime(
    genuine: Genuine, test_key: ec.EllipticCurvePrivateKey
) -> None:
    """A thief signs, an hour after the revocation, a payment whose iat is one second
    before it and whose exp is ten minutes ahead: a lifetime no signer configured with
    max_expiry_seconds 300 gives. Before the fix it passed (anything under a day did)."""
    revoked_at = genuine.during
    jwks = _test_jwks(test_key, paywarden_state="revoked", paywarden_revoked_at=revoked_at)
    now = revoked_at + 3_600
    backdated = _thiefs_payment(genuine, test_key, revoked_at - 1, now + 600)
    assert rejection(backdated, jwks, now=now) is Reason.CLAIMS_INVALID
    # Without the published member the verifier's own bound (300 s) holds all the same.
    bare = json.loads(jwks)
    del bare["keys"][0]["paywarden_max_lifetime"]
    assert rejection(backdated, json.dumps(bare), now=now) is Reason.CLAIMS_INVALID
    # A payment the signer could have signed before the revocation still passes while it
    # lives, which is at most the published lifetime after the revocation.
    honest = _thiefs_payment(genuine, test_key, revoked_at - 1, revoked_at + 299)
    assert verify_payment(honest, jwks, payee=PAYEE, now=revoked_at + 298).key_state is (
        KeyState.REVOKED
    )
    assert rejection(honest, jwks, now=revoked_at + 299) is Reason.PAYMENT_EXPIRED


def test_the_published_lifetime_bounds_a_payment_and_the_payee_can_only_lower_it(
    genuine: Genuine, test_key: ec.EllipticCurvePrivateKey
) -> None:
    iat = genuine.during
    token = _thiefs_payment(genuine, test_key, iat, iat + 3_600)
    wide = _test_jwks(test_key, paywarden_max_lifetime=3_600)
    assert verify_payment(token, wide, payee=PAYEE, now=iat).expires_at == iat + 3_600
    assert rejection(token, _test_jwks(test_key), now=iat) is Reason.CLAIMS_INVALID
    with pytest.raises(PaymentRejected) as info:
        verify_payment(token, wide, payee=PAYEE, now=iat, max_lifetime=3_599)
    assert info.value.reason is Reason.CLAIMS_INVALID
    with pytest.raises(PaymentRejected):  # a larger bound than the signer's widens nothing
        verify_payment(token, _test_jwks(test_key), payee=PAYEE, now=iat, max_lifetime=86_400)
    with pytest.raises(ValueError, match="max_lifetime"):
        verify_payment(token, wide, payee=PAYEE, now=iat, max_lifetime=0)


def test_the_signer_publishes_its_max_expiry_as_each_keys_lifetime(
    genuine: Genuine, stack: Stack
) -> None:
    keys = json.loads(genuine.jwks)["keys"]
    configured = stack.config.limits.max_expiry_seconds
    assert keys and {k["paywarden_max_lifetime"] for k in keys} == {configured}


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def test_a_payments_twin_jws_verifies_as_the_same_decision(genuine: Genuine) -> None:
    """ES256 is malleable: (r, n - s) verifies wherever (r, s) does, here and in pyjwt.
    Documented (VerifiedPayment, README, the CLI): a replay is known by its jti."""
    head, body, signature = genuine.jws.split(".")
    raw = unb64(signature)
    s = int.from_bytes(raw[32:], "big")
    twin = f"{head}.{body}.{b64(raw[:32] + (P256_ORDER - s).to_bytes(32, 'big'))}"
    assert twin != genuine.jws
    payment = verify_payment(twin, genuine.jwks, payee=PAYEE, now=genuine.during)
    assert payment.decision_id == genuine.decision_id
    (jwk,) = [k for k in json.loads(genuine.jwks)["keys"] if k["kid"] == "payments.v1"]
    assert jwt.PyJWS().decode(twin, jwt.PyJWK.from_dict(jwk).key, ["ES256"]) == unb64(body)
    assert "jti" in (verify_module.__doc__ or "") and "jti" in (VerifiedPayment.__doc__ or "")


JWKS_CASES = [
    ("not json", lambda j: "{"),
    ("no keys", lambda j: '{"keys": []}'),
    ("another member", lambda j: j[:-1] + ', "next": "x"}'),
    ("a kid twice", lambda j: json.dumps({"keys": json.loads(j)["keys"] * 2})),
    ("no state", lambda j: _restated(j, "payments.v1", paywarden_state=None)),
    ("unknown state", lambda j: _restated(j, "payments.v1", paywarden_state="destroyed")),
    ("revoked without a time", lambda j: _restated(j, "payments.v1", paywarden_state="revoked")),
    ("a time not revoked", lambda j: _restated(j, "payments.v1", paywarden_revoked_at=1)),
    ("an RSA key", lambda j: _restated(j, "payments.v1", kty="RSA")),
    ("another alg", lambda j: _restated(j, "payments.v1", alg="HS256")),
    ("an unknown member", lambda j: _restated(j, "payments.v1", x5u="https://evil.example")),
    ("a point off the curve", lambda j: _restated(j, "payments.v1", y=b64(bytes(32)))),
    ("a lifetime of 0", lambda j: _restated(j, "payments.v1", paywarden_max_lifetime=0)),
    ("a lifetime over a day", lambda j: _restated(j, "payments.v1", paywarden_max_lifetime=86_401)),
    ("a lifetime as text", lambda j: _restated(j, "payments.v1", paywarden_max_lifetime="300")),
]


@pytest.mark.parametrize("case", [c[1] for c in JWKS_CASES], ids=[c[0] for c in JWKS_CASES])
def test_a_key_set_that_is_not_the_signers_is_refused(genuine: Genuine, case: Any) -> None:
    jwks = case(genuine.jwks)
    assert rejection(genuine.jws, jwks, now=genuine.during) is Reason.JWKS_INVALID
    with pytest.raises(PaymentRejected):
        Jwks.parse(jwks)


def test_the_verifier_spells_the_payment_as_the_signer_writes_it() -> None:
    """paywarden.verify imports nothing of the signer: its constants are checked here."""
    assert verify_module.JWS_TYPE == signer_payments.JWS_TYPE
    assert verify_module.PAYLOAD_TYPE == signer_payments.PAYLOAD_TYPE
    assert verify_jwks.JWK_STATE == signer_keys.JWK_STATE
    assert verify_jwks.JWK_REVOKED_AT == signer_keys.JWK_REVOKED_AT
    assert verify_jwks.JWK_MAX_LIFETIME == signer_keys.JWK_MAX_LIFETIME
    limit = LimitsConfig.model_fields["max_expiry_seconds"]
    assert verify_module.DEFAULT_MAX_LIFETIME == limit.default
    assert verify_jwks.MAX_LIFETIME == 86_400  # signer/config.py max_expiry_seconds le=


# -- the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwks_file(genuine: Genuine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(genuine.jwks, encoding="utf-8")
    return path


def test_the_cli_accepts_a_genuine_payment(genuine: Genuine, jwks_file: Path) -> None:
    out = paywarden("verify", genuine.jws, "--jwks", jwks_file, "--payee", PAYEE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"valid: 4.20 USD to {PAYEE} (decision {genuine.decision_id}")
    assert "by its decision id, never by the JWS" in out.stdout
    out = paywarden("verify", genuine.jws, "--jwks", jwks_file, "--payee", PAYEE, "--json")
    assert out.returncode == 0, out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["valid"] is True and verdict["payment"]["decision_id"] == genuine.decision_id


def test_the_cli_reads_the_jws_from_stdin(genuine: Genuine, jwks_file: Path) -> None:
    args = ("verify", "-", "--jwks", str(jwks_file), "--payee", PAYEE)
    assert paywarden_with_input(genuine.jws + "\n", *args).returncode == 0
    out = paywarden_with_input(genuine.jws, *args[:-1], OTHER_PAYEE)
    assert (out.returncode, out.stdout.split(":")[:2]) == (1, ["rejected", " WRONG_PAYEE"])


@pytest.mark.parametrize(
    ("change", "reason"),
    [("payee", Reason.WRONG_PAYEE), ("at", Reason.PAYMENT_EXPIRED), ("byte", Reason.BAD_SIGNATURE)],
)
def test_the_cli_prints_the_reason_of_a_rejection_and_exits_1(
    genuine: Genuine, jwks_file: Path, change: str, reason: Reason
) -> None:
    jws, payee, extra = genuine.jws, PAYEE, []
    if change == "payee":
        payee = OTHER_PAYEE
    elif change == "at":
        extra = ["--at", str(genuine.claims["exp"])]
    else:
        head, payload, _ = jws.split(".")
        jws = f"{head}.{payload}.{b64(bytes(64))}"
    args = ["verify", jws, "--jwks", str(jwks_file), "--payee", payee, *extra]
    out = paywarden(*args)
    assert out.returncode == 1 and out.stdout.startswith(f"rejected: {reason}: "), out.stdout
    out = paywarden(*args, "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["valid"] is False
    assert json.loads(out.stdout)["reason"] == reason


def test_the_cli_exits_2_when_nothing_could_be_checked(genuine: Genuine, tmp_path: Path) -> None:
    missing = paywarden("verify", genuine.jws, "--jwks", tmp_path / "none.json", "--payee", PAYEE)
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    no_payee = paywarden("verify", genuine.jws, "--jwks", tmp_path / "none.json")
    assert no_payee.returncode == 2 and "--payee" in no_payee.stderr
    clear = paywarden("verify", genuine.jws, "--jwks", "http://example.com/jwks", "--payee", PAYEE)
    assert clear.returncode == 2 and "loopback" in clear.stderr


# -- the JWKS from a URL ---------------------------------------------------------------------


@pytest.fixture
def jwks_url(genuine: Genuine) -> Iterator[str]:
    """The JWKS served over HTTP on 127.0.0.1, as a payee's own mirror would; "/moved"
    redirects to it."""
    body = genuine.jwks.encode("utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/jwks.json")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_cli_reads_the_jwks_from_a_url(genuine: Genuine, jwks_url: str) -> None:
    out = paywarden("verify", genuine.jws, "--jwks", f"{jwks_url}/jwks.json", "--payee", PAYEE)
    assert out.returncode == 0, out.stderr
    moved = paywarden("verify", genuine.jws, "--jwks", f"{jwks_url}/moved", "--payee", PAYEE)
    assert moved.returncode == 2 and "redirects are not followed" in moved.stderr

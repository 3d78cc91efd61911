"""The AP2 error receipts of refused mandates: the audit key's door of their own, the
offline check, and the ``[mandates]`` settings that decide whom a chain may be rooted in.

The signed receipts are also checked against the audit public key by joserfc in
tests/test_mandate_sessions.py; here what must be refused is."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.hsm import audit_bodies
from paywarden.signer.mandate_config import MandateConfig
from paywarden.verify import mandate_receipts
from paywarden.verify.mandate_receipts import verify_mandate_receipt
from paywarden.verify.receipts import ReceiptFailure, ReceiptInvalid
from pydantic import ValidationError

from tests.helpers import Stack
from tests.support.mandates import mandate_key, public_jwk


def _receipt_b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _part(value: dict[str, Any]) -> str:
    return _receipt_b64(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


HEADER = {"alg": "ES256", "kid": "audit.v1", "typ": "JWT"}


def claims(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "typ": "paywarden.mandate-receipt.v1",
        "iss": "paywarden",
        "iat": 1_800_000_000,
        "result": "error",
        "reference": "abc",
        "error": "invalid_mandate",
        "error_description": "revoked",
        "reason": "MANDATE_REVOKED",
        "mandate_id": None,
    }
    out.update(changes)
    return out


def signing_input(header: dict[str, Any] = HEADER, **changes: Any) -> bytes:
    return f"{_part(header)}.{_part(claims(**changes))}".encode()


def audit_pem(stack: Stack) -> str:
    return stack.hsm.audit_public_key().spki_pem


def test_the_verifier_and_the_door_hold_the_same_fields() -> None:
    assert audit_bodies.MANDATE_RECEIPT_FIELDS == mandate_receipts.MANDATE_RECEIPT_FIELDS
    assert audit_bodies.MANDATE_RECEIPT_TYPE == mandate_receipts.MANDATE_RECEIPT_TYPE


def test_the_door_signs_a_mandate_receipt_and_the_verifier_accepts_it(stack: Stack) -> None:
    data = signing_input()
    token = f"{data.decode()}.{_receipt_b64(stack.hsm.sign_mandate_receipt(data))}"
    assert verify_mandate_receipt(token, audit_pem(stack))["reason"] == "MANDATE_REVOKED"


@pytest.mark.parametrize(
    "data",
    [
        signing_input(typ="paywarden.receipt.v1"),
        signing_input(extra="x"),
        signing_input({"alg": "ES256", "kid": "audit.v1", "typ": "JWT", "crit": ["x"]}),
        signing_input({"alg": "none", "kid": "audit.v1", "typ": "JWT"}),
        b'{"typ":"paywarden.mandate-receipt.v1"}',  # a JSON body: never a JWS input
        signing_input() + b".extra",
        b"eyJ=." + signing_input().split(b".")[1],  # padded base64url
    ],
)
def test_the_door_signs_nothing_but_a_mandate_receipt(stack: Stack, data: bytes) -> None:
    with pytest.raises(ValueError):
        stack.hsm.sign_mandate_receipt(data)


def test_a_receipt_body_or_checkpoint_is_never_signed_through_this_door(stack: Stack) -> None:
    checkpoint = {"typ": "paywarden.checkpoint.v1", "size": 1, "root": "ab", "time": 1, "kid": "a"}
    with pytest.raises(ValueError):
        stack.hsm.sign_mandate_receipt(json.dumps(checkpoint).encode())
    with pytest.raises(ValueError):  # nor a mandate receipt through the receipt door
        stack.hsm.sign_receipt(signing_input())


def test_the_verifier_refuses_what_the_audit_key_did_not_sign(stack: Stack) -> None:
    data = signing_input()
    good = f"{data.decode()}.{_receipt_b64(stack.hsm.sign_mandate_receipt(data))}"
    header, payload, signature = good.split(".")
    forged_payload = _part(claims(reason="ALLOWED"))
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_pem = other_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    cases = [
        (f"{header}.{forged_payload}.{signature}", audit_pem(stack), ReceiptFailure.BAD_SIGNATURE),
        (good, other_pem, ReceiptFailure.BAD_SIGNATURE),
        (f"{header}.{payload}", audit_pem(stack), ReceiptFailure.MALFORMED),
        (f"{header}.{payload}.{signature}=", audit_pem(stack), ReceiptFailure.MALFORMED),
    ]
    for token, pem, failure in cases:
        with pytest.raises(ReceiptInvalid) as caught:
            verify_mandate_receipt(token, pem)
        assert caught.value.reason is failure


# --- [mandates] -------------------------------------------------------------------------------


def test_nothing_is_trusted_by_default() -> None:
    from paywarden.signer.mandate_config import MandateSettings

    settings = MandateSettings.of(MandateConfig())
    assert not settings.configured
    assert not MandateSettings.none().configured


def test_issuers_and_agent_keys_are_checked_when_the_configuration_is_read(tmp_path: Path) -> None:
    jwk = {k: v for k, v in public_jwk(mandate_key()).items() if k in ("kty", "crv", "x", "y")}
    thumb = "A" * 43
    bad: list[dict[str, Any]] = [
        {"issuers": [{"kid": "a"}]},  # neither a file nor a jwk
        {"issuers": [{"kid": "a", "jwk": jwk, "public_key_file": str(tmp_path / "k.pem")}]},
        {"issuers": [{"kid": "a", "jwk": jwk}, {"kid": "a", "jwk": jwk}]},
        {"issuers": [{"kid": "", "jwk": jwk}]},
        {"agent_keys": {"agent-1": ["not-a-thumbprint"]}},
        {"agent_keys": {"agent-1": [thumb], "agent-2": [thumb]}},
        {"agent_keys": {"Agent-1": [thumb]}},
        {"vct": []},
    ]
    for data in bad:
        with pytest.raises(ValidationError):
            MandateConfig.model_validate(data)
    good = MandateConfig.model_validate(
        {"issuers": [{"kid": "a", "jwk": jwk}], "agent_keys": {"agent-1": [thumb]}}
    )
    assert good.holders() == {thumb: "agent-1"}
    assert set(good.trusted().keys) == {"a"}


def test_an_issuer_key_file_that_cannot_be_used_stops_the_signer_with_its_name(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "missing.pem"
    rsa_like = tmp_path / "p384.pem"
    rsa_like.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for path, words in ((missing, "cannot read"), (rsa_like, "not a P-256 key")):
        config = MandateConfig.model_validate(
            {"issuers": [{"kid": "a", "public_key_file": str(path)}]}
        )
        with pytest.raises(ValueError, match=words) as caught:
            config.trusted()
        assert str(path) in str(caught.value)
    good = tmp_path / "p256.pem"
    good.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    config = MandateConfig.model_validate({"issuers": [{"kid": "a", "public_key_file": str(good)}]})
    assert config.trusted().keys["a"].provider_root is False

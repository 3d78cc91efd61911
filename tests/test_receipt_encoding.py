"""The offline receipt check reads a signature only in its one canonical spelling and a
body only as UTF-8 text: anything else is ``RECEIPT_MALFORMED`` (never an exception of
another kind, never a pass). Pure: a test key signs the documents, no server runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.verify.receipts import ReceiptFailure, ReceiptInvalid, verify_receipt

from tests.support.cli import paywarden
from tests.support.receipt_forgery import (
    b64url,
    canonical,
    raw_signature,
    receipt_doc,
    receipt_fields,
    spki_pem,
)


@pytest.fixture(scope="module")
def audit_test_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _failure(doc: dict[str, object], key: ec.EllipticCurvePrivateKey) -> ReceiptFailure:
    with pytest.raises(ReceiptInvalid) as raised:
        verify_receipt(doc, key.public_key())
    return raised.value.reason


def _signed_with_url_characters(key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    """A body and its signature whose base64url spelling holds ``-`` or ``_``."""
    for n in range(1, 200):
        body = canonical(receipt_fields(seq=n))
        signature = b64url(raw_signature(key, body.encode("utf-8")))
        if "-" in signature or "_" in signature:
            return body, signature
    raise AssertionError("no signature with - or _ in 200 tries")


def test_the_canonical_spelling_verifies(audit_test_key: ec.EllipticCurvePrivateKey) -> None:
    """The control for the cases below."""
    body, signature = _signed_with_url_characters(audit_test_key)
    assert verify_receipt(receipt_doc(body, signature), audit_test_key.public_key()).seq >= 1


@pytest.mark.parametrize(
    "respell",
    [
        lambda s: s.replace("-", "+").replace("_", "/"),  # standard base64, same bytes
        lambda s: s[:20] + "!" + s[20:],  # junk a lenient decoder drops
        lambda s: s[:20] + "\n" + s[20:],
        lambda s: s + "==",  # padding
    ],
    ids=["plus-and-slash", "junk", "newline", "padding"],
)
def test_another_spelling_of_a_good_signature_is_malformed(
    audit_test_key: ec.EllipticCurvePrivateKey, respell: Callable[[str], str]
) -> None:
    body, signature = _signed_with_url_characters(audit_test_key)
    other = respell(signature)
    assert other != signature
    assert _failure(receipt_doc(body, other), audit_test_key) is ReceiptFailure.MALFORMED


def test_a_body_with_a_lone_surrogate_is_malformed(
    audit_test_key: ec.EllipticCurvePrivateKey,
) -> None:
    body = canonical(receipt_fields(payee="acme\ud800"))
    signature = b64url(raw_signature(audit_test_key, b"anything"))
    assert _failure(receipt_doc(body, signature), audit_test_key) is ReceiptFailure.MALFORMED


def test_verify_receipt_says_malformed_for_a_lone_surrogate_and_exits_1(
    audit_test_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    body = canonical(receipt_fields(payee="acme\ud800"))
    signature = b64url(raw_signature(audit_test_key, b"anything"))
    doc = tmp_path / "receipt.json"
    doc.write_text(json.dumps(receipt_doc(body, signature)), encoding="ascii")  # \ud800 escaped
    key = tmp_path / "audit.pem"
    key.write_text(spki_pem(audit_test_key), encoding="ascii")
    out = paywarden("verify-receipt", doc, "--audit-key", key)
    assert out.returncode == 1, out.stderr
    assert "RECEIPT_MALFORMED" in out.stderr and "Traceback" not in out.stderr

"""Offline check of an AP2 error receipt that the signer gave for a refused mandate.

The receipt is a compact JWS signed ES256 by the signer's audit key (the same key that signs
checkpoints and ``GetReceipt`` bodies, each through its own door): header exactly
``{"alg": "ES256", "kid", "typ": "JWT"}``, claims exactly those of
:data:`MANDATE_RECEIPT_FIELDS` with ``typ`` ``paywarden.mandate-receipt.v1`` and ``result``
``error``. :func:`verify_mandate_receipt` raises :class:`ReceiptInvalid` on the first thing
wrong and returns the claims otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from paywarden.verify.errors import PaymentRejected
from paywarden.verify.receipts import ReceiptFailure, ReceiptInvalid, load_audit_key
from paywarden.verify.strict_json import b64url_decode, json_object

MANDATE_RECEIPT_TYPE = "paywarden.mandate-receipt.v1"
# paywarden.hsm.audit_bodies holds the same set (tests compare them).
MANDATE_RECEIPT_FIELDS = frozenset(
    {
        "typ", "iss", "iat", "result", "reference", "error", "error_description", "reason",
        "mandate_id",
    }
)  # fmt: skip
AP2_ERRORS = frozenset({"invalid_credential", "invalid_mandate", "unresolved_constraint"})


def verify_mandate_receipt(jws: str, audit_public_key_pem: bytes | str) -> Mapping[str, object]:
    """The claims of ``jws`` if the audit key signed it and it is a mandate receipt."""
    key = load_audit_key(audit_public_key_pem)
    parts = jws.split(".")
    if len(parts) != 3:
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, "a compact JWS has three parts")
    try:
        header = json_object(b64url_decode(parts[0], "header"), "header")
        claims = json_object(b64url_decode(parts[1], "payload"), "payload")
        signature = b64url_decode(parts[2], "signature")
    except PaymentRejected as exc:
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, exc.detail) from None
    kid = header.get("kid")
    if header != {"alg": "ES256", "kid": kid, "typ": "JWT"} or not isinstance(kid, str):
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, "the header is not ES256, kid, JWT")
    if len(signature) != 64:
        raise ReceiptInvalid(ReceiptFailure.BAD_SIGNATURE, "an ES256 signature is 64 bytes")
    der = utils.encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ReceiptInvalid(
            ReceiptFailure.BAD_SIGNATURE, "the audit key did not sign it"
        ) from None
    if claims.get("typ") != MANDATE_RECEIPT_TYPE:
        raise ReceiptInvalid(ReceiptFailure.WRONG_TYPE, "not a mandate receipt")
    if set(claims) != MANDATE_RECEIPT_FIELDS:
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, "the claims are not a mandate receipt's")
    if claims["result"] != "error" or claims["error"] not in AP2_ERRORS:
        raise ReceiptInvalid(ReceiptFailure.MALFORMED, "not an AP2 error receipt")
    return claims

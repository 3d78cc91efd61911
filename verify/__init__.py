"""Offline checks for those who receive what the signer issues: payees and agent platforms.

A payment (JWS) against an exported JWKS, and a receipt against the audit public key. Pure: no
gRPC, no store, no HSM; it imports nothing from the signer.

    from paywarden.verify import Jwks, PaymentRejected, verify_payment

    try:
        payment = verify_payment(jws, Jwks.parse(jwks_json), payee="acme-weather")
    except PaymentRejected as exc:
        refuse(exc.reason)  # a stable code: BAD_SIGNATURE, UNKNOWN_KEY, WRONG_PAYEE ...
"""

from paywarden.verify.errors import PaymentRejected
from paywarden.verify.jwks import Jwks, PaymentKey
from paywarden.verify.payment import VerifiedPayment, verify_payment
from paywarden.verify.receipts import (
    ReceiptFailure,
    ReceiptInvalid,
    VerifiedReceipt,
    load_audit_key,
    parse_receipt_document,
    verify_receipt,
)

__all__ = [
    "Jwks",
    "PaymentKey",
    "PaymentRejected",
    "ReceiptFailure",
    "ReceiptInvalid",
    "VerifiedPayment",
    "VerifiedReceipt",
    "load_audit_key",
    "parse_receipt_document",
    "verify_payment",
    "verify_receipt",
]

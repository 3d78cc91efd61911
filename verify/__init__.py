"""Offline checks for those who receive what the signer issues: payees and agent platforms.

A payment (JWS) against an exported JWKS, and a receipt against the audit public key. Pure: no
gRPC, no store, no HSM; it imports nothing from the signer.
"""

# Receipts (paywarden.verify.receipts).
from paywarden.verify.receipts import ReceiptFailure as ReceiptFailure
from paywarden.verify.receipts import ReceiptInvalid as ReceiptInvalid
from paywarden.verify.receipts import VerifiedReceipt as VerifiedReceipt
from paywarden.verify.receipts import load_audit_key as load_audit_key
from paywarden.verify.receipts import parse_receipt_document as parse_receipt_document
from paywarden.verify.receipts import verify_receipt as verify_receipt

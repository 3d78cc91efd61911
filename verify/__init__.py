"""Offline checks for those who receive what the signer issues: payees and agent platforms.

A payment (JWS) against an exported JWKS, and a receipt against the audit public key. Pure: no
gRPC, no store, no HSM; it imports nothing from the signer.
"""

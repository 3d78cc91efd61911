"""The x402 parts of scripts/bench.py (``--rpc sign-x402``): the asset, key and pack of the
bench's data directory, the ``SignX402Request`` the callers send, and the independent check
of every authorisation returned.

The data directory gains a secp256k1 key ``x402.v1`` (profile ``x402-exact-evm``, made in
the token by scripts/keys.py as for any key), the asset ``USDC`` configured as USDC on Base
(chain id 8453, 6 decimals, EIP-712 domain "USD Coin" version 2) and, instead of the JWS
pack, a pack with the same rule families and bounds that grants the key on that asset and
allows the four payees (addresses) the callers pay in turn. Each call pays 10000 atomic
units (0.01 USDC, as ``Sign`` pays 0.01 USD) with a fresh agent nonce. After the run every
answer must be ``SIGNED``, carry version 2's ``PaymentPayload`` whose header value is its
base64, pay exactly what was asked from the key's address, and its EIP-712 signature must
recover that address with eth-account (an implementation independent of ours: the address
is the one scripts/keys.py printed when it made the key, not one the signer reports).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from typing import Any

from paywarden.v1 import signer_pb2

# eth-keys (under eth-account) would recover with coincurve, the libsecp256k1 the signer
# itself uses: its pure-Python backend keeps the check after the run independent.
os.environ.setdefault("ECC_BACKEND_CLASS", "eth_keys.backends.NativeECCBackend")

SIGN_X402_METHOD = "/paywarden.v1.Signer/SignX402"
KEY_LABEL = "x402"
KEY_ID = "x402.v1"
ASSET = "USDC"
CHAIN_ID = 8453
CONTRACT = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"  # USDC on Base, EIP-55
EIP712_NAME = "USD Coin"
EIP712_VERSION = "2"
NETWORK = f"eip155:{CHAIN_ID}"
# Two allowed by name, two by pattern (as the JWS pack's payees); digits only, so each
# is its own EIP-55 form.
PAYEES = (
    "0x1111111111111111111111111111111111111111",
    "0x2222222222222222222222222222222222222222",
    "0x3333000000000000000000000000000000000001",
    "0x3333000000000000000000000000000000000002",
)
AMOUNT = "10000"  # atomic units: 0.01 USDC
MAX_TIMEOUT_SECONDS = 120

# Appended to the bench's configuration (after its ``[assets.USD]`` and ``[[keys]]``).
CONFIG = f"""
[assets.{ASSET}]
decimals = 6

[assets.{ASSET}.x402]
chain_id = {CHAIN_ID}
contract = "{CONTRACT}"
eip712_name = "{EIP712_NAME}"
eip712_version = "{EIP712_VERSION}"

[[keys]]
label = "{KEY_LABEL}"
version = 1
profile = "x402-exact-evm"
"""

# The JWS pack's rule families and bounds, on the x402 asset and address payees.
PACK = f"""
id = "bench"
version = 1
description = "Benchmark agents paying x402: every rule family, limits a run does not reach"
agents = [{{agents}}]

[assets.{ASSET}]
keys = ["{KEY_LABEL}"]
max_per_payment = "100.00"
daily_limit = "100000000.00"
rolling_24h_limit = "100000000.00"
approval_above = "50.00"

[[assets.{ASSET}.approval_tiers]]
above = "80.00"
approvers = 2

[payees]
allow = ["{PAYEES[0]}", "{PAYEES[1]}"]
allow_patterns = ["0x3333[0-9a-f]{{{{36}}}}"]
deny = ["0x6666666666666666666666666666666666666666"]
deny_patterns = ["0x7777[0-9a-f]{{{{36}}}}"]
first_payment = "allow"

[velocity]
max_payments = 100000000
window_seconds = 3600

[diversity]
max_payees_per_session = 10
max_payees_per_day = 100

[breaker]
window_seconds = 600
max_rejections = 1000
max_rejection_rate = 0.5
min_decisions = 100
max_spend = {{{{ {ASSET} = "100000000.00" }}}}
max_payees = 100

[sessions]
max_ttl_seconds = 3600
max_budget = {{{{ {ASSET} = "100000000.00" }}}}
"""


def provision(run: Callable[[Sequence[str]], str], keys: Sequence[str], pin: str) -> str:
    """Makes the key with ``keys`` (the scripts/keys.py command and token) through ``run``;
    the address it exports."""
    run([*keys, "generate", "--pin-file", pin, "--key", KEY_ID, "--profile", "x402-exact-evm"])
    out = run([*keys, "export", "--pin-file", pin, "--key", KEY_ID, "--format", "address"])
    return out.strip()


def sign_x402_request(session_id: str, serial: int, expires_at: int) -> bytes:
    """A serialised ``SignX402Request`` as an agent makes it from a version 2 offer."""
    nonce = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")
    requirements = signer_pb2.X402PaymentRequirements(
        x402_version=2,
        scheme="exact",
        network=NETWORK,
        asset=CONTRACT,
        pay_to=PAYEES[serial % len(PAYEES)],
        amount=AMOUNT,
        resource="https://api.example/weather",
        max_timeout_seconds=MAX_TIMEOUT_SECONDS,
        extra_name=EIP712_NAME,
        extra_version=EIP712_VERSION,
    )
    request = signer_pb2.SignX402Request(
        session_id=session_id,
        key_id=KEY_LABEL,
        requirements=requirements,
        reference=f"bench-{serial}",
        purpose="one API call",
        nonce=nonce,
        expires_at=expires_at,
    )
    return request.SerializeToString()


def typed_data(authorization: dict[str, Any]) -> dict[str, Any]:
    """The authorisation as EIP-712 typed data for eth-account, from EIP-3009's types."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ],
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": EIP712_NAME,
            "version": EIP712_VERSION,
            "chainId": CHAIN_ID,
            "verifyingContract": CONTRACT,
        },
        "message": {
            "from": authorization["from"],
            "to": authorization["to"],
            "value": int(authorization["value"]),
            "validAfter": int(authorization["validAfter"]),
            "validBefore": int(authorization["validBefore"]),
            "nonce": bytes.fromhex(authorization["nonce"].removeprefix("0x")),
        },
    }


def check_authorisation(raw: bytes, address: str) -> None:
    """Raises ValueError unless ``raw`` is a SIGNED ``SignX402Response`` that pays one of
    the payees exactly, from ``address``, under a signature eth-account recovers to it."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    response = signer_pb2.SignX402Response.FromString(raw)
    if response.status != signer_pb2.SIGNED:
        raise ValueError(f"status {response.status}")
    try:
        header = base64.b64decode(response.x_payment, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the header is not base64: {exc}") from None
    payload = json.loads(header)
    if payload != json.loads(response.payment_payload_json):
        raise ValueError("the header is not the payload")
    accepted = payload["accepted"]
    if (payload["x402Version"], accepted["scheme"], accepted["network"]) != (2, "exact", NETWORK):
        raise ValueError("another version, scheme or network")
    if (accepted["asset"], accepted["amount"]) != (CONTRACT, AMOUNT):
        raise ValueError("another asset or amount")
    authorization = payload["payload"]["authorization"]
    if authorization["from"] != address or response.from_address != address:
        raise ValueError(f"from {authorization['from']}, not the key's {address}")
    if authorization["to"] not in PAYEES or authorization["to"] != accepted["payTo"]:
        raise ValueError("pays another payee")
    if authorization["value"] != AMOUNT:
        raise ValueError("pays another amount")
    signature = bytes.fromhex(payload["payload"]["signature"].removeprefix("0x"))
    message = encode_typed_data(full_message=typed_data(authorization))
    recovered = Account.recover_message(message, signature=signature)
    if recovered != address:
        raise ValueError(f"the signature recovers {recovered}, not {address}")


def verify_authorisations(responses: list[bytes], address: str) -> tuple[int, int]:
    """(verified, failed) over every answer, by :func:`check_authorisation`."""
    verified = failed = 0
    for raw in responses:
        try:
            check_authorisation(raw, address)
        except (ValueError, KeyError, TypeError) as exc:
            failed += 1
            if failed <= 3:
                print(f"bench: an authorisation does not verify: {exc}", file=sys.stderr)
            continue
        verified += 1
    return verified, failed

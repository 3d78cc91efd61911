"""Shared by the x402 profile's tests: a realistic EIP-712 domain, random
authorisations, and the same values as the typed data eth-account takes."""

from __future__ import annotations

import random
from typing import Any

from paywarden.hsm import KeyRef
from paywarden.hsm.eip712 import Eip712Domain, TransferWithAuthorization
from paywarden.hsm.evm import checksum_address

# USDC on Base: the domain x402 facilitators use most (name and version from the
# contract's EIP-712 domain).
USDC_BASE = Eip712Domain("USD Coin", "2", 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913")


def x402_asset_toml(code: str, domain: Eip712Domain) -> str:
    """The configuration of asset ``code`` (6 decimals) paid with x402 under ``domain``."""
    return f"""
[assets.{code}]
decimals = 6

[assets.{code}.x402]
chain_id = {domain.chain_id}
contract = "{domain.verifying_contract}"
eip712_name = "{domain.name}"
eip712_version = "{domain.version}"
"""


def x402_key_toml(key: KeyRef) -> str:
    """The configuration of ``key`` as an ``x402-exact-evm`` key."""
    return f"""
[[keys]]
label = "{key.label}"
version = {key.version}
profile = "x402-exact-evm"
"""


def usdc_x402_config(key: KeyRef) -> str:
    """The configuration most x402 tests serve: USDC on Base, paid with ``key``."""
    return x402_asset_toml("USDC", USDC_BASE) + x402_key_toml(key)


_DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_TRANSFER_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]


def random_address(rng: random.Random) -> str:
    return checksum_address(rng.randbytes(20))


def random_domain(rng: random.Random) -> Eip712Domain:
    return Eip712Domain(
        name=rng.choice(["USD Coin", "EURC", "Test Token"]),
        version=rng.choice(["1", "2"]),
        chain_id=rng.choice([1, 8453, 84532, 43114, rng.randrange(1, 1 << 64)]),
        verifying_contract=random_address(rng),
    )


def random_authorization(
    rng: random.Random, from_address: str | None = None, start: int = 1_760_000_000
) -> TransferWithAuthorization:
    after = start + rng.randrange(0, 10_000)
    return TransferWithAuthorization(
        from_address=from_address or random_address(rng),
        to=random_address(rng),
        value=rng.randrange(0, 10**12),
        valid_after=after,
        valid_before=after + rng.randrange(2, 3600),
        nonce=rng.randbytes(32),
    )


def eip3009_typed_data(domain: Eip712Domain, auth: TransferWithAuthorization) -> dict[str, Any]:
    """The authorisation as eth-account's ``encode_typed_data(full_message=...)`` takes it,
    written out here from EIP-712 and EIP-3009, not from our encoder."""
    return typed_data_of(
        domain,
        {
            "from": auth.from_address,
            "to": auth.to,
            "value": auth.value,
            "validAfter": auth.valid_after,
            "validBefore": auth.valid_before,
            "nonce": auth.nonce,
        },
    )


def typed_data_of(domain: Eip712Domain, message: dict[str, Any]) -> dict[str, Any]:
    """EIP-712 typed data of a ``TransferWithAuthorization`` ``message`` under ``domain``."""
    return {
        "types": {"EIP712Domain": _DOMAIN_FIELDS, "TransferWithAuthorization": _TRANSFER_FIELDS},
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": domain.name,
            "version": domain.version,
            "chainId": domain.chain_id,
            "verifyingContract": domain.verifying_contract,
        },
        "message": message,
    }

"""The chain an x402 ``network`` names, by protocol version.

x402 version 2 writes networks as CAIP-2 (``eip155:<chain id>``); version 1 names them
(``"base"``, ``"base-sepolia"``, …). Version 1's names are a fixed table here, the
well-known names and chain ids as the x402 SDK has them
(``x402.mechanisms.evm.v1.constants.V1_NETWORK_CHAIN_IDS``), never read from a resource
server. Each version accepts its own form only: a name under version 2, a CAIP-2
network under version 1 or a name not in the table is refused (``UNKNOWN_ASSET``).
"""

from __future__ import annotations

import re
from types import MappingProxyType

from paywarden.signer.errors import InvalidInput, Reason

_CAIP2_EIP155 = re.compile(r"eip155:([1-9][0-9]{0,15})")

V1_NETWORK_CHAIN_IDS = MappingProxyType(
    {
        "base": 8453,
        "base-sepolia": 84532,
        "ethereum": 1,
        "polygon": 137,
        "polygon-amoy": 80002,
        "avalanche": 43114,
        "avalanche-fuji": 43113,
        "abstract": 2741,
        "abstract-testnet": 11124,
        "iotex": 4689,
        "sei": 1329,
        "sei-testnet": 1328,
        "peaq": 3338,
        "story": 1513,
        "educhain": 656476,
        "skale-base-sepolia": 1444673419,
        "megaeth": 4326,
        "monad": 143,
        "monad-testnet": 10143,
        "stable": 988,
        "stable-testnet": 2201,
        "celo": 42220,
        "flare": 14,
    }
)
"""x402 version 1's network names and their chain ids."""


def chain_id_of(x402_version: int, network: str) -> int:
    """The chain id ``network`` names under ``x402_version`` (1 or 2); raises
    :class:`InvalidInput` (``UNKNOWN_ASSET``) for a network that version does not
    write so, or that is not a known EVM network."""
    caip2 = _CAIP2_EIP155.fullmatch(network)
    if x402_version == 1:
        if caip2 is not None:
            raise InvalidInput(
                Reason.UNKNOWN_ASSET,
                'x402 version 1 names its network (such as "base"), not eip155:<chain id>',
            )
        chain_id = V1_NETWORK_CHAIN_IDS.get(network)
        if chain_id is None:
            raise InvalidInput(
                Reason.UNKNOWN_ASSET, "network is not an x402 version 1 EVM network it knows"
            )
        return chain_id
    if caip2 is None:
        if network in V1_NETWORK_CHAIN_IDS:
            raise InvalidInput(
                Reason.UNKNOWN_ASSET,
                "x402 version 2 writes its network as eip155:<chain id>, not a version 1 name",
            )
        raise InvalidInput(Reason.UNKNOWN_ASSET, "network is not an eip155 network it knows")
    return int(caip2.group(1))

"""The x402 terms of a payment (validated): what an ``exact`` EVM authorisation
pays, besides the fields every payment has (:class:`~paywarden.signer.core.payments.Intent`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paywarden.hsm import Eip712Domain
from paywarden.signer.core.x402_extra import Extra


@dataclass(frozen=True, slots=True)
class X402Terms:
    """A resource server's ``PaymentRequirements`` as the signer accepted them: the
    network and token are a configured asset's, the domain is the configured one."""

    x402_version: int
    network: str  # as written: eip155:<chain id> (version 2) or a name (version 1)
    domain: Eip712Domain  # the configured token's (chain id, contract, name, version)
    pay_to: str  # EIP-55
    amount: str  # atomic units, decimal
    resource: str  # recorded, never decides
    max_timeout_seconds: int
    # As the resource server wrote them (it compares them as strings): payTo and the
    # token's address (the same 20 bytes as pay_to and the domain's contract), and its
    # extra (with the configured name and version).
    pay_to_text: str
    asset_text: str
    extra: Extra
    from_address: str = ""  # the key's address, set once the key version is resolved

    def digest_fields(self) -> dict[str, Any]:
        """What a retry must repeat (the key's address follows from its key id)."""
        return {
            "x402": self.x402_version,
            "network": self.network,
            "token": self.domain.verifying_contract,
            "payTo": self.pay_to,
            "atomic": self.amount,
            "resource": self.resource,
            "timeout": self.max_timeout_seconds,
            "payToText": self.pay_to_text,
            "assetText": self.asset_text,
            "extra": dict(self.extra),
        }

    def accepted(self) -> dict[str, Any]:
        """The requirements as x402 v2 writes them (``PaymentPayload.accepted``), with
        the network, addresses and extra as the resource server wrote them. They are
        recorded in this shape for version 1 too (its ``maxAmountRequired`` as
        ``amount``); version 1's answer names only scheme and network of them."""
        return {
            "scheme": "exact",
            "network": self.network,
            "asset": self.asset_text,
            "amount": self.amount,
            "payTo": self.pay_to_text,
            "maxTimeoutSeconds": self.max_timeout_seconds,
            "extra": dict(self.extra),
        }

"""The x402 settings of an asset (``[assets.CODE.x402]``): its chain, its EIP-3009
token contract and the EIP-712 domain the signer signs under."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paywarden.hsm import Eip712Domain
from pydantic import BaseModel, ConfigDict, Field, model_validator


class X402AssetConfig(BaseModel):
    """An asset paid with x402 ``exact`` on an EVM chain: an EIP-3009 token contract and
    the EIP-712 domain it signs under (never the one a resource server names)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    chain_id: int = Field(ge=1, le=2**53 - 1)
    contract: str  # EIP-55: a mixed-case address must carry its checksum
    eip712_name: str
    eip712_version: str

    @model_validator(mode="after")
    def _domain_valid(self) -> X402AssetConfig:
        self.domain()  # raises ValueError with a clear message
        return self

    def domain(self) -> Eip712Domain:
        return Eip712Domain(self.eip712_name, self.eip712_version, self.chain_id, self.contract)

    @property
    def network(self) -> str:
        """The x402 (CAIP-2) network: ``eip155:<chain id>``."""
        return f"eip155:{self.chain_id}"


def one_code_per_token(assets: Mapping[str, X402AssetConfig | None]) -> None:
    """Raises ValueError when two asset codes name the same token (chain and contract)."""
    seen: dict[tuple[int, str], str] = {}
    for code, x402 in assets.items():
        if x402 is None:
            continue
        where = (x402.chain_id, x402.domain().verifying_contract)
        if where in seen:
            raise ValueError(f"assets {seen[where]} and {code} name the same x402 token")
        seen[where] = code


def addresses_fold_case(data: Any) -> Any:
    """An asset table with ``x402``: its payees are addresses, which compare whatever
    their case (``case_insensitive_payees`` is true: a pack's lower-case entry or deny
    pattern matches the EIP-55 payTo); set to false, the configuration is refused."""
    if not isinstance(data, dict) or data.get("x402") is None:
        return data
    if data.get("case_insensitive_payees", True) is not True:
        raise ValueError(
            "an x402 asset's payees are addresses: case_insensitive_payees must be true"
        )
    return {**data, "case_insensitive_payees": True}

"""The mandate settings (``[mandates]``): whom the signer trusts to root a mandate chain,
which mandate types it accepts and which agent keys a mandate may be bound to.

A session may be opened from a human-signed mandate (AP2 open payment mandate, Verifiable
Intent L2) only when this section names at least one trusted issuer and registers the
agent's key: nothing is trusted by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.verify.mandates import TrustedIssuer, TrustedIssuers, p256_key
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_Path = Annotated[Path, Field(strict=False)]
# RFC 7638 SHA-256 thumbprint, base64url without padding.
THUMBPRINT = re.compile(r"^[A-Za-z0-9_-]{43}$")
_KID = re.compile(r"^[\x21-\x7e]{1,128}$")
_AGENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


class IssuerConfig(BaseModel):
    """A key trusted to sign the root of a mandate chain, named by the ``kid`` its JWTs
    carry: a P-256 public key as a PEM file or an inline JWK (exactly one)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kid: str
    public_key_file: _Path | None = None
    jwk: dict[str, str] | None = None
    # The root may be the mandate itself, signed by this issuer (a provider-signed
    # mandate, no user hop). Off by default: a chain is rooted in a user credential.
    provider_root: bool = False

    @field_validator("kid")
    @classmethod
    def _kid(cls, v: str) -> str:
        if not _KID.fullmatch(v):
            raise ValueError("kid must be 1 to 128 printable ASCII characters")
        return v

    @model_validator(mode="after")
    def _one_key(self) -> IssuerConfig:
        if (self.public_key_file is None) == (self.jwk is None):
            raise ValueError(f"issuer {self.kid}: give exactly one of public_key_file and jwk")
        return self


class MandateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    issuers: list[IssuerConfig] = Field(default_factory=list)
    # Roots an ``x5c`` header's chain must end at (PEM files). A chain rooted here is
    # trusted like an issuer key (never as a provider root).
    x5c_roots: list[_Path] = Field(default_factory=list)
    # The mandate types accepted, matched exactly against ``vct``.
    vct: list[str] = Field(default_factory=lambda: ["mandate.payment.open.1"], min_length=1)
    # agent id -> the RFC 7638 thumbprints of the keys it holds mandates with.
    agent_keys: dict[str, list[str]] = Field(default_factory=dict)
    max_chain_bytes: int = Field(default=65_536, ge=1_024, le=1_048_576)
    # Who this signer is to mandates: the ``aud`` a closed agent hop must name, and the
    # ``iss`` of the receipts it signs.
    audience: str = Field(default="paywarden", min_length=1, max_length=256)
    # Open a session only from a chain that ends with the agent's closed hop (the agent
    # proves it holds the key, and each such hop opens one session).
    require_agent_hop: bool = False

    @field_validator("issuers")
    @classmethod
    def _issuers(cls, v: list[IssuerConfig]) -> list[IssuerConfig]:
        kids = [i.kid for i in v]
        if len(set(kids)) != len(kids):
            raise ValueError("an issuer kid is listed twice")
        return v

    @field_validator("agent_keys")
    @classmethod
    def _agent_keys(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        owners: dict[str, str] = {}
        for agent, prints in v.items():
            if not _AGENT.fullmatch(agent):
                raise ValueError(f"agent id {agent!r} is malformed")
            for p in prints:
                if not THUMBPRINT.fullmatch(p):
                    raise ValueError(f"{agent}: {p!r} is not an RFC 7638 SHA-256 thumbprint")
                if owners.setdefault(p, agent) != agent:
                    raise ValueError(f"key {p} is registered for {owners[p]} and {agent}")
        return v

    def holders(self) -> Mapping[str, str]:
        """Each registered agent key's thumbprint -> its agent id."""
        return {p: agent for agent, prints in self.agent_keys.items() for p in prints}

    def trusted(self) -> TrustedIssuers:
        """The issuer keys and x5c roots, read from their files (ValueError names the
        file that cannot be used)."""
        keys = {i.kid: TrustedIssuer(_issuer_key(i), i.provider_root) for i in self.issuers}
        return TrustedIssuers(keys, tuple(_root(p) for p in self.x5c_roots))


def _issuer_key(issuer: IssuerConfig) -> ec.EllipticCurvePublicKey:
    if issuer.jwk is not None:
        return p256_key(issuer.jwk)
    assert issuer.public_key_file is not None
    try:
        key = serialization.load_pem_public_key(issuer.public_key_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"issuer {issuer.kid}: cannot read {issuer.public_key_file}: {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError(f"issuer {issuer.kid}: {issuer.public_key_file} is not a P-256 key")
    return key


def _root(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the x5c root {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class MandateSettings:
    """``[mandates]`` as the core uses it: the trusted issuers read from their files."""

    issuers: TrustedIssuers
    holders: Mapping[str, str]  # agent key thumbprint -> agent id
    vct: tuple[str, ...]
    audience: str
    max_chain_bytes: int
    require_agent_hop: bool = False

    @classmethod
    def of(cls, config: MandateConfig) -> MandateSettings:
        return cls(
            config.trusted(),
            config.holders(),
            tuple(config.vct),
            config.audience,
            config.max_chain_bytes,
            config.require_agent_hop,
        )

    @property
    def configured(self) -> bool:
        return bool(self.issuers.keys) or bool(self.issuers.x5c_roots)

    @classmethod
    def none(cls) -> MandateSettings:
        """No issuer trusted: every mandate is refused (MANDATES_NOT_CONFIGURED)."""
        return cls.of(MandateConfig())

"""Configuration: the settings and their pydantic validation.

:mod:`paywarden.signer.config_file` reads them from a TOML file and the
environment (:func:`~paywarden.signer.config_file.load_config`).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from paywarden.hsm import KeyRef
from paywarden.policy.vocabulary import AmountError, Asset, KeyProfile, parse_amount
from paywarden.signer.mandate_config import MandateConfig
from paywarden.signer.x402_config import X402AssetConfig, addresses_fold_case, one_code_per_token
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_DATA_DIR = Path("data")

_Path = Annotated[Path, Field(strict=False)]
_ASSET = re.compile(r"^[A-Z][A-Z0-9]{1,11}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ServerConfig(_Model):
    listen: str = "127.0.0.1:50051"
    trust_domain: str = "paywarden.local"
    tls_cert: _Path = DEFAULT_DATA_DIR / "pki" / "server.crt"
    tls_key: _Path = DEFAULT_DATA_DIR / "pki" / "server.key"
    client_ca: _Path = DEFAULT_DATA_DIR / "pki" / "ca.crt"
    # A CRL (PEM or DER) signed by a client CA, published by the security team: the
    # serials it lists are refused like revoked ones. Read again when the file changes.
    crl_file: _Path | None = None
    max_workers: int = Field(default=16, ge=1, le=256)
    grace_seconds: float = Field(default=5.0, ge=0, le=60)
    # gRPC's own cap on calls in flight (queued ones included), past which it refuses
    # every caller, operators too. Unset by default: max_connections and
    # max_concurrent_streams bound the calls; when set, it must be above their product.
    max_concurrent_rpcs: int | None = Field(default=None, ge=1, le=1_000_000_000)
    # A connection that has not finished its TLS handshake within this time is
    # closed (gRPC's default is 120 s: idle sockets could hold every descriptor).
    handshake_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # Connections beyond this many are closed as they arrive; keep it well
    # below the process's descriptor limit (``ulimit -n``), see the README.
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    # Server reflection (for grpcurl and the like), operators only when on.
    reflection: bool = False
    # Worker threads kept for operators' unary calls besides Control (which has
    # control_workers): every other call, and every stream, shares the rest of max_workers.
    reserved_workers: int = Field(default=2, ge=1, le=255)
    # Streams (health Watch, reflection) open at once, in all and per principal.
    max_streams: int = Field(default=4, ge=0, le=10_000)
    max_streams_per_principal: int = Field(default=2, ge=0, le=10_000)
    # Unary calls one principal may have in flight at once.
    max_calls_per_principal: int = Field(default=8, ge=1, le=10_000)
    # A Sign is committed only with more than this much of its deadline left: room
    # for the HSM, the signature's commit and the answer.
    deadline_margin_seconds: float = Field(default=0.25, ge=0, le=10)
    # Calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS):
    # a client's further calls wait on its side until one ends.
    max_concurrent_streams: int = Field(default=16, ge=1, le=10_000)
    # Threads of the operators' Control service, apart from every other call's: the
    # kill switch never waits behind the signing path.
    control_workers: int = Field(default=4, ge=1, le=256)
    # A connection is told to go away (GOAWAY) after this long, and its calls in flight
    # get max_connection_age_grace_seconds more before it is closed: clients reconnect,
    # and each new handshake checks the client certificate's dates, the client CAs and
    # the server certificate in use (gRPC adds up to 10% of jitter to the age).
    max_connection_age_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)
    max_connection_age_grace_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:50051")
        return v

    @field_validator("trust_domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", v):
            raise ValueError("must be a lowercase DNS-style name")
        return v

    @model_validator(mode="after")
    def _operators_keep_their_share(self) -> ServerConfig:
        if self.reserved_workers >= self.max_workers:
            raise ValueError("server.reserved_workers must be below server.max_workers")
        # gRPC refuses every caller, operators too, past max_concurrent_rpcs; it counts
        # calls queued for a thread as well, and calls that never send their message
        # can be queued up to what the connection and stream caps allow.
        most = self.max_connections * self.max_concurrent_streams
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs <= most:
            raise ValueError(
                "server.max_concurrent_rpcs must be above server.max_connections x"
                f" server.max_concurrent_streams ({most}), or unset"
            )
        return self


class HsmConfig(_Model):
    module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "paywarden-dev"  # noqa: S105 - a label, not a secret
    pin_file: _Path | None = DEFAULT_DATA_DIR / "dev" / "DEVELOPMENT-ONLY-user.pin"
    # Stays readable in /proc/<pid>/environ for the life of the process: prefer
    # pin_file, or pin_fd (a descriptor the parent opened; read once, then closed).
    pin_env: str | None = None
    pin_fd: int | None = Field(default=None, ge=3, le=65_535)
    softhsm_conf: _Path | None = Path("softhsm.conf")
    retry_interval_seconds: float = Field(default=1.0, ge=0, le=300)

    @model_validator(mode="before")
    @classmethod
    def _pin_env_replaces_default_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "pin_file" in data:
            return data
        if "pin_env" in data or "pin_fd" in data:
            return {**data, "pin_file": None}
        return data

    @model_validator(mode="after")
    def _one_pin_source(self) -> HsmConfig:
        sources = [s for s in (self.pin_file, self.pin_env, self.pin_fd) if s is not None]
        if len(sources) > 1:
            raise ValueError("set exactly one of hsm.pin_file, hsm.pin_fd and hsm.pin_env")
        if not sources:
            raise ValueError("set one of hsm.pin_file, hsm.pin_fd and hsm.pin_env")
        return self


class StoreConfig(_Model):
    # "sqlite:///PATH" (the default: the file at ``path``) or
    # "postgresql://USER@HOST:PORT/DBNAME?sslmode=verify-full&sslrootcert=…": libpq's URL,
    # TLS to the database in its query; the password never in it (password_file/_env).
    url: str | None = None
    path: _Path = DEFAULT_DATA_DIR / "paywarden.db"
    password_file: _Path | None = None
    password_env: str | None = None
    # PostgreSQL: connections per signer process.
    pool_size: int = Field(default=8, ge=1, le=200)
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Longest wait for the store's write lock; a call's own deadline shortens it.
    lock_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @model_validator(mode="before")
    @classmethod
    def _sqlite_url(cls, data: Any) -> Any:
        """``url = "sqlite:///PATH"`` is ``path = "PATH"`` (relative to the config's
        directory unless absolute: ``sqlite:////abs/path``)."""
        if isinstance(data, dict) and isinstance(data.get("url"), str):
            url = data["url"]
            if url.startswith("sqlite:"):
                if "path" in data:
                    raise ValueError("set store.url or store.path, not both")
                if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
                    raise ValueError("store.url: a SQLite URL is sqlite:///PATH")
                return {**data, "url": None, "path": url[len("sqlite:///") :]}
        return data

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("store.url: sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME")
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise ValueError(
                "store.url: no password in the URL; use store.password_file or store.password_env"
            )
        if not parts.path.strip("/"):
            raise ValueError("store.url: name the database (postgresql://…/DBNAME)")
        return v

    @model_validator(mode="after")
    def _password_source(self) -> StoreConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("set at most one of store.password_file and store.password_env")
        if self.url is None and (self.password_file or self.password_env):
            raise ValueError("store.password_file and store.password_env are for PostgreSQL")
        if self.url is not None and self.pool_size < 2:
            # A checkpoint holds its turn on one connection while it reads and writes on
            # another.
            raise ValueError("store.pool_size: at least 2 for PostgreSQL")
        return self

    @property
    def postgres(self) -> bool:
        return self.url is not None


class AssetConfig(_Model):
    decimals: int = Field(ge=0, le=18)
    # Payee ids compare case-insensitively (e-mail-like ids; an x402 asset's addresses).
    case_insensitive_payees: bool = False
    # Largest amount a single payment or budget may name, in the asset's units.
    max_amount: str = "1000000000"
    # Paid with x402 (``SignX402``, ``x402-exact-evm`` keys) instead of a JWS (``Sign``).
    x402: X402AssetConfig | None = None

    _addresses_fold_case = model_validator(mode="before")(addresses_fold_case)

    @field_validator("max_amount")
    @classmethod
    def _max_amount(cls, v: str, info: ValidationInfo) -> str:
        decimals = info.data.get("decimals")
        if decimals is None:
            return v  # decimals is invalid and reported on its own
        try:
            limit = parse_amount(v, decimals).minor
        except AmountError:
            raise ValueError(
                f"limit {v!r} is not a plain decimal with at most {decimals} decimals"
            ) from None
        if limit <= 0:
            raise ValueError("must be greater than zero")
        return v

    def asset(self, code: str) -> Asset:
        return Asset(code, self.decimals, self.case_insensitive_payees, self.max_amount)


class KeyConfig(_Model):
    label: str
    version: int = Field(ge=1, le=999_999)
    # jws-es256 (P-256, Sign) or x402-exact-evm (secp256k1, SignX402).
    profile: Annotated[KeyProfile, Field(strict=False)] = KeyProfile.JWS_ES256

    def ref(self) -> KeyRef:
        return KeyRef(self.label, self.version)

    @model_validator(mode="after")
    def _valid(self) -> KeyConfig:
        self.ref()  # raises ValueError with a clear message
        return self


class PolicyConfig(_Model):
    # Directory of policy packs (*.toml), loaded at start-up.
    dir: _Path = DEFAULT_DATA_DIR / "policy"
    # Time zone of calendar days and allowed hours.
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class AuditConfig(_Model):
    # The HSM key that signs checkpoints; never a payment key.
    key: str = "audit.v1"
    # A signed checkpoint after this many records, and at least this often.
    checkpoint_every: int = Field(default=100, ge=1, le=1_000_000)
    checkpoint_seconds: float = Field(default=60.0, gt=0, le=86_400)

    def ref(self) -> KeyRef:
        return KeyRef.parse(self.key)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        KeyRef.parse(v)
        return v


class MetricsConfig(_Model):
    # Prometheus endpoint, on a loopback address; "" turns it off.
    listen: str = "127.0.0.1:9464"
    # Sessions remembered for the average spend per task (memory stays bounded).
    max_tracked_sessions: int = Field(default=10_000, ge=1, le=10_000_000)

    @field_validator("listen")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if not v:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise ValueError("must be HOST:PORT on a loopback address, e.g. 127.0.0.1:9464")
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise ValueError("must be a loopback address (metrics are not for the network)")
        return v


class LimitsConfig(_Model):
    max_expiry_seconds: int = Field(default=300, ge=1, le=86_400)
    max_session_ttl_seconds: int = Field(default=86_400, ge=1, le=30 * 86_400)
    # Refusal budget per principal (a token bucket): this many refusals in a burst,
    # refilled at this rate; past it, Sign is refused (RATE_LIMITED) before parsing.
    refusal_burst: int = Field(default=100, ge=1, le=1_000_000)
    refusal_rate_per_second: float = Field(default=2.0, gt=0, le=1_000_000)
    # A repeated refusal (same principal and reason) within this window is counted,
    # not recorded in full: one sign.refused.summary record per window.
    refusal_summary_seconds: int = Field(default=60, ge=1, le=86_400)
    # How stale the in-memory view of freezes used before parsing may get (freezes
    # set in this process refresh it at once; the check in the transaction stays).
    freeze_cache_seconds: float = Field(default=1.0, gt=0, le=60)


def _default_assets() -> dict[str, AssetConfig]:
    return {"USD": AssetConfig(decimals=2), "EUR": AssetConfig(decimals=2)}


def _default_keys() -> list[KeyConfig]:
    return [KeyConfig(label="payments", version=1)]


class Config(_Model):
    server: ServerConfig = ServerConfig()
    hsm: HsmConfig = HsmConfig()
    store: StoreConfig = StoreConfig()
    limits: LimitsConfig = LimitsConfig()
    policy: PolicyConfig = PolicyConfig()
    audit: AuditConfig = AuditConfig()
    metrics: MetricsConfig = MetricsConfig()
    # Agent groups that policy packs may name: group -> agent ids.
    groups: dict[str, list[str]] = Field(default_factory=dict)
    assets: dict[str, AssetConfig] = Field(default_factory=_default_assets)
    keys: list[KeyConfig] = Field(default_factory=_default_keys)
    mandates: MandateConfig = MandateConfig()

    @field_validator("assets")
    @classmethod
    def _assets(cls, v: dict[str, AssetConfig]) -> dict[str, AssetConfig]:
        if not v:
            raise ValueError("at least one asset must be configured")
        for code in v:
            if not _ASSET.fullmatch(code):
                raise ValueError(f"asset code {code!r} must match {_ASSET.pattern}")
        return v

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[KeyConfig]) -> list[KeyConfig]:
        if not v:
            raise ValueError("at least one payment key must be configured")
        ids = [k.ref().key_id for k in v]
        if len(set(ids)) != len(ids):
            raise ValueError("a key is listed twice")
        profiles: dict[str, KeyProfile] = {}
        for k in v:
            if profiles.setdefault(k.label, k.profile) is not k.profile:
                raise ValueError(f"key label {k.label!r} is listed under two profiles")
        return v

    @field_validator("assets")
    @classmethod
    def _x402_assets(cls, v: dict[str, AssetConfig]) -> dict[str, AssetConfig]:
        one_code_per_token({code: a.x402 for code, a in v.items()})
        return v

    @model_validator(mode="after")
    def _audit_key_is_not_a_payment_key(self) -> Config:
        if self.audit.key in {k.ref().key_id for k in self.keys}:
            raise ValueError(f"audit.key {self.audit.key} is also a payment key")
        return self

    def key_refs(self) -> list[KeyRef]:
        """The ``jws-es256`` payment keys."""
        return [k.ref() for k in self.keys if k.profile is KeyProfile.JWS_ES256]

    def evm_key_refs(self) -> list[KeyRef]:
        """The ``x402-exact-evm`` payment keys."""
        return [k.ref() for k in self.keys if k.profile is KeyProfile.X402_EXACT_EVM]

    def key_profiles(self) -> dict[str, KeyProfile]:
        """Each configured key label's profile (a label has one)."""
        return {k.label: k.profile for k in self.keys}

    def asset_table(self) -> dict[str, Asset]:
        """The configured assets as the vocabulary's :class:`Asset`, by code: what every
        layer past the configuration uses."""
        return {code: a.asset(code) for code, a in self.assets.items()}

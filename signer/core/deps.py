"""What the core's use cases work with, in one small object instead of the config.

Each use case (sessions, signing, approvals, freezes, checkpoints) takes a
:class:`Deps`: the store, the HSM, the policy packs, decision time, the metrics,
and the few settings the core reads. The helpers below are the ones every use
case shares: the role check and the mapping of store failures to answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from zoneinfo import ZoneInfo

from paywarden.hsm import Hsm
from paywarden.policy import PackSet
from paywarden.policy.vocabulary import Asset, KeyProfile, format_amount
from paywarden.signer.config import AuditConfig, Config, LimitsConfig
from paywarden.signer.core.policy_set import LivePolicy, PolicySet
from paywarden.signer.errors import Forbidden, Internal, Reason, Unavailable
from paywarden.signer.identity import Principal, Role
from paywarden.signer.mandate_config import MandateSettings
from paywarden.signer.metrics import Metrics
from paywarden.signer.store.protocols import Store
from paywarden.signer.store.records import InvariantBroken, StoreError
from paywarden.signer.timekeeping import HighWater
from paywarden.signer.x402_config import X402AssetConfig

log = logging.getLogger("paywarden.signer")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Deps:
    store: Store
    hsm: Hsm
    policy: LivePolicy  # the packs in force; a reload replaces them whole
    clock: HighWater  # decision time: never below what is recorded
    metrics: Metrics
    assets: Mapping[str, Asset]  # the configured assets
    limits: LimitsConfig
    tz: ZoneInfo  # the policy's calendar day
    audit: AuditConfig  # the checkpoint key and cadence
    payment_keys: frozenset[str]  # the configured payment keys' ids
    # each configured key label's profile (a label absent here is jws-es256)
    key_profiles: Mapping[str, KeyProfile] = field(default_factory=dict)
    # the assets paid with x402, by code
    x402: Mapping[str, X402AssetConfig] = field(default_factory=dict)
    # whom a mandate chain may be rooted in, and the agents' mandate keys
    mandates: MandateSettings = field(default_factory=MandateSettings.none)

    @classmethod
    def from_config(
        cls,
        config: Config,
        store: Store,
        hsm: Hsm,
        packs: PackSet,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> Deps:
        return cls(
            store=store,
            hsm=hsm,
            policy=LivePolicy(PolicySet.build(packs, config.asset_table(), config.policy.timezone)),
            clock=HighWater(clock, store.latest_audit_time()),
            metrics=metrics or Metrics(config.metrics.max_tracked_sessions),
            assets=config.asset_table(),
            limits=config.limits,
            tz=ZoneInfo(config.policy.timezone),
            audit=config.audit,
            payment_keys=frozenset(k.ref().key_id for k in config.keys),
            key_profiles=config.key_profiles(),
            x402={code: a.x402 for code, a in config.assets.items() if a.x402 is not None},
            mandates=MandateSettings.of(config.mandates),
        )

    @property
    def packs(self) -> PackSet:
        """The packs in force now (a decision takes ``policy.current()`` once instead)."""
        return self.policy.current().packs

    def now(self) -> int:
        return self.clock.now()

    def decimals(self, asset: str) -> int:
        known = self.assets.get(asset)
        return known.decimals if known is not None else 0

    def amount(self, minor: int, asset: str) -> str:
        """``minor`` units of ``asset`` as decimal text."""
        return amount_text(minor, self.decimals(asset))


def amount_text(minor: int, decimals: int) -> str:
    return format_amount(minor, decimals)


def require(caller: Principal, role: Role) -> None:
    # The gRPC layer checks roles from its table; this second check keeps the
    # service safe when it is called directly.
    if caller.role is not role:
        raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"role {caller.role} may not do this")


def store_call(fn: Callable[[], T]) -> T:
    """Runs a store call for a principal's request: a broken invariant is an
    internal error, any other store failure makes the store unavailable."""
    try:
        return fn()
    except InvariantBroken as exc:
        log.error("store invariant broken: %s", exc)
        raise Internal(Reason.INTERNAL, "internal error; nothing was signed") from None
    except StoreError as exc:
        log.error("store error: %s", exc)
        raise Unavailable(
            Reason.STORE_UNAVAILABLE, "the state store is unavailable; nothing was signed"
        ) from None


def control_store_call(fn: Callable[[], T]) -> T:
    """Runs a store call for an operator's request (freezes, checkpoints, proofs):
    a store failure makes the store unavailable."""
    try:
        return fn()
    except StoreError as exc:
        log.error("store error: %s", exc)
        raise Unavailable(Reason.STORE_UNAVAILABLE, "the state store is unavailable") from None

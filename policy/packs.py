"""Policy packs: TOML files validated by pydantic, unknown fields rejected.

A pack names the agents (or groups) it applies to and what they may do: the
assets, keys and payees it explicitly allows, and the limits. Anything a pack
does not allow is denied. Each pack carries an id, a version and the SHA-256
of its file, which every decision records.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import time as dtime
from pathlib import Path
from typing import Annotated

from paywarden.policy.payees import PatternError, compile_pattern
from paywarden.policy.vocabulary import FirstPaymentMode, is_plain_decimal
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A key grant: an exact version ("payments.v2", only that version) or a label
# ("payments", whichever version of it is active when the payment is signed).
_KEY_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}(\.v[1-9][0-9]{0,5})?")

# An amount as the pack writes it; compiled to minor units once the asset is known.
AmountText = Annotated[str, Field(min_length=1, max_length=40)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _check_amount(value: str, name: str) -> str:
    if not is_plain_decimal(value):
        raise ValueError(f'{name} must be a plain decimal string like "12.50" (no sign)')
    return value


class ApprovalTier(_Strict):
    above: AmountText  # payments strictly above this amount need `approvers` approvals
    approvers: int = Field(ge=1, le=10)

    @field_validator("above")
    @classmethod
    def _above(cls, v: str) -> str:
        return _check_amount(v, "above")


class AssetRules(_Strict):
    keys: list[str] = Field(min_length=1)
    max_per_payment: AmountText
    daily_limit: AmountText | None = None  # calendar day in the policy time zone
    rolling_24h_limit: AmountText | None = None
    approval_above: AmountText | None = None  # one approver above this amount
    approval_tiers: list[ApprovalTier] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if not _KEY_ID.fullmatch(key):
                raise ValueError(f"key {key!r} is not of the form <label>.v<version> or <label>")
        if len(set(v)) != len(v):
            raise ValueError("a key is listed twice")
        return v

    def approval_steps(self) -> list[tuple[str, str, int]]:
        """Every approval threshold as (its field, the amount above which, approvers):
        ``approval_above`` asks one approver. The one reading of the two fields that the
        engine, ``explain``, ``lint`` and ``diff`` share; a payment needs the most
        approvers of any step it is above."""
        steps = [] if self.approval_above is None else [("approval_above", self.approval_above, 1)]
        steps += [
            (f"approval_tiers[{i}].above", t.above, t.approvers)
            for i, t in enumerate(self.approval_tiers)
        ]
        return steps

    @field_validator("max_per_payment", "daily_limit", "rolling_24h_limit", "approval_above")
    @classmethod
    def _amounts(cls, v: str | None) -> str | None:
        return None if v is None else _check_amount(v, "amount")


MAX_PATTERNS = 256  # per list: matching costs (patterns x identifier length), bounded


def _pattern(value: str) -> str:
    """What validates is what runs: the runtime compiler, with both case flags
    (the pack may serve case-sensitive and case-insensitive assets)."""
    for case_insensitive in (False, True):
        try:
            compile_pattern(value, case_insensitive)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
    # Identifiers are compared in NFC; so are the patterns that name them.
    return unicodedata.normalize("NFC", value)


PayeePattern = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_pattern)]


class PayeeRules(_Strict):
    allow: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list)
    allow_patterns: list[PayeePattern] = Field(default_factory=list, max_length=MAX_PATTERNS)
    deny: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list)
    deny_patterns: list[PayeePattern] = Field(default_factory=list, max_length=MAX_PATTERNS)
    # A payee this agent has never paid: deny, approve (human approval) or allow. Not
    # strict: the file's text names the member.
    first_payment: Annotated[FirstPaymentMode, Field(strict=False)] = FirstPaymentMode.DENY

    @field_validator("allow", "deny")
    @classmethod
    def _identifiers(cls, v: list[str]) -> list[str]:
        return [unicodedata.normalize("NFC", p) for p in v]

    @model_validator(mode="after")
    def _not_empty(self) -> PayeeRules:
        if not self.allow and not self.allow_patterns:
            raise ValueError("allow and allow_patterns are both empty: the pack could pay no one")
        return self


class Velocity(_Strict):
    max_payments: int = Field(ge=1)
    window_seconds: int = Field(ge=1, le=30 * 86_400)


class Diversity(_Strict):
    max_payees_per_session: int | None = Field(default=None, ge=1)
    max_payees_per_day: int | None = Field(default=None, ge=1)


class Hours(_Strict):
    start: str  # "HH:MM" in the policy time zone, inclusive
    end: str  # "HH:MM", exclusive; end < start spans midnight

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        try:
            dtime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a time HH:MM") from None
        if not re.fullmatch(r"[0-2][0-9]:[0-5][0-9]", v):
            raise ValueError(f"{v!r} is not a time HH:MM")
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Hours:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")
        return self

    def minutes(self) -> tuple[int, int]:
        s, e = dtime.fromisoformat(self.start), dtime.fromisoformat(self.end)
        return s.hour * 60 + s.minute, e.hour * 60 + e.minute


class Breaker(_Strict):
    """Freezes the agent (until an operator unfreezes it) when, over the window,
    its rejections, rejection rate, spend or distinct payees pass a threshold."""

    window_seconds: int = Field(ge=1, le=7 * 86_400)
    max_rejections: int | None = Field(default=None, ge=0)
    max_rejection_rate: float | None = Field(default=None, gt=0, le=1)
    min_decisions: int = Field(default=10, ge=1)
    max_spend: dict[str, AmountText] = Field(default_factory=dict)
    max_payees: int | None = Field(default=None, ge=1)

    @field_validator("max_spend")
    @classmethod
    def _spend(cls, v: dict[str, str]) -> dict[str, str]:
        for asset, amount in v.items():
            _check_amount(amount, f"max_spend.{asset}")
        return v


class SessionLimits(_Strict):
    max_ttl_seconds: int = Field(ge=1, le=30 * 86_400)
    max_budget: dict[str, AmountText] = Field(default_factory=dict)
    require_plan: bool = False

    @field_validator("max_budget")
    @classmethod
    def _budgets(cls, v: dict[str, str]) -> dict[str, str]:
        for asset, amount in v.items():
            _check_amount(amount, f"max_budget.{asset}")
        return v


class PolicyPackModel(_Strict):
    id: Annotated[str, Field(pattern=_ID)]
    version: int = Field(ge=1, le=2**53 - 1)
    description: str = ""
    agents: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    assets: dict[str, AssetRules] = Field(min_length=1)
    payees: PayeeRules
    velocity: Velocity | None = None
    diversity: Diversity = Diversity()
    hours: Hours | None = None
    breaker: Breaker | None = None
    sessions: SessionLimits
    # A reload that widens what an agent of this pack may do waits for a second
    # operator's confirmation; the pack in force decides, so a new text cannot drop it.
    widening_needs_second_operator: bool = False

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: list[str]) -> list[str]:
        for agent in v:
            if not _PRINCIPAL.fullmatch(agent):
                raise ValueError(f"agent id {agent!r} is malformed")
        return v

    @model_validator(mode="after")
    def _applies_to_someone(self) -> PolicyPackModel:
        if not self.agents and not self.groups:
            raise ValueError("agents and groups are both empty: the pack applies to no one")
        unknown = set(self.sessions.max_budget) - set(self.assets)
        if unknown:
            raise ValueError(
                f"sessions.max_budget names assets the pack does not allow: {sorted(unknown)}"
            )
        return self


@dataclass(frozen=True, slots=True)
class PolicyPack:
    model: PolicyPackModel
    sha256: str
    path: str
    text: bytes = b""  # the file's bytes, as hashed (what a reload proposes and applies)

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def version(self) -> int:
        return self.model.version

    def ref(self) -> dict[str, str | int]:
        return {"id": self.id, "version": self.version, "sha256": self.sha256}


class PackError(Exception):
    """A pack is invalid; the message names the file and the field."""


def _describe(path: Path, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{path}: field {loc}: {err['msg']}")
    return "; ".join(parts)


def load_pack(path: Path) -> PolicyPack:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PackError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_pack(raw, path)


def parse_pack(raw: bytes, path: Path) -> PolicyPack:
    """A pack from its file's bytes; ``path`` names it in errors and in the pack."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PackError(f"{path}: not valid TOML: {exc}") from None
    try:
        model = PolicyPackModel.model_validate(data)
    except ValidationError as exc:
        raise PackError(_describe(path, exc)) from None
    return PolicyPack(model, hashlib.sha256(raw).hexdigest(), str(path), raw)


@dataclass(frozen=True)
class PackSet:
    """All loaded packs and the agent → pack mapping (an agent has at most one)."""

    packs: tuple[PolicyPack, ...]
    by_agent: Mapping[str, PolicyPack]
    by_group: Mapping[str, PolicyPack]
    groups: Mapping[str, frozenset[str]]

    def for_agent(self, agent_id: str) -> PolicyPack | None:
        pack = self.by_agent.get(agent_id)
        if pack is not None:
            return pack
        for group, members in sorted(self.groups.items()):
            if agent_id in members and group in self.by_group:
                return self.by_group[group]
        return None


def build_pack_set(packs: Iterable[PolicyPack], groups: Mapping[str, Iterable[str]]) -> PackSet:
    """Checks that no agent or group is claimed by two packs, or by two groups' packs."""
    group_sets = {g: frozenset(m) for g, m in groups.items()}
    by_agent: dict[str, PolicyPack] = {}
    by_group: dict[str, PolicyPack] = {}
    ids: set[str] = set()
    packs = tuple(packs)
    for pack in packs:
        if pack.id in ids:
            raise PackError(f"{pack.path}: pack id {pack.id!r} is used by two files")
        ids.add(pack.id)
        for agent in pack.model.agents:
            if agent in by_agent:
                raise PackError(
                    f"{pack.path}: agent {agent!r} is already in pack {by_agent[agent].id!r}"
                )
            by_agent[agent] = pack
        for group in pack.model.groups:
            if group not in group_sets:
                raise PackError(
                    f"{pack.path}: field groups: group {group!r} is not defined in the config"
                )
            if group in by_group:
                raise PackError(
                    f"{pack.path}: group {group!r} is already in pack {by_group[group].id!r}"
                )
            by_group[group] = pack
    # An agent reachable through two groups bound to different packs is ambiguous.
    for agent in {a for m in group_sets.values() for a in m} - set(by_agent):
        bound = {by_group[g].id for g, m in group_sets.items() if agent in m and g in by_group}
        if len(bound) > 1:
            raise PackError(f"agent {agent!r} belongs to groups bound to packs {sorted(bound)}")
    return PackSet(packs, by_agent, by_group, group_sets)


def load_pack_dir(directory: Path, groups: Mapping[str, Iterable[str]]) -> PackSet:
    if not directory.is_dir():
        raise PackError(f"{directory}: the policy directory does not exist")
    packs = [load_pack(p) for p in sorted(directory.glob("*.toml"))]
    return build_pack_set(packs, groups)


def pack_set_sha256(packs: PackSet) -> str:
    """One hash for a set of packs: of each pack's id, version and file hash, in id order."""
    lines = sorted(f"{p.id}\t{p.version}\t{p.sha256}\n" for p in packs.packs)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()

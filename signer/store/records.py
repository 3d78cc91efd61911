"""The state store's records (sessions, plans, reservations, decisions, approvals,
freezes, revocations, mandates, checkpoints) and its errors: plain values that every
backend reads and writes. The interfaces that serve them are in :mod:`.protocols`.

Spend is derived from *reservations*: one per allowed or pending decision.
A reservation is ``spent`` (allowed), ``held`` (waiting for approval, counted
until the payment's expiry) or ``released`` (approval denied or expired).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from paywarden.policy.engine import RuleResult
from paywarden.policy.vocabulary import (
    ApprovalStatus,
    FreezeScope,
    FreezeSource,
    KeyState,
    Phase,
    PlanLine,
    ReloadState,
    ReservationStatus,
    SessionState,
    Verdict,
)
from paywarden.signer.auditlog.checkpoints import Checkpoint as Checkpoint  # stored, not owned


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    agent_id: str
    planner_id: str
    task_digest: str
    created_at: int
    expires_at: int
    closed_at: int | None
    budgets_minor: Mapping[str, int]
    spent_minor: Mapping[str, int]
    allowed_payees: tuple[str, ...] = ()
    phase: Phase = Phase.NORMAL  # plan-bound sessions: EXPLORE, then EXECUTE
    pack_id: str = ""
    plan: tuple[PlanLine, ...] = ()
    payees: int = 0  # how many distinct payee keys were paid or held (live)
    # The pack the session was opened under (0 and "": opened before these were kept).
    pack_version: int = 0
    pack_sha256: str = ""
    mandate_id: str | None = None  # the mandate it was opened from (None: a planner's budget)

    def state(self, now: int) -> SessionState:
        if self.closed_at is not None:
            return SessionState.CLOSED
        if now >= self.expires_at:
            return SessionState.EXPIRED
        return SessionState.OPEN


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """An agent's live reservations, as the policy's limits need them, for one payee."""

    spent_24h_minor: int = 0  # in the payment's asset
    spent_today_minor: int = 0
    payments_in_window: int = 0  # every asset
    payee_paid_before: bool = False  # the payee was paid: signed, or allowed and live
    payees_today: int = 0  # distinct payees paid or held today
    payee_seen_today: bool = False  # the payee is one of them


@dataclass(frozen=True, slots=True)
class Reservation:
    decision_id: str
    agent_id: str
    session_id: str
    asset: str
    payee_key: str
    amount_minor: int
    created_at: int
    expires_at: int
    status: ReservationStatus
    plan_line: int | None = None
    mandate_id: str | None = None  # its session's mandate: the spend counts against it too


@dataclass(frozen=True, slots=True)
class PackRef:
    """The policy pack a decision was made under: its id, version and sha256."""

    id: str
    version: int
    sha256: str

    @classmethod
    def of(cls, ref: Mapping[str, str | int]) -> PackRef | None:
        """From a policy's pack reference (``PolicyPack.ref()``); None for a policy
        without a pack (the empty reference)."""
        if not ref:
            return None
        return cls(str(ref["id"]), int(ref["version"]), str(ref["sha256"]))

    def as_json(self) -> dict[str, str | int]:
        return {"id": self.id, "sha256": self.sha256, "version": self.version}


@dataclass(frozen=True, slots=True)
class DecisionAudit:
    """What a receipt reads of a Sign decision's row, by its id."""

    request_hash: str
    seq: int | None  # its sign.decision audit record; None for one recorded before the index
    payee: str
    signed: bool  # a signature is stored: the payee was paid


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One Sign decision (allow, deny or pending), as recorded."""

    id: str
    created_at: int
    agent_id: str
    session_id: str
    nonce: str
    request_hash: str
    outcome: Verdict
    reason: str
    message: str
    key_id: str
    asset: str
    amount_minor: int
    payload: bytes | None = None  # canonical claims, when allowed or pending
    jws: str | None = None  # attached once the HSM signed
    trace: tuple[RuleResult, ...] = ()  # every rule's result, in the policy's order
    purpose: str = ""  # untrusted agent text, never decisive
    pack: PackRef | None = None  # the deciding pack; None: the policy had no pack
    payee: str = ""
    expires_at: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    id: str
    decision_id: str
    required: int
    status: ApprovalStatus
    created_at: int
    expires_at: int
    approved_by: tuple[str, ...] = ()
    denied_by: str | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Freeze:
    scope: FreezeScope
    target: str  # "" for global
    reason: str
    actor: str  # "operator/<id>" or "breaker"
    source: FreezeSource
    at: int


class RevocationKind(StrEnum):
    """What a revocation names: a principal id (in every role) or a certificate serial."""

    PRINCIPAL = "principal"
    SERIAL = "serial"


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: RevocationKind
    value: str  # a principal id, or a serial as lower-case hex without leading zeros
    reason: str
    operator: str  # "operator/<id>"
    created_at: int


@dataclass(frozen=True, slots=True)
class PolicyReload:
    """A widening reload waiting for a second operator: the exact pack files proposed."""

    id: str
    proposed_by: str  # the proposing operator's principal id
    proposed_at: int
    expires_at: int
    old_sha256: str  # the pack set in force when it was proposed
    new_sha256: str  # the set the files make
    packs: tuple[tuple[str, str], ...]  # (file name, UTF-8 text), in file-name order
    widening: tuple[Mapping[str, str], ...]  # the widening changes (policy.diff as_json)
    state: ReloadState
    decided_by: str | None = None  # who confirmed it (or None)
    decided_at: int | None = None


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """One version of a payment key as the store keeps it: ``<label>.v<version>``, its
    state, and its public half (SubjectPublicKeyInfo DER) for the JWKS of every replica."""

    key_id: str
    label: str
    version: int
    state: KeyState
    spki_der: bytes
    created_at: int
    state_changed_at: int
    retired_at: int | None = None  # when it stopped being active: the grace period's start
    revoked_at: int | None = None
    revoked_reason: str = ""


@dataclass(frozen=True, slots=True)
class WindowStats:
    """An agent's recent activity, for the circuit breaker."""

    decisions: int
    denials: int
    spend_minor: Mapping[str, int]
    payees: int  # distinct payees paid or held
    payee_seen: bool = False  # the payment's payee is one of them


class StoreError(Exception):
    """The store cannot be used (I/O error, locked too long, corrupt)."""


@dataclass(frozen=True, slots=True)
class MandateRecord:
    """A mandate a session was opened from: the bounds it sets over every session opened
    from it (one row per mandate id, written by the first such session). Amounts are in
    minor units of ``asset``."""

    id: str  # SHA-256 hex of the compact issuer-signed JWT that carries the mandate
    agent_id: str  # the agent it was first opened for
    holder_jkt: str  # RFC 7638 SHA-256 thumbprint (base64url) of the agent key (cnf.jwk)
    issuer: str  # who signed the chain's root (a trusted issuer's kid, or x5c subject)
    asset: str  # our asset code (the mandate's currency)
    terms_sha256: str  # SHA-256 hex of ``terms``
    terms: str  # RFC 8785 JSON of the mandate-wide terms (for audit and equality)
    min_minor: int | None  # per payment, inclusive; None: no lower bound
    max_minor: int | None  # per payment, inclusive; None: no upper bound
    budget_minor: int  # total over every session of the mandate
    max_uses: int | None  # payments signed or held, over every session
    spacing_seconds: int | None  # least time between two uses (recurrence)
    not_before: int | None  # no payment before (execution date)
    reference: str | None  # a payment must carry this ref
    expires_at: int  # the mandate's exp
    created_at: int
    revoked_at: int | None = None  # the mandate, or its holder key, revoked
    revoked_reason: str = ""


@dataclass(frozen=True, slots=True)
class MandateUse:
    """What counts against a mandate at ``now``, over every session opened from it: the
    signed payments (settled into the mandates row) and the open reservations (not signed,
    not released, expires_at > now), exactly as a session's spend counts."""

    spent_minor: int = 0
    uses: int = 0
    last_use_at: int | None = None  # created_at of the newest counted reservation


class MandateRevocationKind(StrEnum):
    """What a mandate revocation names: one mandate, or every mandate of an agent key."""

    MANDATE = "mandate"  # value: a mandate id
    HOLDER = "holder"  # value: an agent key's RFC 7638 thumbprint


@dataclass(frozen=True, slots=True)
class MandateRevocation:
    kind: MandateRevocationKind
    value: str
    reason: str
    operator: str  # "operator/<id>"
    created_at: int


class MandateRevoked(StoreError):
    """Opening a session from a revoked mandate, or from one held by a revoked key."""


class MandateMismatch(StoreError):
    """A session from a stored mandate id with other terms, agent or holder than stored."""


class MandateReplayed(StoreError):
    """A session opened with a closed agent hop that opened one before."""


class InvariantBroken(Exception):
    """The store's contents break a rule every write keeps (a held payment without
    its approval, spend beyond a budget the policy just checked): a bug or an edit
    behind the signer's back, not unavailability. Nothing is decided or signed; the
    caller gets INTERNAL, not a hint to retry."""


@dataclass(frozen=True, slots=True)
class AgentOverview:
    """What an agent holds and uses now, read in one read transaction by the same
    fact reads as a decision (``paywarden explain agent``)."""

    usage: Mapping[str, AgentUsage]  # per asset asked for (payee facts: none asked)
    sessions: tuple[SessionRecord, ...]  # its open sessions, soonest expiry first, capped
    open_sessions: int  # how many are open in all
    pending_approvals: int  # its payments waiting for an approver, not expired
    freezes: tuple[Freeze, ...]  # global, the agent's, its open sessions', the keys asked for
    window: WindowStats | None  # the breaker's window, when a breaker window was asked for
    revoked: Revocation | None = None  # the agent's principal id revoked (every call refused)

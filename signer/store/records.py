"""The state store interface: sessions, plans, nonces, reservations, decisions
and approvals.

One small interface so that a PostgreSQL backend can serve several signer
replicas later. Every deciding read-check-write happens inside one
transaction (:meth:`Store.payment_tx`, :meth:`Store.approval_tx`): on SQLite
a ``BEGIN IMMEDIATE``, on PostgreSQL a serialisable transaction with the
session row locked. Nothing SQLite-specific appears in this module.

Spend is derived from *reservations*: one per allowed or pending decision.
A reservation is ``spent`` (allowed), ``held`` (waiting for approval, counted
until the payment's expiry) or ``released`` (approval denied or expired).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PlanLineRecord:
    payee: str  # as the planner wrote it (NFC)
    payee_key: str  # normalised for comparison
    asset: str
    max_amount_minor: int
    count: int
    used: int = 0


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
    phase: str = "normal"  # "normal", or "explore" then "execute" for plan-bound sessions
    pack_id: str = ""
    plan: tuple[PlanLineRecord, ...] = ()
    payees: frozenset[str] = frozenset()  # distinct payee keys paid or held
    # The pack the session was opened under (0 and "": opened before these were kept).
    pack_version: int = 0
    pack_sha256: str = ""

    def state(self, now: int) -> str:
        if self.closed_at is not None:
            return "closed"
        if now >= self.expires_at:
            return "expired"
        return "open"


@dataclass(frozen=True, slots=True)
class AgentUsage:
    """An agent's live reservations, as the policy's limits need them."""

    spent_24h_minor: int = 0
    spent_today_minor: int = 0
    payments_in_window: int = 0
    payees_paid: frozenset[str] = frozenset()
    payees_today: frozenset[str] = frozenset()


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
    status: str  # "spent", "held" or "released"
    plan_line: int | None = None


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One Sign decision (allow, deny or pending), as recorded."""

    id: str
    created_at: int
    agent_id: str
    session_id: str
    nonce: str
    request_hash: str
    outcome: str  # "allow", "deny" or "pending"
    reason: str
    message: str
    key_id: str
    asset: str
    amount_minor: int
    payload: bytes | None = None  # canonical claims, when allowed or pending
    jws: str | None = None  # attached once the HSM signed
    trace_json: str = "[]"
    purpose: str = ""  # untrusted agent text, never decisive
    pack_json: str = "{}"  # id, version and sha256 of the deciding pack
    payee: str = ""
    expires_at: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    id: str
    decision_id: str
    required: int
    status: str  # "pending", "approved", "denied" or "expired"
    created_at: int
    expires_at: int
    approved_by: tuple[str, ...] = ()
    denied_by: str | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Freeze:
    scope: str  # "global", "agent", "session" or "key"
    target: str  # "" for global
    reason: str
    actor: str  # "operator/<id>" or "breaker"
    source: str  # "operator" or "breaker"
    at: int


@dataclass(frozen=True, slots=True)
class WindowStats:
    """An agent's recent activity, for the circuit breaker."""

    decisions: int
    denials: int
    spend_minor: Mapping[str, int]
    payees: frozenset[str]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    size: int
    root: str  # hex
    at: int
    key_id: str
    body: str  # the signed RFC 8785 JSON
    signature: str  # base64url r||s (ES256)


class PaymentTx(Protocol):
    """The deciding transaction: every read and the write see one state."""

    def session(self, session_id: str, now: int) -> SessionRecord | None: ...

    def agent_usage(
        self, agent_id: str, asset: str, now: int, day_start: int, window_seconds: int
    ) -> AgentUsage: ...

    def decision_for_nonce(self, agent_id: str, nonce: str) -> DecisionRecord | None:
        """The agent's decision that used this nonce. Nonces are unique per agent:
        another agent's use of the same nonce is invisible here."""

    def approval_for_decision(self, decision_id: str) -> ApprovalRecord | None: ...

    def record_decision(
        self,
        decision: DecisionRecord,
        *,
        consume_nonce: bool,
        reservation: Reservation | None = None,
        approval: ApprovalRecord | None = None,
    ) -> None:
        """Stores the decision, consumes the nonce, and adds its reservation/approval."""

    def set_reservation(self, decision_id: str, status: str) -> bool:
        """Moves a reservation on; True if this changed it."""

    def audit(self, event: Mapping[str, Any]) -> int:
        """Appends an audit record in this transaction; returns its sequence number."""

    def frozen(self, agent_id: str, session_id: str, key_id: str) -> Freeze | None: ...

    def window_stats(self, agent_id: str, since: int) -> WindowStats: ...

    def freeze(self, freeze: Freeze) -> bool:
        """Adds a freeze; False if that scope and target were already frozen."""

    def set_approval_status(self, approval_id: str, status: str, now: int) -> None: ...


class ApprovalTx(Protocol):
    def approval(self, approval_id: str) -> ApprovalRecord | None: ...

    def decision(self, decision_id: str) -> DecisionRecord | None: ...

    def session(self, session_id: str, now: int) -> SessionRecord | None: ...

    def add_vote(self, approval_id: str, approver_id: str, vote: str, now: int, note: str) -> None:
        """Records a vote; a second vote by the same approver changes nothing."""

    def set_approval_status(self, approval_id: str, status: str, now: int) -> None: ...

    def set_reservation(self, decision_id: str, status: str) -> bool: ...

    def audit(self, event: Mapping[str, Any]) -> int: ...

    def frozen(self, agent_id: str, session_id: str, key_id: str) -> Freeze | None: ...


class Store(Protocol):
    def migrate(self) -> int:
        """Brings the schema to the current version; returns it."""

    def check(self) -> None:
        """Raises ``StoreError`` unless the store answers now."""

    def adopt_decimals(self, decimals: Mapping[str, int]) -> list[str]:
        """Assets whose stored amounts were written with other decimals than these."""

    def create_session(
        self, session: SessionRecord, decimals: Mapping[str, int], audit: Mapping[str, Any]
    ) -> None: ...

    def get_session(self, session_id: str, now: int) -> SessionRecord | None: ...

    def close_session(
        self, session_id: str, now: int, audit: Mapping[str, Any]
    ) -> SessionRecord | None:
        """Marks an open session closed (idempotent); returns it, or None if unknown."""

    def commit_plan(
        self,
        session_id: str,
        lines: tuple[PlanLineRecord, ...],
        now: int,
        audit: Mapping[str, Any],
    ) -> SessionRecord | None:
        """Stores the plan and moves an exploring session to execute; None if it was not
        exploring (the plan is immutable once committed)."""

    def payment_tx(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> AbstractContextManager[PaymentTx]:
        """``wait``: the longest wait for the write lock (None: the store's own bound);
        ``check`` runs once the lock is held and before the commit, and what it raises
        abandons the transaction."""

    def approval_tx(self) -> AbstractContextManager[ApprovalTx]: ...

    def attach_signature(
        self,
        decision_id: str,
        jws: str,
        clock: Callable[[], int],
        wait: float | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[str, bool] | None:
        """Stores the JWS of a still-committed, unexpired decision unless one is stored; returns
        (the stored JWS, whether this call stored it), or None when the payment was
        withdrawn meanwhile (nothing stored). ``clock`` is read once the transaction
        holds the write lock: an expiry that passed while the call waited for it counts.
        ``check`` runs under the lock and just before the commit, as for
        :meth:`payment_tx`: whatever it raises leaves nothing stored."""

    def get_decision(self, decision_id: str) -> DecisionRecord | None: ...

    def pending_approvals(self, now: int) -> list[ApprovalRecord]: ...

    # -- audit log and freezes --

    def audit_event(self, event: Mapping[str, Any]) -> int:
        """Appends one audit record in a transaction of its own."""

    def audit_head(self) -> tuple[int, bytes]:
        """(size, root) of the audit tree now."""

    def audit_leaves(self, size: int) -> list[bytes]: ...

    def latest_audit_time(self) -> int:
        """The time of the record at the log's head (0 while empty): decision time's floor."""

    def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def last_checkpoint(self) -> Checkpoint | None: ...

    def audit_record(self, seq: int) -> str: ...

    def set_freeze(self, freeze: Freeze, audit: Mapping[str, Any]) -> bool: ...

    def clear_freeze(self, scope: str, target: str, now: int, audit: Mapping[str, Any]) -> bool:
        """Lifts a freeze; lifting an agent's also restarts its breaker window."""

    def freezes(self) -> list[Freeze]: ...

    def close(self) -> None: ...

    def freeze_generation(self) -> int:
        """A number that changes whenever this process sets or lifts a freeze through
        the store (no I/O): in-memory views of the freezes reload when it moves."""


class StoreError(Exception):
    """The store cannot be used (I/O error, locked too long, corrupt)."""


class InvariantBroken(Exception):
    """The store's contents break a rule every write keeps (a held payment without
    its approval, spend beyond a budget the policy just checked): a bug or an edit
    behind the signer's back, not unavailability. Nothing is decided or signed; the
    caller gets INTERNAL, not a hint to retry."""

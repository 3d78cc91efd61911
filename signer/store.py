"""The state store interface: sessions, nonces, spend and decisions.

One small interface so that a PostgreSQL backend can serve several signer
replicas later. The deciding read-check-write happens inside one
:meth:`Store.payment_tx` transaction: on SQLite a ``BEGIN IMMEDIATE``, on
PostgreSQL a serialisable transaction with the session row locked. Nothing
SQLite-specific appears in this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol


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

    def state(self, now: int) -> str:
        if self.closed_at is not None:
            return "closed"
        if now >= self.expires_at:
            return "expired"
        return "open"


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One Sign decision, allowed or denied, as recorded."""

    id: str
    created_at: int
    agent_id: str
    session_id: str
    nonce: str
    request_hash: str
    outcome: str  # "allow" or "deny"
    reason: str
    message: str
    key_id: str
    asset: str
    amount_minor: int
    payload: bytes | None = None  # canonical claims, only when allowed
    jws: str | None = None  # attached once the HSM signed
    trace_json: str = "[]"
    purpose: str = ""  # untrusted agent text, never decisive
    extra: Mapping[str, str] = field(default_factory=dict)


class PaymentTx(Protocol):
    """The deciding transaction: every read and the write see one state."""

    def session(self, session_id: str) -> SessionRecord | None: ...

    def decision_for_nonce(self, nonce: str) -> DecisionRecord | None: ...

    def record_decision(self, decision: DecisionRecord, *, consume_nonce: bool) -> None:
        """Stores the decision; consumes the nonce when asked; adds the spend if allowed."""


class Store(Protocol):
    def migrate(self) -> int:
        """Brings the schema to the current version; returns it."""

    def check(self) -> None:
        """Raises ``StoreError`` unless the store answers now."""

    def create_session(self, session: SessionRecord) -> None: ...

    def get_session(self, session_id: str) -> SessionRecord | None: ...

    def close_session(self, session_id: str, now: int) -> SessionRecord | None:
        """Marks an open session closed (idempotent); returns it, or None if unknown."""

    def payment_tx(self) -> AbstractContextManager[PaymentTx]: ...

    def attach_signature(self, decision_id: str, jws: str) -> str:
        """Stores the JWS of an allowed decision unless one is stored; returns the stored one."""

    def get_decision(self, decision_id: str) -> DecisionRecord | None: ...

    def close(self) -> None: ...


class StoreError(Exception):
    """The store cannot be used (I/O error, locked too long, corrupt)."""

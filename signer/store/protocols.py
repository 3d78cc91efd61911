"""The state store's interfaces, one per use case, so that a PostgreSQL backend
can serve several signer replicas later and a use case sees only what it needs.

Every deciding read-check-write happens inside one transaction
(:meth:`PaymentStore.payment_tx`, :meth:`ApprovalStore.approval_tx`): on SQLite a
``BEGIN IMMEDIATE``, on PostgreSQL a serialisable transaction with the session row
locked. Nothing SQLite-specific appears in this module. A backend implements
:class:`Store` (all of them); an audit record is built by
:func:`paywarden.signer.auditlog.append.append` and persisted by the backend, in the
transaction of the change it describes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from paywarden.policy.vocabulary import (
    ApprovalStatus,
    FreezeScope,
    PlanLine,
    ReloadState,
    ReservationStatus,
    Vote,
)
from paywarden.signer.store.agent_protocols import AgentReadStore
from paywarden.signer.store.key_protocols import KeyStore
from paywarden.signer.store.mandate_protocols import MandateStore, MandateTx
from paywarden.signer.store.payment_reads import PaymentReadStore
from paywarden.signer.store.records import (
    AgentUsage,
    ApprovalRecord,
    Checkpoint,
    DecisionAudit,
    DecisionRecord,
    Freeze,
    KeyVersion,
    MandateRecord,
    PolicyReload,
    Reservation,
    Revocation,
    SessionRecord,
    WindowStats,
)

T = TypeVar("T")

# -- inside a deciding transaction -------------------------------------------------------


class DecidingTx(Protocol):
    """What both deciding transactions can do; every read and write sees one state."""

    def session(self, session_id: str, now: int) -> SessionRecord | None: ...

    def set_reservation(self, decision_id: str, status: ReservationStatus) -> bool:
        """Moves a reservation on; True if this changed it."""

    def set_approval_status(self, approval_id: str, status: ApprovalStatus, now: int) -> None: ...

    def audit(self, event: Mapping[str, Any]) -> int:
        """Appends an audit record in this transaction; returns its sequence number."""

    def frozen(self, agent_id: str, session_id: str, key_id: str) -> Freeze | None: ...


class SessionTx(Protocol):
    """Closing a session's transaction: the primitives that the core's
    :func:`~paywarden.signer.core.withdrawal.close_session` composes."""

    def session(self, session_id: str, now: int) -> SessionRecord | None: ...

    def mark_closed(self, session_id: str, now: int) -> bool:
        """Sets an open session's ``closed_at``; False if it is unknown or closed already."""

    def unsigned_decisions(self, session_id: str) -> list[str]:
        """Ids of the session's unsigned decisions that still hold something: a reservation
        not released or an approval pending or approved."""

    def approval_for_decision(self, decision_id: str) -> ApprovalRecord | None: ...

    def set_approval_status(self, approval_id: str, status: ApprovalStatus, now: int) -> None: ...

    def set_reservation(self, decision_id: str, status: ReservationStatus) -> bool:
        """Moves a reservation on; True if this changed it."""

    def audit(self, event: Mapping[str, Any]) -> int:
        """Appends an audit record in this transaction; returns its sequence number."""


class SignatureTx(Protocol):
    """Attaching a signature, in the Sign decision's transaction: the primitives that
    the core's :func:`~paywarden.signer.core.committed.attach_signature` composes."""

    def decision(self, decision_id: str) -> DecisionRecord | None: ...

    def approval_for_decision(self, decision_id: str) -> ApprovalRecord | None: ...

    def reservation(self, decision_id: str) -> Reservation | None: ...

    def frozen(self, agent_id: str, session_id: str, key_id: str) -> Freeze | None: ...

    def set_signature(self, decision_id: str, jws: str) -> bool:
        """Stores the JWS unless one is stored; True if this stored it."""


class PaymentTx(DecidingTx, SignatureTx, MandateTx, Protocol):
    """The Sign decision's transaction: the decision, its spend, its audit record and
    its signature are committed together."""

    def key_version(self, key_id: str) -> KeyVersion | None:
        """One payment key version by its id (one index probe)."""

    def active_key(self, label: str) -> KeyVersion | None:
        """The label's active version, the newest if several (one index probe)."""

    def agent_usage(
        self,
        agent_id: str,
        asset: str,
        payee_key: str,
        now: int,
        day_start: int,
        window_seconds: int,
    ) -> AgentUsage:
        """The agent's live spend in ``asset`` over the rolling 24 hours (created after
        ``now - 86400``) and since ``day_start``, its live payments in every asset in the
        velocity window, and its payees: whether ``payee_key`` was paid before, how many
        distinct payees today and whether ``payee_key`` is one. Costs O(log n) of the
        agent's history (plus its payees today and its unsigned holds)."""

    def payee_in_session(self, session_id: str, payee_key: str, now: int) -> bool:
        """Whether the session paid or holds a payment to ``payee_key`` that still counts."""

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
        """Stores the decision, consumes the nonce, and adds its reservation/approval
        (the core checked the reservation against the budget first:
        :func:`~paywarden.signer.core.backstop.check_budget`)."""

    def decision_audited(self, decision_id: str, seq: int) -> None:
        """Indexes the decision's audit record (``seq``) by its id, for its receipts."""

    def budget(self, session_id: str, asset: str) -> int | None:
        """The session's budget in the asset (minor units); None if it has none."""

    def live_spend(self, session_id: str, asset: str, now: int) -> int:
        """The session's spend in the asset that still counts at ``now``: reservations
        held or spent until the payment's expiry, and signed ones for ever."""

    def window_stats(self, agent_id: str, since: int, payee_key: str) -> WindowStats:
        """The agent's decisions, denials, spend and distinct payees of reservations
        not released, created after ``since`` (or the agent's last breaker reset),
        and whether ``payee_key`` is among those payees."""

    def freeze(self, freeze: Freeze) -> bool:
        """Adds a freeze; False if that scope and target were already frozen."""


class PaymentBatch(Protocol):
    """The items of a group commit (see :meth:`PaymentStore.payment_batch`)."""

    def item(self) -> AbstractContextManager[PaymentTx]:
        """One decision of the batch: what its block raises undoes only its own writes."""


class ApprovalTx(DecidingTx, MandateTx, Protocol):
    """An approver's vote's transaction."""

    def approval(self, approval_id: str) -> ApprovalRecord | None: ...

    def decision(self, decision_id: str) -> DecisionRecord | None: ...

    def add_vote(self, approval_id: str, approver_id: str, vote: Vote, now: int, note: str) -> None:
        """Records a vote; a second vote by the same approver changes nothing."""


# -- per use case -------------------------------------------------------------------------


class SessionStore(Protocol):
    """Planners' sessions and plans."""

    def create_session(
        self,
        session: SessionRecord,
        decimals: Mapping[str, int],
        audit: Mapping[str, Any],
        mandate: MandateRecord | None = None,
        presentation: str | None = None,
    ) -> None:
        """Stores the session and its audit record in one transaction. With ``mandate``
        (then ``session.mandate_id`` is its id), first: MandateRevoked if its holder key
        or the stored mandate is revoked, MandateMismatch if a stored mandate of that id
        has other terms, agent or holder; else the mandate's row if it is new; then
        MandateReplayed if ``presentation`` (a closed agent hop's hash) opened a session
        before. All or nothing."""

    def get_session(self, session_id: str, now: int) -> SessionRecord | None: ...

    def session_tx(self) -> AbstractContextManager[SessionTx]:
        """One transaction for closing a session (see :class:`SessionTx`)."""

    def commit_plan(
        self,
        session_id: str,
        lines: tuple[PlanLine, ...],
        now: int,
        audit: Mapping[str, Any],
    ) -> SessionRecord | None:
        """Stores the plan and moves an exploring session to execute; None if it was not
        exploring (the plan is immutable once committed)."""


class PaymentStore(Protocol):
    """Signing: the deciding transaction, then the signature."""

    def payment_tx(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> AbstractContextManager[PaymentTx]:
        """``wait``: the longest wait for the write lock (None: the store's own bound);
        ``check`` runs once the lock is held and before the commit, and what it raises
        abandons the transaction."""

    def payment_batch(self, wait: float | None = None) -> AbstractContextManager[PaymentBatch]:
        """One transaction for several Sign decisions, committed once (group commit);
        ``wait`` as for :meth:`payment_tx`. Whatever the batch's block raises, or a
        failed commit, undoes every item of it."""


class ApprovalStore(Protocol):
    """Approvers: the held payments and the voting transaction."""

    def approval_tx(self) -> AbstractContextManager[ApprovalTx]: ...

    def pending_approvals(self, now: int) -> list[ApprovalRecord]: ...


class AuditLogStore(Protocol):
    """The audit log and its signed checkpoints."""

    def audit_event(self, event: Mapping[str, Any]) -> int:
        """Appends one audit record in a transaction of its own."""

    def audit_head(self) -> tuple[int, bytes]:
        """(size, root) of the audit tree now."""

    def audit_subtrees(self, nodes: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The stored roots of these complete perfect subtrees, by (level, index)
        (:mod:`paywarden.signer.auditlog.subtrees`); StoreError if one is missing."""

    def audit_record(self, seq: int) -> str: ...

    def decision_audit(self, decision_id: str) -> DecisionAudit | None:
        """A Sign decision's facts for its receipts, by its id (None: unknown)."""

    def latest_audit_time(self) -> int:
        """The time of the record at the log's head (0 while empty): decision time's floor."""

    def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def last_checkpoint(self) -> Checkpoint | None: ...

    def in_checkpoint_turn(self, make: Callable[[], T]) -> T | None:
        """``make()`` while this process holds the checkpoint turn, which one process
        sharing the store holds at a time; None, without running it, while another
        holds it (that one is making the checkpoint)."""


class FreezeStore(Protocol):
    """The kill switch: freezes set by operators and by the breaker."""

    def set_freeze(self, freeze: Freeze, audit: Mapping[str, Any]) -> bool: ...

    def clear_freeze(
        self, scope: FreezeScope, target: str, now: int, audit: Mapping[str, Any]
    ) -> bool:
        """Lifts a freeze; lifting an agent's also restarts its breaker window."""

    def freezes(self) -> list[Freeze]: ...

    def freeze_generation(self) -> int:
        """A number that changes whenever this process sets or lifts a freeze through
        the store (no I/O): in-memory views of the freezes reload when it moves."""


class RevocationStore(Protocol):
    """Revoked client identities, set by operators and never lifted."""

    def revoke(self, revocation: Revocation, audit: Mapping[str, Any]) -> bool:
        """Records a revocation and its audit record in one transaction; False (and
        nothing written) if that identity was revoked already."""

    def revocations(self) -> list[Revocation]:
        """Every revocation, oldest first."""

    def revocations_after(self, position: int) -> tuple[list[Revocation], int]:
        """The revocations committed after ``position`` (0: every one), in commit order,
        and the position to ask from next time: an in-memory view reads only what is new,
        at a cost that does not grow with the revocations it already holds. A backend
        hands out positions in commit order, so that no revocation committed later gets
        a position below one a reader has already seen."""

    def revocation_generation(self) -> int:
        """A number that changes whenever this process revokes through the store (no
        I/O): in-memory views of the revocations reload at once when it moves."""


class PolicyReloadStore(Protocol):
    """Reloads of the policy packs: the set in force, and reloads pending a second operator."""

    def propose_reload(self, reload: PolicyReload, audit: Mapping[str, Any]) -> None:
        """Records a pending reload and its audit record in one transaction."""

    def policy_reload(self, reload_id: str) -> PolicyReload | None: ...

    def pending_reloads(self) -> list[PolicyReload]:
        """The reloads still pending, oldest first."""

    def settle_reload(
        self, reload_id: str, state: ReloadState, at: int, audit: Mapping[str, Any]
    ) -> bool:
        """Moves a pending reload to ``state`` (expired, superseded) with its audit
        record; False (nothing written) if it was no longer pending."""

    def put_policy_in_force(
        self,
        sha256: str,
        packs: Sequence[tuple[str, str]],
        at: int,
        audit: Mapping[str, Any],
        confirm: tuple[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> bool:
        """Records the pack set now in force (hash, files and the context it was built
        with) and its audit record in one transaction; with ``confirm`` (reload id,
        confirming operator) the pending reload becomes applied in it too, and False
        (nothing written) if it was no longer pending."""

    def policy_context_in_force(self) -> dict[str, Any] | None:
        """The context recorded with the set in force (None: none recorded)."""

    def policy_in_force(self) -> tuple[str, list[tuple[str, str]]] | None:
        """The pack set last recorded in force (hash, files), or None."""


class StoreLifecycle(Protocol):
    """Start-up, health and shutdown."""

    def migrate(self) -> int:
        """Brings the schema to the current version; returns it."""

    def check(self) -> None:
        """Raises ``StoreError`` unless the store answers now."""

    def adopt_decimals(self, decimals: Mapping[str, int]) -> list[str]:
        """Assets whose stored amounts were written with other decimals than these."""

    def close(self) -> None: ...


class Store(
    SessionStore,
    PaymentStore,
    ApprovalStore,
    AuditLogStore,
    FreezeStore,
    RevocationStore,
    PolicyReloadStore,
    KeyStore,
    MandateStore,
    StoreLifecycle,
    AgentReadStore,
    PaymentReadStore,
    Protocol,
):
    """Everything a backend implements; a use case asks for the narrow protocol it needs."""

"""What ``Signer.CheckPayment`` reads of one payment: its decision, the key version that
signed it and a freeze that covers it now, in one read transaction of three index probes
(the decision and the key by primary key, the freezes by theirs), whatever the history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from paywarden.signer.store import sqlite_reads as reads
from paywarden.signer.store.connection import Connection
from paywarden.signer.store.records import DecisionRecord, Freeze, KeyVersion
from paywarden.signer.store.sql import Conn
from paywarden.signer.store.sqlite_key_rows import key_version


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """A decision as recorded, the state of its key version and what freezes it, read
    together (``key`` is None only if the store lost the version: an invariant broken)."""

    decision: DecisionRecord
    key: KeyVersion | None
    freeze: Freeze | None


class PaymentReadStore(Protocol):
    """CheckPayment: one payment's standing, read without a write lock."""

    def payment_facts(self, decision_id: str) -> PaymentFacts | None:
        """None if no decision has this id."""


def read_payment_facts(conn: Conn, decision_id: str) -> PaymentFacts | None:
    decision = reads.decision_by_id(conn, decision_id)
    if decision is None:
        return None
    return PaymentFacts(
        decision,
        key_version(conn, decision.key_id),
        reads.frozen(conn, decision.agent_id, decision.session_id, decision.key_id),
    )


class SqlPaymentReads(Connection):
    """:class:`PaymentReadStore` on either backend's connection."""

    def payment_facts(self, decision_id: str) -> PaymentFacts | None:
        result: PaymentFacts | None = self._read_snapshot(read_payment_facts, decision_id)
        return result

"""Appending to the audit log, as a pure function that every store backend persists.

A backend reads the log's state (its size, the Merkle frontier and the time of the
record at its head), calls :func:`grow`, and writes the record, its leaf, the perfect
subtrees the leaf completed (which proofs read, :mod:`.subtrees`) and the new state in
the same transaction as the change the record describes. The rules of the
log live here, once: what a record holds, how it chains to the tree before it, and
that its times never go back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from paywarden.signer.auditlog import merkle
from paywarden.signer.encoding import jcs


@dataclass(frozen=True, slots=True)
class AuditState:
    """The log as an append needs it: O(log n) whatever its length."""

    size: int = 0
    frontier: tuple[tuple[int, bytes], ...] = ()  # merkle.Frontier, left to right
    head_time: int | None = None  # the ``time`` of record ``size``, when it is an integer

    @property
    def root(self) -> bytes:
        return merkle.frontier_root(list(self.frontier))


class Appended(NamedTuple):
    record: str  # the RFC 8785 text of the record, as stored and hashed
    leaf: bytes  # merkle.leaf_hash of that text
    state: AuditState  # the log with the record appended; its size is the record's seq


@dataclass(frozen=True, slots=True)
class Grown:
    """An append with the perfect subtrees it completed, for the store to keep."""

    appended: Appended
    # (level, index, root) of each subtree the new leaf completed, levels 1, 2, ...:
    # about one per append, so that proofs read O(log n) stored nodes (.subtrees).
    nodes: tuple[tuple[int, int, bytes], ...]


def append(state: AuditState, event: Mapping[str, Any]) -> Appended:
    """The record that appends ``event`` to the log at ``state`` (see :func:`grow`)."""
    return grow(state, event).appended


def grow(state: AuditState, event: Mapping[str, Any]) -> Grown:
    """The record that appends ``event`` to the log at ``state``.

    The record is the event plus ``seq`` and ``prev_root`` (the tree head before
    it), serialised with RFC 8785; its leaf hash is computed over those bytes.

    Audit times never go back: its ``time`` is at least the previous record's.
    A refusal, a vote or a freeze reads the clock and then waits for the write
    lock (up to ``store.lock_timeout_seconds``), so a record dated later may be
    appended first; the event happened by the time it is appended, which is
    after both. A decision reads the (high-water) time under the lock, so it is
    not moved.
    """
    at = event.get("time")
    head = state.head_time
    if (
        state.size
        and isinstance(at, int)
        and not isinstance(at, bool)
        and head is not None
        and head > at
    ):
        event = {**event, "time": head}
    seq = state.size + 1
    body = jcs({**event, "seq": seq, "prev_root": state.root.hex()})
    leaf = merkle.leaf_hash(body)
    frontier, completed = merkle.frontier_push(list(state.frontier), leaf)
    new_time = event.get("time")
    head_time = new_time if isinstance(new_time, int) and not isinstance(new_time, bool) else None
    appended = Appended(body.decode("utf-8"), leaf, AuditState(seq, tuple(frontier), head_time))
    # The new leaf is leaf state.size (0-based); the subtree it completes at level l
    # is the one that holds it.
    nodes = tuple((level, state.size >> level, h) for level, h in enumerate(completed, start=1))
    return Grown(appended, nodes)

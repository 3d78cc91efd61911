"""What a backend's connection gives the store built on it (:class:`.sqlite.SqlStore`):
write transactions that exclude every other writer, reads, one-snapshot reads, its
schema's migration and the health probe. :class:`.sqlite_connection.SqliteConnection`
and :class:`.postgres_connection.PostgresConnection` implement it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from paywarden.signer.store.sql import Conn

T = TypeVar("T")


class Connection(ABC):
    """A backend's connection (or pool), and this process's change counters."""

    def __init__(self) -> None:
        # Bumped under the write lock, before the commit, by this process's changes:
        # the in-memory views (freezes, revocations, key versions) reload at once.
        self._freeze_generation = 0
        self._revocation_generation = 0
        self._key_generation = 0

    @abstractmethod
    def _write(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> AbstractContextManager[Conn]:
        """One write transaction that excludes every other writer of the store (in any
        process), waiting at most ``wait`` seconds (the store's lock timeout at most) for
        that. ``check`` runs once the lock is held and again just before the commit:
        whatever it raises abandons the transaction."""

    @abstractmethod
    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(conn, *args)`` outside any write transaction: each statement sees what
        was committed when it ran."""

    @abstractmethod
    def _read_snapshot(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(conn, *args)`` in one read transaction: every statement sees one state."""

    @abstractmethod
    def in_checkpoint_turn(self, make: Callable[[], T]) -> T | None:
        """See :meth:`~.protocols.AuditLogStore.in_checkpoint_turn`."""

    @abstractmethod
    def migrate(self) -> int:
        """Brings the schema to this signer's version (refused if the store is newer)."""

    @abstractmethod
    def check(self) -> None:
        """Can a decision be committed now? StoreError if not."""

    @abstractmethod
    def wait_until(self, not_after: float | None) -> None:
        """Ends every lock wait by ``not_after`` (``time.monotonic``; None lifts it)."""

    @abstractmethod
    def close(self) -> None: ...

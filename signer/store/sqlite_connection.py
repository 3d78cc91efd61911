"""The SQLite store's connection: WAL mode with ``synchronous=FULL``, one connection
per store guarded by a lock in-process and by ``BEGIN IMMEDIATE`` against other
processes, lock waits bounded and ended early while the server stops, and the
health probe. What the store keeps and how is in :mod:`.sqlite`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from paywarden.signer.store import schema
from paywarden.signer.store.connection import Connection
from paywarden.signer.store.records import StoreError

T = TypeVar("T")
# Lock waits are taken in slices this long, so that a server's stop can end them.
_SLICE = 0.05
# The page cache of the store's connection, KiB.
_CACHE_KIB = 65536


class SqliteConnection(Connection):
    """One connection and its transactions; :class:`SqliteStore` builds on it."""

    def __init__(self, path: Path, *, lock_timeout: float = 10.0) -> None:
        super().__init__()
        self.path = path
        self._lock_timeout = lock_timeout
        self._not_after: float | None = None  # no wait ends later (while stopping)
        self._closed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Decisions and purposes are private: owner-only file (the WAL and
            # shared-memory files SQLite makes take the same mode).
            path.touch(mode=0o600, exist_ok=True)
            self._conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=lock_timeout
            )
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"the store at {path} cannot use WAL mode (got {mode})")
            self._conn.execute("PRAGMA synchronous=FULL")
            # The indexes' inner pages of a long history stay in memory (SQLite's default
            # is 2 MiB): a decision reads them on every Sign.
            self._conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        self._lock = threading.Lock()

    def _left(self, ends: float) -> float:
        """Seconds left of a wait that ends at ``ends``, or earlier once the server stops."""
        if self._not_after is not None:
            ends = min(ends, self._not_after)
        return ends - time.monotonic()

    @contextmanager
    def _locked(self, wait: float | None) -> Iterator[float]:
        """Holds the in-process lock; yields when the wait for the locks ends: ``wait``
        seconds from now, never more than the store's lock timeout. The wait is taken in
        slices so that a server that starts stopping meanwhile shortens it."""
        budget = self._lock_timeout if wait is None else min(max(wait, 0.0), self._lock_timeout)
        ends = time.monotonic() + budget
        while not self._lock.acquire(timeout=max(0.0, min(_SLICE, self._left(ends)))):
            if self._left(ends) <= 0:
                raise StoreError(f"store busy: waited {budget:.2f} s for the lock")
        try:
            if self._closed:  # a call that outlived the server's stop
                raise StoreError("the store is closed")
            yield ends
        finally:
            self._lock.release()

    def _begin(self, ends: float) -> None:
        """``BEGIN IMMEDIATE``, retried in slices of SQLite's busy timeout until ``ends``."""
        while True:
            left = self._left(ends)
            try:
                self._conn.execute(
                    f"PRAGMA busy_timeout = {int(max(0.0, min(_SLICE, left)) * 1000)}"
                )
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or self._left(ends) <= 0:
                    raise StoreError(f"store unavailable: {exc}") from None
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from None

    @contextmanager
    def _write(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction, waiting at most ``wait`` seconds for the
        locks. ``check`` runs once the lock is taken and again just before the commit:
        whatever it raises abandons the transaction (a caller whose deadline passed)."""
        with self._locked(wait) as ends:
            self._begin(ends)
            try:
                if check is not None:
                    check()
                yield self._conn
                if check is not None:
                    check()
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from None

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._locked(None):
            try:
                return fn(self._conn, *args)
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from None

    def _read_snapshot(self, fn: Callable[..., Any], *args: Any) -> Any:
        def in_snapshot(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN")  # deferred: one snapshot from its first read on
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")

        return self._read(in_snapshot)

    def in_checkpoint_turn(self, make: Callable[[], T]) -> T | None:
        # One signer process per SQLite file: the turn is always this process's.
        return make()

    def migrate(self) -> int:
        with self._write() as conn:
            return schema.migrate(conn)

    def check(self) -> None:
        """Can a decision be committed now? The probe commits a one-row write on its own
        connection, as a decision would: a full disk, a read-only file or a lock held
        too long fail it. A short timeout, so that it never waits behind the service."""
        try:
            probe = sqlite3.connect(str(self.path), isolation_level=None, timeout=1.0)
            try:
                probe.execute("PRAGMA synchronous=FULL")
                probe.execute("BEGIN IMMEDIATE")
                probe.execute(
                    "INSERT INTO health_probe (id, probes) VALUES (1, 1)"
                    " ON CONFLICT (id) DO UPDATE SET probes = probes + 1"
                )
                probe.execute("COMMIT")
            finally:
                if probe.in_transaction:
                    probe.execute("ROLLBACK")
                probe.close()
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None

    def wait_until(self, not_after: float | None) -> None:
        """Ends every lock wait by ``not_after`` (``time.monotonic``; None lifts it): while
        the server drains, no call outlives the grace period waiting for the store."""
        self._not_after = not_after

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()

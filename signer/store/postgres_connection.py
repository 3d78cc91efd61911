"""The PostgreSQL store's connections: a psycopg 3 pool, every write transaction
serialised across all replicas by one transaction-level advisory lock, and the
health probe. The store built on it is :class:`.postgres.PostgresStore`.

Why one lock: every decision appends to the one audit log (the tree head is one row),
so decisions are serialised whatever else is locked; taking that order first, with
:data:`WRITE_LOCK`, before any row is read, gives each write transaction what
SQLite's ``BEGIN IMMEDIATE`` gives it. Under ``READ COMMITTED`` each statement sees
every transaction committed before it ran, and every writer committed before this
one took the lock: a read-check-write inside the transaction sees the latest state
and nobody changes it before the commit. A transaction waits for one lock only and
takes it before any other, so no two wait for each other: no deadlock. Row locks
taken later are never contended (their holders hold the advisory lock). Reads outside
write transactions run in autocommit; a one-snapshot read runs ``REPEATABLE READ``.

A database that stops answering fails every call at once (StoreError: UNAVAILABLE,
and health NOT_SERVING), not after the pool's timeout: a connection that broke, or the
pool failing to make one when it has none, marks the database unreachable, and no call
waits on the pool until one new connection succeeds. Then the connections pooled
before the outage are checked and the broken ones dropped, so that none fails a call.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar, cast

import psycopg
from paywarden.signer.store import postgres_schema, schema
from paywarden.signer.store.connection import Connection
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sql import Conn, Cursor
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

# The advisory lock every write transaction takes first (any fixed 64-bit key: "pywrdn01").
WRITE_LOCK = 0x707977_72646E3031
# The checkpoint turn: one replica at a time signs and stores a checkpoint ("pywrdn02").
CHECKPOINT_LOCK = 0x707977_72646E3032
# Lock waits are taken in slices this long, so that a server's stop can end them.
_SLICE = 1.0
T = TypeVar("T")
_PLACEHOLDER = re.compile(r"\?")
_INDEX_HINT = re.compile(r"\s+INDEXED BY \w+")


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """The shared SQL (:mod:`.sql`) as psycopg runs it: ``%`` doubled, ``?`` to ``%s``,
    SQLite's index hints dropped (PostgreSQL's planner picks the partial indexes from
    the same conditions)."""
    return _PLACEHOLDER.sub("%s", _INDEX_HINT.sub("", sql.replace("%", "%%")))


class PgConn:
    """A pooled psycopg connection behind :class:`~.sql.Conn`: what a statement raises
    comes out as :class:`StoreError` (the transaction is then failed, as PostgreSQL
    fails it)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        try:
            if not parameters:  # run as written: no placeholders to read, so no % to escape
                return cast(Cursor, self._conn.execute(_INDEX_HINT.sub("", sql)))
            return cast(Cursor, self._conn.execute(translate(sql), parameters))
        except psycopg.Error as exc:
            raise StoreError(f"store unavailable: {_first_line(exc)}") from None

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        try:
            cursor = self._conn.cursor()
            cursor.executemany(translate(sql), parameters)
            return cast(Cursor, cursor)
        except psycopg.Error as exc:
            raise StoreError(f"store unavailable: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    """An error's first line: PostgreSQL's detail lines quote row values."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


class PostgresConnection(Connection):
    """A pool of ``pool_size`` connections to one database (see the module's text)."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        pool_size: int = 8,
        lock_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        self.url = url
        self._lock_timeout = lock_timeout
        self._not_after: float | None = None
        self._closed = False
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(connect_timeout)),
            # No statement outlives the longest lock wait by much: a database that stops
            # answering fails the call instead of holding it. A transaction left idle (a
            # replica hung with the write lock, the HSM call that never returns) is ended
            # by the server, which frees the lock for the other replicas; so is one whose
            # replica's machine vanished (TCP keepalives, both ways).
            "options": (
                f"-c statement_timeout={int(lock_timeout * 1000) + 5000}"
                f" -c idle_in_transaction_session_timeout={int(lock_timeout * 1000) + 20000}"
                " -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5"
                " -c tcp_keepalives_count=3"
            ),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "application_name": "paywarden",
        }
        if password is not None:
            kwargs["password"] = password
        self._kwargs = kwargs
        # Set while the database answers; cleared when a connection breaks or cannot be
        # made. While it is clear, no call waits on the pool: see _probe.
        self._reachable = threading.Event()
        self._reachable.set()
        self._probing = threading.Lock()
        self._pool = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=lock_timeout,
            name="paywarden-store",
            # A connection the pool fails to make is given up after a second attempt
            # (and the pool shrinks); it grows again on demand once _probe found the
            # database back.
            reconnect_timeout=0,
            reconnect_failed=self._connect_failed,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            self._pool.close()
            raise StoreError(
                f"cannot open the store at {redacted(url)}: {_first_line(exc)}"
            ) from None
        self._state_lock = threading.Lock()

    def _left(self, ends: float) -> float:
        if self._not_after is not None:
            ends = min(ends, self._not_after)
        return ends - time.monotonic()

    @contextmanager
    def _connection(self, ends: float) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, waited for in slices until ``ends``; at once a
        StoreError while the database is unreachable (a stopped database must fail each
        call closed within its deadline, not hold it until the pool's timeout)."""
        if self._closed:
            raise StoreError("the store is closed")
        if not self._reachable.is_set():
            self._probe(ends)
        conn = self._pooled(ends)
        try:
            yield conn
        except psycopg.Error as exc:
            raise StoreError(f"store unavailable: {_first_line(exc)}") from None
        finally:
            if conn.broken:  # the server went away under it: so may the others
                self._reachable.clear()
            self._pool.putconn(conn)

    def _connect_failed(self, pool: ConnectionPool[Any]) -> None:
        """The pool could not make a connection. With none left, the database is
        unreachable; with some (the server refused one more: max_connections), the
        calls wait for those."""
        if pool.get_stats().get("pool_size", 0) == 0:
            self._reachable.clear()

    def _pooled(self, ends: float) -> psycopg.Connection[Any]:
        while True:
            left = self._left(ends)
            try:
                return self._pool.getconn(timeout=max(0.001, min(left, _SLICE)))
            except PoolTimeout:
                if not self._reachable.is_set():  # the pool failed to connect meanwhile
                    raise StoreError("store unavailable: the database is unreachable") from None
                if self._left(ends) <= 0:
                    raise StoreError("store unavailable: no database connection") from None
            except psycopg.Error as exc:
                raise StoreError(f"store unavailable: {_first_line(exc)}") from None

    def _probe(self, ends: float) -> None:
        """The database was found unreachable: one caller at a time tries one new
        connection, and the callers that came meanwhile take its answer. Once it
        connects, the pool drops the connections that broke in the outage, so that none
        fails the next call."""
        if not self._probing.acquire(blocking=False):
            if self._probing.acquire(timeout=max(0.0, self._left(ends))):
                self._probing.release()
            if not self._reachable.is_set():
                raise StoreError("store unavailable: the database is unreachable")
            return
        try:
            if self._reachable.is_set():
                return
            timeout = max(1, int(min(self._left(ends), self._kwargs["connect_timeout"])))
            try:
                psycopg.connect(self.url, **{**self._kwargs, "connect_timeout": timeout}).close()
            except psycopg.Error as exc:
                raise StoreError(f"store unavailable: {_first_line(exc)}") from None
            self._pool.check()
            self._reachable.set()
        finally:
            self._probing.release()

    def _begin(self, conn: psycopg.Connection[Any], ends: float) -> None:
        """``BEGIN`` and the write lock, waited for in slices until ``ends``."""
        while True:
            left = self._left(ends)
            if left <= 0:
                raise StoreError("store busy: the write lock was not had in time")
            slice_ms = max(1, int(min(_SLICE, left) * 1000))
            try:  # one round trip: three statements, no parameters (the simple protocol)
                conn.execute(
                    f"BEGIN; SET LOCAL lock_timeout = {slice_ms};"
                    f" SELECT pg_advisory_xact_lock({WRITE_LOCK})"
                )
                return
            except errors.LockNotAvailable:
                conn.execute("ROLLBACK")

    @contextmanager
    def _write(
        self, wait: float | None = None, check: Callable[[], None] | None = None
    ) -> Iterator[Conn]:
        budget = self._lock_timeout if wait is None else min(max(wait, 0.0), self._lock_timeout)
        ends = time.monotonic() + budget
        with self._connection(ends) as conn:
            try:
                self._begin(conn, ends)
            except psycopg.Error as exc:
                raise StoreError(f"store unavailable: {_first_line(exc)}") from None
            try:
                if check is not None:
                    check()
                yield PgConn(conn)
                if check is not None:
                    check()
            except BaseException:
                _rollback(conn)
                raise
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                # A statement failed and its error was caught: PostgreSQL would answer
                # COMMIT with a silent rollback, which must not pass for a commit.
                _rollback(conn)
                raise StoreError("store unavailable: a statement of the transaction failed")
            try:
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                _rollback(conn)
                # Not known whether it committed (the connection may have dropped after
                # the server did): the caller is told it failed and sent nothing, and a
                # retry with the same nonce finds the decision if it did.
                raise StoreError(
                    f"commit failed, outcome unknown (retry with the same nonce):"
                    f" {_first_line(exc)}"
                ) from None

    def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._connection(time.monotonic() + self._lock_timeout) as conn:
            return fn(PgConn(conn), *args)

    def _read_snapshot(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._connection(time.monotonic() + self._lock_timeout) as conn:
            try:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            except psycopg.Error as exc:
                raise StoreError(f"store unavailable: {_first_line(exc)}") from None
            try:
                return fn(PgConn(conn), *args)
            finally:
                _rollback(conn)

    def in_checkpoint_turn(self, make: Callable[[], T]) -> T | None:
        """The turn is :data:`CHECKPOINT_LOCK`, tried (never waited for) in a transaction
        of its own, held while ``make`` reads the head, has it signed and stores it."""
        with self._connection(time.monotonic() + self._lock_timeout) as conn:
            try:
                conn.execute("BEGIN")
                row = conn.execute(
                    "SELECT pg_try_advisory_xact_lock(%s)", (CHECKPOINT_LOCK,)
                ).fetchone()
            except psycopg.Error as exc:
                _rollback(conn)
                raise StoreError(f"store unavailable: {_first_line(exc)}") from None
            try:
                return make() if row is not None and row[0] else None
            finally:
                _rollback(conn)

    def migrate(self) -> int:
        with self._write() as conn:
            return migrate(conn)

    def check(self) -> None:
        """Commits a one-row write under the write lock, as a decision would, waiting at
        most a second for a connection and for the lock."""
        with self._write(wait=1.0) as conn:
            conn.execute(
                "INSERT INTO health_probe (id, probes) VALUES (1, 1)"
                " ON CONFLICT (id) DO UPDATE SET probes = health_probe.probes + 1"
            )

    def wait_until(self, not_after: float | None) -> None:
        self._not_after = not_after

    def close(self) -> None:
        with self._state_lock:
            self._closed = True
        self._pool.close()


def _rollback(conn: psycopg.Connection[Any]) -> None:
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
    except psycopg.Error:
        pass  # a broken connection: the pool discards it


def redacted(url: str) -> str:
    """The URL without any password it carries (for errors and logs)."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def schema_version(conn: Conn) -> int:
    """The version a database is at: 0 when it has no Paywarden schema yet."""
    (exists,) = conn.execute("SELECT to_regclass('paywarden_schema') IS NOT NULL").fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT version FROM paywarden_schema WHERE id = 1").fetchone()
    return int(row[0]) if row is not None else 0


def migrate(conn: Conn) -> int:
    """Applies the missing versions in the caller's transaction; returns the version.
    A database that has tables but no Paywarden schema is refused, not taken over."""
    version = schema_version(conn)
    if version > schema.SCHEMA_VERSION:
        raise StoreError(
            f"the store's schema version {version} is newer than this signer's"
            f" ({schema.SCHEMA_VERSION})"
        )
    if version == 0:
        (tables,) = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone()
        if tables:
            raise StoreError(
                "the database has tables but no Paywarden schema: give the store an empty database"
            )
        version = postgres_schema.BASELINE - 1
    for target in range(version + 1, schema.SCHEMA_VERSION + 1):
        conn.execute(postgres_schema.MIGRATIONS[target])
        conn.execute(
            "INSERT INTO paywarden_schema (id, version) VALUES (1, ?)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            (target,),
        )
    return schema.SCHEMA_VERSION

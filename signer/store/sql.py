"""The connection the store's SQL runs on, whichever the backend.

The queries and writes in ``sqlite_reads``, ``sqlite_tx``, ``sqlite_facts``,
``sqlite_agent``, ``sqlite_key_rows``, ``sqlite_keys`` and ``sqlite_reloads`` are
written once, in the SQL that SQLite (3.35 or newer) and PostgreSQL (13 or newer)
both run: ``?`` placeholders, ``INSERT … ON CONFLICT``, no scalar ``min``/``max``.
They take a :class:`Conn`: a :class:`sqlite3.Connection` as it is, or the PostgreSQL
connection of :mod:`.postgres_connection`, which turns ``?`` into psycopg's
placeholders and drops SQLite's index hints (``INDEXED BY``) that PostgreSQL has no
use for. Each backend raises :class:`~.records.StoreError` (or ``sqlite3.Error``,
which the SQLite store turns into one) for a failed statement.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Cursor(Protocol):
    """What the store reads of a statement's result."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection inside a transaction the store holds (or in autocommit, for reads)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...

"""The read-only readers offline tools use (``paywarden audit``, ``store-info``,
``store-export``, ``policy lint``), on a PostgreSQL store: what
:mod:`.sqlite_reads` reads from a SQLite file, read here in one ``REPEATABLE READ
READ ONLY`` transaction (one snapshot, nothing written, no migration). Audit rows
come in ``seq`` order (the order they were appended in); large results stream
through a server-side cursor. :mod:`.offline_reads` picks this module or SQLite's
by the configuration.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from paywarden.signer.store.postgres_connection import redacted
from paywarden.signer.store.records import Checkpoint, StoreError
from paywarden.signer.store.sqlite_reads import AuditSnapshot

# Rows fetched from a server-side cursor at a time: a long log never sits in memory.
BATCH = 2000
_cursors = itertools.count(1)


def connect(
    url: str, password: str | None, *, connect_timeout: float, setting: str = "store.url"
) -> psycopg.Connection[Any]:
    """One connection (autocommit: the caller begins its transaction); StoreError
    naming ``setting`` if it cannot be had. Neither the password nor the URL's
    credentials appear in an error."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(1, int(connect_timeout)),
        "application_name": "paywarden-offline",
    }
    if password is not None:
        kwargs["password"] = password
    try:
        return psycopg.connect(url, **kwargs)
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot open the store at {setting} {redacted(url)}: {scrubbed(exc, password)}"
        ) from None


def scrubbed(exc: BaseException, password: str | None) -> str:
    """An error's first line, the password (should the server ever echo it) masked."""
    line = (str(exc).splitlines() or [type(exc).__name__])[0]
    return line.replace(password, "***") if password else line


@contextmanager
def snapshot(
    url: str, password: str | None, *, connect_timeout: float
) -> Iterator[psycopg.Connection[Any]]:
    """A connection inside one ``REPEATABLE READ READ ONLY`` transaction, ended (rolled
    back: it wrote nothing) when the block ends."""
    conn = connect(url, password, connect_timeout=connect_timeout)
    try:
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn
        except psycopg.Error as exc:
            problem = scrubbed(exc, password)
            raise StoreError(f"cannot read the store at store.url: {problem}") from None
        finally:
            rollback(conn)
    finally:
        conn.close()


def rollback(conn: psycopg.Connection[Any]) -> None:
    """Rolls back what the connection has open (it wrote nothing); a broken one is
    closed by the caller anyway."""
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
    except psycopg.Error:
        pass


def stream(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> Iterator[Any]:
    """A query's rows through a server-side cursor of the caller's transaction, in
    batches of :data:`BATCH`."""
    with conn.cursor(name=f"paywarden_read_{next(_cursors)}") as cursor:
        cursor.itersize = BATCH
        cursor.execute(sql, params)
        yield from cursor


def checkpoints(conn: psycopg.Connection[Any]) -> list[Checkpoint]:
    return [
        Checkpoint(int(size), root, int(at), key_id, body, signature)
        for size, root, at, key_id, body, signature in conn.execute(
            "SELECT size, root, at, key_id, body, signature FROM audit_checkpoints ORDER BY size"
        )
    ]


def audit_rows(conn: psycopg.Connection[Any]) -> Iterator[tuple[int, bytes, bytes | None]]:
    """The audit log's rows (seq, body as its UTF-8 bytes, stored leaf), in seq order."""
    for seq, body, leaf in stream(
        conn, "SELECT seq, convert_to(body, 'UTF8'), leaf FROM audit_log ORDER BY seq"
    ):
        yield int(seq), bytes(body), bytes(leaf) if leaf is not None else None


def read_audit_log(
    url: str, password: str | None, *, connect_timeout: float
) -> tuple[list[tuple[int, str, bytes | None]], list[Checkpoint]]:
    """:func:`.sqlite_reads.read_audit_log` on PostgreSQL: the raw rows and the
    checkpoints, in one snapshot."""
    with snapshot(url, password, connect_timeout=connect_timeout) as conn:
        cps = checkpoints(conn)
        records = [(seq, body.decode("utf-8"), leaf) for seq, body, leaf in audit_rows(conn)]
    return records, cps


@contextmanager
def audit_log_snapshot(
    url: str, password: str | None, *, connect_timeout: float
) -> Iterator[AuditSnapshot]:
    """:func:`.sqlite_reads.audit_log_snapshot` on PostgreSQL: the checkpoints, and the
    records streamed afresh by each call, all in the same snapshot."""
    with snapshot(url, password, connect_timeout=connect_timeout) as conn:
        yield AuditSnapshot(checkpoints(conn), lambda: audit_rows(conn))


def _table_names(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        str(name)
        for (name,) in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            " ORDER BY table_name"
        )
    ]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _version(conn: psycopg.Connection[Any], names: list[str]) -> int:
    if "paywarden_schema" not in names:
        return 0
    row = conn.execute("SELECT version FROM paywarden_schema WHERE id = 1").fetchone()
    return int(row[0]) if row is not None else 0


def table_names(url: str, password: str | None, *, connect_timeout: float) -> list[str]:
    """The store's tables, by name."""
    with snapshot(url, password, connect_timeout=connect_timeout) as conn:
        return _table_names(conn)


def table_counts(
    url: str, password: str | None, *, connect_timeout: float
) -> tuple[int, list[tuple[str, int]]]:
    """The store's schema version and each table's row count, in one snapshot."""
    with snapshot(url, password, connect_timeout=connect_timeout) as conn:
        names = _table_names(conn)
        counts = []
        for name in names:
            (count,) = conn.execute(f"SELECT count(*) FROM {_quoted(name)}").fetchone()  # type: ignore[misc]  # noqa: S608 - a listed table
            counts.append((name, int(count)))
        return _version(conn, names), counts


def table_rows(
    url: str, password: str | None, table: str, *, connect_timeout: float
) -> Iterator[dict[str, Any]]:
    """Every row of one table as a dict of column to value; ValueError if no such table."""
    with snapshot(url, password, connect_timeout=connect_timeout) as conn:
        if table not in _table_names(conn):
            raise ValueError(f"no table {table!r}")
        with conn.cursor(name=f"paywarden_read_{next(_cursors)}") as cursor:
            cursor.itersize = BATCH
            cursor.execute(f"SELECT * FROM {_quoted(table)}")  # noqa: S608 - a listed table
            columns = [c.name for c in cursor.description or ()]
            for row in cursor:
                yield {
                    k: bytes(v) if isinstance(v, memoryview) else v
                    for k, v in zip(columns, row, strict=True)
                }


def signed_payments(
    url: str,
    password: str | None,
    agent_ids: Iterable[str],
    since: int,
    *,
    connect_timeout: float,
) -> list[tuple[str, str, str, str, int, int]]:
    """:func:`.sqlite_reads.signed_payments` on PostgreSQL, in one snapshot."""
    out: list[tuple[str, str, str, str, int, int]] = []
    with snapshot(url, password, connect_timeout=connect_timeout) as conn:
        for agent_id in sorted(set(agent_ids)):
            for asset, key_id, payee, amount, at in conn.execute(
                "SELECT r.asset, d.key_id, r.payee_key, r.amount_minor, r.created_at"
                " FROM reservations r JOIN decisions d ON d.id = r.decision_id"
                " WHERE r.agent_id = %s AND r.created_at >= %s AND r.signed = 1",
                (agent_id, since),
            ):
                out.append((agent_id, asset, key_id, payee, int(amount), int(at)))
    return out

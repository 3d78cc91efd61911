"""``paywarden store migrate``: a SQLite store copied into an empty PostgreSQL
database, checked, and committed only if the copy holds what the file held.

One SQLite transaction (``BEGIN IMMEDIATE``: no signer commits while it is read) and
one PostgreSQL transaction that holds the store's write lock
(:data:`.postgres_connection.WRITE_LOCK`, so no replica writes meanwhile): the
PostgreSQL schema is made by its own migration (:mod:`.postgres_schema`), every
table's rows are copied (``COPY … FROM STDIN``, :data:`BATCH` rows read from the file
at a time: a large store is never held in memory), and before the commit the copy is
checked: each table's row count against the file's, and the copied audit log by the
verification ``paywarden audit verify`` runs (every record's leaf, every checkpoint's
signature and root, and the tree head equal to the one the file's store recorded).
Anything wrong rolls the whole copy back. ``revocations`` keeps SQLite's ``rowid``
order in its identity column (``COPY`` writes given values, as ``INSERT … OVERRIDING
SYSTEM VALUE`` does), whose sequence then moves past the largest.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import psycopg
from cryptography.hazmat.primitives.asymmetric import ec
from paywarden.signer.auditlog import vouched
from paywarden.signer.auditlog.verification import TrustedHead
from paywarden.signer.store import postgres_connection, postgres_reads, schema, sqlite_reads
from paywarden.signer.store.records import StoreError
from psycopg import sql

# Rows read from the SQLite file and handed to COPY at a time.
BATCH = 5000
# The identity column PostgreSQL gives the revocations' SQLite rowid.
_ROWID = "rowid"


class MigrationRefused(StoreError):
    """The copy was not made (nothing was committed), and why."""


@dataclass(frozen=True, slots=True)
class Migrated:
    """What was copied: rows per table, and the audit log's size and root."""

    tables: list[tuple[str, int]]
    audit_size: int
    audit_root: bytes

    @property
    def rows(self) -> int:
        return sum(n for _, n in self.tables)


def migrate(
    source: Path,
    url: str,
    password: str | None,
    public_keys: Sequence[ec.EllipticCurvePublicKey],
    *,
    connect_timeout: float = 5.0,
    batch: int = BATCH,
) -> Migrated:
    """Copies the SQLite store at ``source`` into the empty database at ``url``;
    :class:`MigrationRefused` (nothing committed) if it cannot, or if the copy does
    not verify."""
    with _source(source) as src:
        dst = postgres_reads.connect(url, password, connect_timeout=connect_timeout, setting="--to")
        try:
            try:
                return _copy(src, dst, public_keys, batch)
            except psycopg.Error as exc:
                raise MigrationRefused(
                    f"the copy failed: {postgres_reads.scrubbed(exc, password)}"
                ) from None
            finally:
                postgres_reads.rollback(dst)  # after a COMMIT: nothing left to roll back
        finally:
            dst.close()


@contextmanager
def _source(path: Path) -> Iterator[sqlite3.Connection]:
    """The file in one ``BEGIN IMMEDIATE`` transaction, at this code's schema version."""
    if not path.is_file():
        raise MigrationRefused(f"no SQLite store at {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=1.0)
    except sqlite3.Error as exc:
        raise MigrationRefused(f"cannot open the SQLite store at {path}: {exc}") from None
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise MigrationRefused(
                f"cannot lock the SQLite store at {path} ({exc}): stop the signer first"
            ) from None
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version != schema.SCHEMA_VERSION:
            raise MigrationRefused(_version_advice(path, version))
        yield conn
    except sqlite3.Error as exc:
        raise MigrationRefused(f"cannot read the SQLite store at {path}: {exc}") from None
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def _version_advice(path: Path, version: int) -> str:
    here = schema.SCHEMA_VERSION
    if version > here:
        return (
            f"the SQLite store at {path} is at schema version {version}, newer than this"
            f" paywarden's ({here}): migrate it with the paywarden that wrote it"
        )
    return (
        f"the SQLite store at {path} is at schema version {version}, not this paywarden's"
        f" ({here}): start the signer once on it (it migrates the store as it starts, or"
        " SqliteStore(path).migrate()), stop it, then migrate it to PostgreSQL"
    )


def _copy(
    src: sqlite3.Connection,
    dst: psycopg.Connection[Any],
    keys: Sequence[ec.EllipticCurvePublicKey],
    batch: int,
) -> Migrated:
    (encoding,) = dst.execute("SHOW server_encoding").fetchone() or ("?",)
    if str(encoding).upper() not in ("UTF8", "UTF-8"):
        raise MigrationRefused(f"the database's encoding is {encoding}: create it with UTF8")
    dst.execute("BEGIN")
    (locked,) = dst.execute(
        "SELECT pg_try_advisory_xact_lock(%s)", (postgres_connection.WRITE_LOCK,)
    ).fetchone() or (False,)
    if not locked:
        raise MigrationRefused("a signer holds the database's write lock: it is not unused")
    (tables,) = dst.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchone() or (1,)
    if tables:
        raise MigrationRefused(
            f"the database is not empty ({tables} tables): migrate into a new, empty database"
        )
    postgres_connection.migrate(postgres_connection.PgConn(dst))
    names = _plan(src, dst)
    copied = []
    for name in names:
        columns, rowid = _columns(src, dst, name)
        _copy_table(src, dst, name, columns, rowid, batch)
        copied.append((name, _counted(src, dst, name)))
    _restart_identities(dst)
    size, root = _verify_audit(src, dst, keys)
    dst.execute("COMMIT")
    return Migrated(copied, size, root)


def _pg_tables(dst: psycopg.Connection[Any]) -> set[str]:
    return {
        str(n)
        for (n,) in dst.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_name != 'paywarden_schema'"
        )
    }


def _plan(src: sqlite3.Connection, dst: psycopg.Connection[Any]) -> list[str]:
    """The tables in an order that copies every referenced row before its references
    (PostgreSQL checks a foreign key on each row); refused if the two schemas do not
    hold the same tables."""
    mine = {
        str(n)
        for (n,) in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    theirs = _pg_tables(dst)
    if mine != theirs:
        raise MigrationRefused(
            f"the schemas differ: only in SQLite {sorted(mine - theirs)},"
            f" only in PostgreSQL {sorted(theirs - mine)}"
        )
    graph: dict[str, set[str]] = {name: set() for name in sorted(mine)}
    for child, parent in dst.execute(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
        " WHERE c.contype = 'f' AND c.connamespace = current_schema()::regnamespace"
    ):
        if child != parent:
            graph[str(child)].add(str(parent))
    try:
        return list(TopologicalSorter(graph).static_order())
    except CycleError:
        raise MigrationRefused("the foreign keys form a cycle") from None


def _columns(
    src: sqlite3.Connection, dst: psycopg.Connection[Any], table: str
) -> tuple[list[str], bool]:
    """The columns to copy (PostgreSQL's), and whether SQLite's rowid is one of them."""
    mine = [str(r[1]) for r in src.execute(f"PRAGMA table_info({_q(table)})")]
    theirs = [
        str(n)
        for (n,) in dst.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        )
    ]
    rowid = _ROWID in theirs and _ROWID not in mine
    if set(mine) | ({_ROWID} if rowid else set()) != set(theirs):
        raise MigrationRefused(f"the schemas differ: table {table} has columns {mine} in SQLite")
    return theirs, rowid


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _copy_table(
    src: sqlite3.Connection,
    dst: psycopg.Connection[Any],
    table: str,
    columns: list[str],
    rowid: bool,
    batch: int,
) -> None:
    # Rows the PostgreSQL migration seeds (the empty tree head) give way to the file's.
    dst.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
    select = f"SELECT {', '.join(_q(c) for c in columns)} FROM {_q(table)}"  # noqa: S608 - names from both catalogues
    if rowid:
        select += f" ORDER BY {_ROWID}"
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    rows = src.execute(select)
    with dst.cursor() as cursor, cursor.copy(copy) as out:
        while chunk := rows.fetchmany(batch):
            for row in chunk:
                out.write_row(row)


def _counted(src: sqlite3.Connection, dst: psycopg.Connection[Any], table: str) -> int:
    (mine,) = src.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()  # noqa: S608 - a listed table
    (theirs,) = dst.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    ).fetchone() or (-1,)
    if int(mine) != int(theirs):
        raise MigrationRefused(f"table {table}: {mine} rows in SQLite, {theirs} copied")
    return int(mine)


def _restart_identities(dst: psycopg.Connection[Any]) -> None:
    """Each identity column's sequence moved past the largest copied value."""
    for table, column in dst.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall():
        dst.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence(%s, %s), max({})) FROM {} HAVING count(*) > 0"
            ).format(sql.Identifier(column), sql.Identifier(table)),
            (table, column),
        )


def _verify_audit(
    src: sqlite3.Connection,
    dst: psycopg.Connection[Any],
    keys: Sequence[ec.EllipticCurvePublicKey],
) -> tuple[int, bytes]:
    """The copied log, checked as ``paywarden audit verify`` checks a store, against
    the tree head the SQLite store recorded; its size and root."""
    head = sqlite_reads.audit_state(src)
    root = head.root
    trusted = [TrustedHead(head.size, root.hex(), "the SQLite store's tree head")]
    report = vouched.verify(
        lambda: postgres_reads.audit_rows(dst),
        postgres_reads.checkpoints(dst),
        list(keys),
        trusted=trusted if head.size else [],
    )
    if report.ok and report.records != head.size:
        report.bad(None, f"{report.records} records copied, the SQLite store's head is {head.size}")
    if not report.ok:
        problems = "; ".join(report.problems[:5])
        raise MigrationRefused(f"the copied audit log does not verify: {problems}")
    return head.size, root

"""The read-only readers offline tools use, whichever the backend: each takes the
:class:`~paywarden.signer.config.StoreConfig` (the configured store, or the SQLite
file of a ``--db PATH``) and reads the SQLite file (:mod:`.sqlite_reads`) or the
PostgreSQL database (:mod:`.postgres_reads`, its password from
``store.password_file`` or ``store.password_env``). Nothing is written or
migrated. An error is a :class:`~.records.StoreError` that names the setting and
never the password.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from paywarden.signer.config import StoreConfig
from paywarden.signer.store import postgres_reads, report_reads, sqlite_reads
from paywarden.signer.store.opening import password
from paywarden.signer.store.postgres_connection import translate
from paywarden.signer.store.records import Checkpoint, StoreError
from paywarden.signer.store.sqlite_reads import AuditSnapshot

__all__ = [
    "AuditSnapshot",
    "audit_log_snapshot",
    "read_audit_log",
    "report_facts",
    "signed_payments",
    "sqlite_file",
    "table_counts",
    "table_names",
    "table_rows",
]


def sqlite_file(path: Path) -> StoreConfig:
    """The store of a ``--db PATH`` option: always a SQLite file."""
    return StoreConfig(path=path)


def _path(config: StoreConfig) -> Path:
    """The SQLite file, which must exist (a reader never makes one)."""
    if not config.path.exists():
        raise StoreError(f"no store at {config.path}")
    return config.path


def _pg(config: StoreConfig, environ: Mapping[str, str] | None) -> tuple[str, str | None]:
    assert config.url is not None
    return config.url, password(config, environ)


def read_audit_log(
    config: StoreConfig, environ: Mapping[str, str] | None = None
) -> tuple[list[tuple[int, str, bytes | None]], list[Checkpoint]]:
    """The audit log's raw rows (seq, body, leaf) and its checkpoints, in one read."""
    if config.url is None:
        return sqlite_reads.read_audit_log(_path(config))
    url, secret = _pg(config, environ)
    return postgres_reads.read_audit_log(
        url, secret, connect_timeout=config.connect_timeout_seconds
    )


@contextmanager
def audit_log_snapshot(
    config: StoreConfig, environ: Mapping[str, str] | None = None
) -> Iterator[AuditSnapshot]:
    """The checkpoints and the records as they stream, in one read transaction."""
    if config.url is None:
        with sqlite_reads.audit_log_snapshot(_path(config)) as snap:
            yield snap
        return
    url, secret = _pg(config, environ)
    with postgres_reads.audit_log_snapshot(
        url, secret, connect_timeout=config.connect_timeout_seconds
    ) as snap:
        yield snap


def table_names(config: StoreConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    if config.url is None:
        return sqlite_reads.table_names(_path(config))
    url, secret = _pg(config, environ)
    return postgres_reads.table_names(url, secret, connect_timeout=config.connect_timeout_seconds)


def table_counts(
    config: StoreConfig, environ: Mapping[str, str] | None = None
) -> tuple[int, list[tuple[str, int]]]:
    """The schema version and each table's row count, in one read transaction."""
    if config.url is None:
        return sqlite_reads.table_counts(_path(config))
    url, secret = _pg(config, environ)
    return postgres_reads.table_counts(url, secret, connect_timeout=config.connect_timeout_seconds)


def table_rows(
    config: StoreConfig, table: str, environ: Mapping[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Every row of one table as a dict of column to value; ValueError if no such table."""
    if config.url is None:
        return sqlite_reads.table_rows(_path(config), table)
    url, secret = _pg(config, environ)
    return postgres_reads.table_rows(
        url, secret, table, connect_timeout=config.connect_timeout_seconds
    )


def signed_payments(
    config: StoreConfig,
    agent_ids: Iterable[str],
    since: int,
    environ: Mapping[str, str] | None = None,
) -> list[tuple[str, str, str, str, int, int]]:
    """The signed payments of these agents since ``since`` (see
    :func:`.sqlite_reads.signed_payments`)."""
    if config.url is None:
        return sqlite_reads.signed_payments(_path(config), agent_ids, since)
    url, secret = _pg(config, environ)
    return postgres_reads.signed_payments(
        url, secret, agent_ids, since, connect_timeout=config.connect_timeout_seconds
    )


def report_facts(
    config: StoreConfig,
    now: int,
    bucket_seconds: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> report_reads.ReportFacts:
    """The operator report's figures (:mod:`.report_reads`) as at ``now``, read in one
    read-only snapshot; ``bucket_seconds``: the spend chart's buckets (None: chosen by
    the span)."""
    if config.url is None:
        path = _path(config)
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            try:
                conn.execute("BEGIN")

                def rows(sql: str, params: Sequence[Any]) -> Iterator[Any]:
                    return iter(conn.execute(sql, params))

                return _report(rows, now, bucket_seconds)
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the store at store.path {path}: {exc}") from None
    url, secret = _pg(config, environ)
    with postgres_reads.snapshot(url, secret, connect_timeout=config.connect_timeout_seconds) as pg:

        def streamed(sql: str, params: Sequence[Any]) -> Iterator[Any]:
            return postgres_reads.stream(pg, translate(sql), tuple(params))

        return _report(streamed, now, bucket_seconds)


def _report(rows: report_reads.Rows, now: int, bucket: int | None) -> report_reads.ReportFacts:
    """:func:`.report_reads.read`, a value it cannot take (an edited row: an amount
    that is no number) a :class:`StoreError`."""
    try:
        return report_reads.read(rows, now, bucket)
    except (ValueError, TypeError, OverflowError) as exc:
        raise StoreError(f"the store holds a value the report cannot read: {exc}") from None

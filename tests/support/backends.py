"""The store backends a test runs against: SQLite (the default) and PostgreSQL.

A module opts in with ``pytestmark = pytest.mark.both_backends`` (tests/conftest.py):
each of its tests that builds a store (through the ``stores`` or ``config_path``
fixtures, or ``make_stack``/``stack``) then runs once per backend, with the ids
``[sqlite]`` and ``[postgresql]``; a test marked ``sqlite_only`` runs on SQLite alone.
Every other test runs on SQLite as it always did, and no PostgreSQL cluster starts.

A test names a store by a path, as the SQLite store always was named: on PostgreSQL
each path is a fresh database of its own, made on first use. So
``write_config(d, ..., stores=stores)`` and ``stores.open(d / "state.db")`` are the
same store on either backend. The databases are not dropped one by one (a DROP
DATABASE waits for a checkpoint: up to seconds each); they go with the run's cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from paywarden.signer.config import StoreConfig
from paywarden.signer.store.opening import open_store
from paywarden.signer.store.sqlite import SqlStore

from tests.support.postgres import PgCluster

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
BACKENDS = (SQLITE, POSTGRESQL)


class Stores:
    """The stores of one test (or one module's stack) on one backend: ``config`` and
    ``toml`` say where the store named by a path is, ``open`` opens it."""

    def __init__(self, backend: str, cluster: PgCluster | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown store backend {backend!r}")
        if (backend == POSTGRESQL) != (cluster is not None):
            raise ValueError("a PostgreSQL cluster is needed for postgresql, and only for it")
        self.backend = backend
        self._cluster = cluster
        self._urls: dict[Path, str] = {}
        self._opened: list[SqlStore] = []

    @property
    def postgres(self) -> bool:
        return self._cluster is not None

    def url(self, path: Path) -> str:
        """The PostgreSQL database that stands for ``path`` (made on first use)."""
        if self._cluster is None:
            raise ValueError("a SQLite store has no database URL")
        if path not in self._urls:
            self._urls[path] = self._cluster.create_database()
        return self._urls[path]

    @property
    def password(self) -> str | None:
        """The database's password (None on SQLite): a test asserts it is never shown."""
        if self._cluster is None:
            return None
        return self._cluster.password_file.read_text(encoding="utf-8").strip()

    def config(self, path: Path) -> StoreConfig:
        """The ``[store]`` settings of the store named by ``path``."""
        if self._cluster is None:
            return StoreConfig(path=path)
        return StoreConfig(url=self.url(path), password_file=self._cluster.password_file)

    def toml(self, path: Path) -> str:
        """The body of a config's ``[store]`` table for the store named by ``path``."""
        if self._cluster is None:
            return f'path = "{path}"'
        return f'url = "{self.url(path)}"\npassword_file = "{self._cluster.password_file}"'

    def open(self, path: Path) -> SqlStore:
        """The store named by ``path``, connected and not migrated; it is closed (if the
        test did not close it) when the test ends."""
        store = open_store(self.config(path))
        self._opened.append(store)
        return store

    def audit_log(self, path: Path) -> list[dict[str, Any]]:
        """Every audit record of the store named by ``path``, in order, read through a
        store of its own; fails the test unless they are numbered 1..n."""
        store = self.open(path)
        try:
            size, _root = store.audit_head()
            records = [json.loads(store.audit_record(seq)) for seq in range(1, size + 1)]
        finally:
            store.close()
        assert [r["seq"] for r in records] == list(range(1, size + 1))
        return records

    def close(self) -> None:
        """Closes what ``open`` opened (its databases stay until the cluster goes)."""
        for store in self._opened:
            store.close()
        self._opened.clear()


@contextmanager
def stores_on(backend: str, cluster: PgCluster | None) -> Iterator[Stores]:
    """A :class:`Stores` on ``backend``, closed at the end."""
    stores = Stores(backend, cluster)
    try:
        yield stores
    finally:
        stores.close()

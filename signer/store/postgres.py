"""PostgreSQL implementation of :class:`~paywarden.signer.store.protocols.Store`, for
several signer replicas sharing one database: :class:`~.sqlite.SqlStore`'s SQL on the
connections of :mod:`.postgres_connection` (which say what serialises what)."""

from __future__ import annotations

from paywarden.signer.store.postgres_connection import PostgresConnection
from paywarden.signer.store.sqlite import SqlStore


class PostgresStore(SqlStore, PostgresConnection):
    """:class:`SqlStore` on one PostgreSQL database, shared by every replica."""

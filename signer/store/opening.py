"""Opens the store the configuration names: the SQLite file at ``store.path`` (the
default) or the PostgreSQL database at ``store.url``, whose password comes from
``store.password_file`` or the variable ``store.password_env`` names, never from the
URL, the command line or a log."""

from __future__ import annotations

import os
from collections.abc import Mapping

from paywarden.signer.config import StoreConfig
from paywarden.signer.store.postgres import PostgresStore
from paywarden.signer.store.postgres_connection import redacted
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.sqlite import SqliteStore, SqlStore


def setting(config: StoreConfig) -> str:
    """The setting that names the store, for errors: ``store.url`` or ``store.path``."""
    return "store.url" if config.url is not None else "store.path"


def location(config: StoreConfig) -> str:
    """Where the store is, fit for a log line (no password)."""
    return redacted(config.url) if config.url is not None else str(config.path)


def password(config: StoreConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The database password (None: none configured, e.g. peer or certificate login)."""
    if config.password_file is not None:
        try:
            text = config.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise StoreError(
                f"cannot read store.password_file {config.password_file}: {exc.strerror}"
            ) from None
        secret = text.rstrip("\r\n")
        if not secret:
            raise StoreError(f"store.password_file {config.password_file} is empty")
        return secret
    if config.password_env is not None:
        secret = (os.environ if environ is None else environ).get(config.password_env, "")
        if not secret:
            raise StoreError(f"store.password_env: ${config.password_env} is not set")
        return secret
    return None


def open_store(config: StoreConfig, environ: Mapping[str, str] | None = None) -> SqlStore:
    """The configured store, connected (not yet migrated); StoreError if it cannot be."""
    if config.url is None:
        return SqliteStore(config.path, lock_timeout=config.lock_timeout_seconds)
    return PostgresStore(
        config.url,
        password=password(config, environ),
        pool_size=config.pool_size,
        lock_timeout=config.lock_timeout_seconds,
        connect_timeout=config.connect_timeout_seconds,
    )

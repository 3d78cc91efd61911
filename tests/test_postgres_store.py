"""The PostgreSQL store's own parts, on a real throwaway cluster: its schema against
SQLite's, its migrations and their refusals, the rules its triggers keep, the
checkpoint turn, its configuration and the password's secrecy.

What both backends must do alike (decisions, spend, nonces) is tested on both by the
modules parametrised over the backend (``store_backend``)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
from paywarden.signer.config import StoreConfig
from paywarden.signer.store import postgres_schema
from paywarden.signer.store.opening import location, open_store, password
from paywarden.signer.store.postgres import PostgresStore
from paywarden.signer.store.postgres_connection import redacted, translate
from paywarden.signer.store.records import StoreError
from paywarden.signer.store.schema import MIGRATIONS, SCHEMA_VERSION
from paywarden.signer.store.sqlite import SqliteStore
from pydantic import ValidationError

from tests.support.postgres import PgCluster

EVENT = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}


def _pg_store(cluster: PgCluster, url: str) -> PostgresStore:
    return PostgresStore(url, password=cluster.password_file.read_text().strip(), pool_size=2)


def _admin(cluster: PgCluster, url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, password=cluster.password_file.read_text().strip(), autocommit=True)


def _sqlite_columns(path: Path) -> dict[str, set[str]]:
    with sqlite3.connect(path) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: {c[1] for c in conn.execute(f"PRAGMA table_info({t})")} for t in tables}


def test_the_schema_is_sqlite_s_table_for_table_and_column_for_column(
    pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    sqlite_store = SqliteStore(tmp_path / "s.db")
    sqlite_store.migrate()
    sqlite_store.close()
    store = _pg_store(pg_cluster, pg_url)
    assert store.migrate() == SCHEMA_VERSION
    store.close()
    with _admin(pg_cluster, pg_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema()"
        ).fetchall()
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            )
        }
    pg: dict[str, set[str]] = {}
    for table, column in rows:
        pg.setdefault(str(table), set()).add(str(column))
    # PostgreSQL keeps its version in a table (SQLite: PRAGMA user_version) and names the
    # revocations' commit-ordered position (SQLite: the implicit rowid).
    assert pg.pop("paywarden_schema") == {"id", "version"}
    pg["revocations"].discard("rowid")
    assert pg == _sqlite_columns(tmp_path / "s.db")
    with sqlite3.connect(tmp_path / "s.db") as conn:
        sqlite_indexes = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    assert sqlite_indexes <= indexes  # the partial indexes the Sign path reads among them


def test_every_version_after_the_baseline_has_a_postgresql_migration() -> None:
    assert set(postgres_schema.MIGRATIONS) == set(
        range(postgres_schema.BASELINE, SCHEMA_VERSION + 1)
    )
    assert set(MIGRATIONS) == set(range(1, SCHEMA_VERSION + 1))


def test_migration_is_idempotent_and_two_replicas_migrating_at_once_agree(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    stores = [_pg_store(pg_cluster, pg_url) for _ in range(3)]
    versions: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def migrate(store: PostgresStore) -> None:
        start.wait()
        try:
            versions.append(store.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and versions == [SCHEMA_VERSION] * 3
    assert stores[0].migrate() == SCHEMA_VERSION
    assert stores[0].audit_head()[0] == 0
    for s in stores:
        s.close()


def test_a_newer_schema_and_a_foreign_database_are_refused(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    store = _pg_store(pg_cluster, pg_url)
    store.migrate()
    with _admin(pg_cluster, pg_url) as conn:
        conn.execute("UPDATE paywarden_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this signer"):
        store.migrate()
    store.close()
    foreign = pg_cluster.create_database()
    with _admin(pg_cluster, foreign) as conn:
        conn.execute("CREATE TABLE invoices (id TEXT PRIMARY KEY)")
    other = _pg_store(pg_cluster, foreign)
    with pytest.raises(StoreError, match="no Paywarden schema"):
        other.migrate()
    other.close()
    with _admin(pg_cluster, foreign) as conn:  # and nothing was created beside it
        assert conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchone() == (1,)


def test_the_audit_log_and_key_versions_keep_their_rules_in_the_database(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    store = _pg_store(pg_cluster, pg_url)
    store.migrate()
    store.audit_event(EVENT)
    store.audit_event(EVENT)  # two leaves: their parent is a stored node
    store.close()
    with _admin(pg_cluster, pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_nodes").fetchone() == (1,)
        for sql in (
            "UPDATE audit_log SET body = '{}'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
            "DELETE FROM audit_nodes",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(sql)
        conn.execute(
            "INSERT INTO payment_keys (key_id, label, version, state, spki, created_at,"
            " state_changed_at, retired_at) VALUES ('p.v1', 'p', 1, 'destroyed', '\\x00', 1, 1, 1)"
        )
        with pytest.raises(psycopg.errors.RaiseException, match="never goes back"):
            conn.execute("UPDATE payment_keys SET state = 'active', retired_at = NULL")
        with pytest.raises(psycopg.errors.RaiseException, match="never deleted"):
            conn.execute("DELETE FROM payment_keys")


def test_one_replica_at_a_time_holds_the_checkpoint_turn(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    first, second = _pg_store(pg_cluster, pg_url), _pg_store(pg_cluster, pg_url)
    first.migrate()
    inside, release = threading.Event(), threading.Event()
    outcome: list[str | None] = []

    def hold() -> str:
        inside.set()
        release.wait(30)
        return "first"

    holder = threading.Thread(target=lambda: outcome.append(first.in_checkpoint_turn(hold)))
    holder.start()
    assert inside.wait(30)
    ran: list[str] = []
    assert second.in_checkpoint_turn(lambda: ran.append("second")) is None
    assert ran == []  # not run while the other replica holds the turn
    release.set()
    holder.join(30)
    assert outcome == ["first"]
    assert second.in_checkpoint_turn(lambda: "second") == "second"  # released with it
    first.close()
    second.close()


def test_a_write_waits_for_another_replica_s_write_lock_and_gives_up_at_its_deadline(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    first, second = _pg_store(pg_cluster, pg_url), _pg_store(pg_cluster, pg_url)
    first.migrate()
    with first.payment_tx() as tx:  # holds the write lock
        tx.audit(EVENT)
        with pytest.raises(StoreError, match="store busy"):
            with second.payment_tx(wait=0.2) as other:
                other.audit(EVENT)
    assert second.audit_head()[0] == 1  # the first committed; the second wrote nothing
    first.close()
    second.close()


def test_a_replica_s_sessions_bound_idle_transactions_and_notice_a_vanished_peer(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    """A replica that hangs holding the write lock (or whose machine vanishes) must not
    hold every other replica off: the server ends its idle transaction, and both ends
    probe the connection."""
    store = PostgresStore(
        pg_url, password=pg_cluster.password_file.read_text().strip(), lock_timeout=2.0
    )
    names = (
        "idle_in_transaction_session_timeout",
        "statement_timeout",
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
    )
    shown = store._read(lambda c: [c.execute(f"SHOW {n}").fetchone()[0] for n in names])
    assert shown == ["22s", "7s", "10", "5", "3"]
    store.close()


def test_store_url_settings_are_checked() -> None:
    assert StoreConfig.model_validate({"url": "sqlite:///data/x.db"}).path == Path("data/x.db")
    assert StoreConfig.model_validate({"url": "sqlite:////abs/x.db"}).path == Path("/abs/x.db")
    pg = StoreConfig.model_validate(
        {"url": "postgresql://pw@db.internal:5432/paywarden?sslmode=verify-full"}
    )
    assert pg.postgres and location(pg) == pg.url
    for bad, why in (
        ({"url": "postgresql://pw:hunter2@db/paywarden"}, "no password in the URL"),
        ({"url": "postgresql://pw@db/paywarden?password=hunter2"}, "no password in the URL"),
        ({"url": "postgresql://pw@db/"}, "name the database"),
        ({"url": "mysql://pw@db/x"}, "sqlite:///PATH or postgresql://"),
        ({"url": "sqlite:///x.db", "path": "y.db"}, "not both"),
        ({"password_env": "PW"}, "for PostgreSQL"),
        ({"url": "postgresql://pw@db/x", "pool_size": 1}, "at least 2"),
        (
            {"url": "postgresql://pw@db/x", "password_env": "PW", "password_file": "/f"},
            "at most one",
        ),
    ):
        with pytest.raises(ValidationError, match=why) as info:
            StoreConfig.model_validate(bad)
        assert "hunter2" not in str(info.value.errors(include_input=False))
    assert redacted("postgresql://u:secret@h/d") == "postgresql://u:***@h/d"


def test_the_password_comes_from_its_file_or_variable_and_never_shows_in_an_error(
    pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    from_file = StoreConfig(url=pg_url, password_file=pg_cluster.password_file)
    store = open_store(from_file)
    assert store.migrate() == SCHEMA_VERSION
    store.close()
    secret = pg_cluster.password_file.read_text().strip()
    from_env = StoreConfig(url=pg_url, password_env="PW_FOR_TEST")
    assert password(from_env, {"PW_FOR_TEST": secret}) == secret
    with pytest.raises(StoreError, match=r"\$PW_FOR_TEST is not set"):
        password(from_env, {})
    wrong = tmp_path / "wrong"
    wrong.write_text("not-" + secret + "\n")
    with pytest.raises(StoreError) as info:
        open_store(StoreConfig(url=pg_url, password_file=wrong, connect_timeout_seconds=2.0))
    assert secret not in str(info.value) and "not-" not in str(info.value)
    assert "cannot open the store" in str(info.value)


def test_the_shared_sql_is_translated_for_psycopg() -> None:
    assert (
        translate("SELECT a FROM t INDEXED BY t_open WHERE b = ? AND c LIKE '5%'")
        == "SELECT a FROM t WHERE b = %s AND c LIKE '5%%'"
    )


def _tls_files(directory: Path, name: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate for 127.0.0.1, its key), PEM, made here."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} database CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), server.public_bytes(pem), key_pem


def test_tls_to_the_database_is_set_in_the_url_and_a_wrong_server_is_refused(
    tmp_path: Path,
) -> None:
    """A cluster of its own with TLS on: ``sslmode=verify-full`` against the CA that issued
    the server's certificate connects; against another CA, or requiring TLS of a server
    without it, the store does not open."""
    cluster = PgCluster()
    try:
        ca, cert, key = _tls_files(tmp_path, "right")
        other_ca, _, _ = _tls_files(tmp_path, "other")
        owner = cluster.data_dir.stat()
        for file_name, data in (("server.crt", cert), ("server.key", key)):
            path = cluster.data_dir / file_name
            path.write_bytes(data)
            path.chmod(0o600)
            os.chown(path, owner.st_uid, owner.st_gid)
        (tmp_path / "ca.crt").write_bytes(ca)
        (tmp_path / "other.crt").write_bytes(other_ca)
        plain = cluster.create_database()
        with pytest.raises(StoreError, match="cannot open the store"):
            open_store(
                StoreConfig(
                    url=plain + "?sslmode=require",
                    password_file=cluster.password_file,
                    connect_timeout_seconds=2.0,
                )
            )
        cluster.psql("ALTER SYSTEM SET ssl = on")
        cluster.psql("SELECT pg_reload_conf()")

        def config(ca_file: Path) -> StoreConfig:
            return StoreConfig(
                url=f"{plain}?sslmode=verify-full&sslrootcert={ca_file}",
                password_file=cluster.password_file,
                connect_timeout_seconds=2.0,
            )

        store = open_store(config(tmp_path / "ca.crt"))
        assert store.migrate() == SCHEMA_VERSION
        in_tls = store._read(
            lambda c: c.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        )
        assert in_tls == (True,)
        store.close()
        with pytest.raises(StoreError, match="cannot open the store"):
            open_store(config(tmp_path / "other.crt"))
    finally:
        cluster.close()

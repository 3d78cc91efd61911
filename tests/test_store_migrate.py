"""``paywarden store migrate``: a SQLite store written by a real signer, copied into a
fresh PostgreSQL database, and a signer on that database carrying on where the file
left off (the same JWS for a retried nonce, the spend still spent); the offline tools
(``audit verify``, the proofs, ``store-info``, ``store-export``, ``policy lint``)
reading the PostgreSQL store as they read the file; and every refusal leaving the
destination as it was: not empty, a password in the URL, a wrong password, a tampered
source, a source at another schema version.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from paywarden.signer.auditlog import merkle
from paywarden.signer.config import StoreConfig
from paywarden.signer.config_file import load_config
from paywarden.signer.store import offline_reads
from paywarden.v1 import signer_pb2

from tests.helpers import Pki, TestToken, reason_of, write_config
from tests.support.cli import ctl, paywarden, settings_free_env
from tests.support.clients import running_api, signed
from tests.support.intents import payment_intent
from tests.support.postgres import PgCluster
from tests.support.sessions import open_session, spent

TIMEOUT = 30
PASSWORD_VAR = "PAYWARDEN_TEST_MIGRATE_PASSWORD"

# agent-1 pays anyone up to 100.00 at once, a human approves more; agent-2 is frozen.
MIGRATE_PACK = """
id = "migrate"
version = 1
agents = ["agent-1", "agent-2"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "500.00"
approval_above = "100.00"

[payees]
allow_patterns = [".+"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000.00" }
"""


@dataclass(frozen=True)
class SignerRun:
    """A stopped signer's SQLite store and what its clients were told."""

    config: Path
    db: Path
    audit_pem: Path
    session_id: str
    first: signer_pb2.PaymentIntent
    first_jws: str
    spent: dict[str, str]


@pytest.fixture(scope="module")
def signer_run(tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki) -> SignerRun:
    """Signed payments, a held one (an approval), a denial, a freeze, a revocation and
    a checkpoint, by a real ``paywarden serve`` on SQLite."""
    base = tmp_path_factory.mktemp("migrate-run")
    config = write_config(base, token, pki, packs={"migrate.toml": MIGRATE_PACK})
    pem = base / "audit.pem"
    with running_api(config, pki) as (srv, api):
        sid = open_session(api.planner, "agent-1", "500.00", timeout=TIMEOUT)
        first = payment_intent(sid, payee="acme-data", amount="12.50", expires_in=290)
        first_jws = signed(api.answer(first)).jws
        for amount in ("20.00", "7.25"):
            signed(api.answer(payment_intent(sid, payee="weather-inc", amount=amount)))
        held = api.answer(payment_intent(sid, payee="acme-data", amount="150.00"))
        assert isinstance(held, signer_pb2.SignResponse) and held.approval_id, held
        denied = api.answer(payment_intent(sid, payee="acme-data", amount="600.00"))
        assert isinstance(denied, grpc.RpcError), denied
        for args in (
            ("freeze", "agent", "agent-2", "--reason", "migration test"),
            ("revoke", "--principal", "planner-2", "--reason", "left the team"),
            ("checkpoint", "--public-key-out", str(pem)),
        ):
            done = ctl(srv, pki, *args)
            assert done.returncode == 0, done.stdout + done.stderr
        signed(api.answer(payment_intent(sid, payee="acme-data", amount="1.00")))
        spend = spent(api.planner, sid, timeout=TIMEOUT)
    return SignerRun(config, base / "state.db", pem, sid, first, first_jws, spend)


def _with_postgres_store(config: Path, url: str, password_file: Path) -> Path:
    """A copy of ``config`` whose store is the PostgreSQL database at ``url``."""
    text = config.read_text(encoding="utf-8")
    path_line = next(ln for ln in text.splitlines() if ln.startswith("path = ") and "state" in ln)
    store = f'url = "{url}"\npassword_file = "{password_file}"'
    out = config.with_name("paywarden-pg.toml")
    out.write_text(text.replace(path_line, store), encoding="utf-8")
    return out


def _migrate(
    run: SignerRun, url: str, *extra: str | Path, db: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return paywarden(
        "store", "migrate", "--to", url, "--db", db or run.db, "--public-key", run.audit_pem,
        *extra, env=settings_free_env(),
    )  # fmt: skip


def _tables(cluster: PgCluster, url: str) -> int:
    dbname = url.rpartition("/")[2]
    out = cluster.psql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", dbname
    )
    return int(out.strip())


@pytest.fixture
def migrated(signer_run: SignerRun, pg_cluster: PgCluster, pg_url: str) -> Iterator[Path]:
    """``signer_run``'s store migrated into a fresh database (its password from an
    environment variable); the config of a signer on it."""
    secret = pg_cluster.password_file.read_text(encoding="utf-8").strip()
    done = paywarden(
        "store", "migrate", "--to", pg_url, "--password-env", PASSWORD_VAR,
        "--config", signer_run.config, "--public-key", signer_run.audit_pem,
        env=settings_free_env({PASSWORD_VAR: secret}),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert secret not in done.stdout + done.stderr
    sqlite_records, _ = offline_reads.read_audit_log(offline_reads.sqlite_file(signer_run.db))
    root = merkle.root([merkle.leaf_hash(b.encode()) for _, b, _ in sqlite_records]).hex()
    assert f"audit log verified: {len(sqlite_records)} records, root {root}" in done.stdout
    yield _with_postgres_store(signer_run.config, pg_url, pg_cluster.password_file)


def test_a_signer_on_the_copy_carries_on(signer_run: SignerRun, migrated: Path, pki: Pki) -> None:
    with running_api(migrated, pki) as (_, api):
        again = signed(api.answer(signer_run.first))
        assert again.replayed_result and again.jws == signer_run.first_jws
        assert spent(api.planner, signer_run.session_id, timeout=TIMEOUT) == signer_run.spent
        left = 500 - float(signer_run.spent["USD"])
        over = api.answer(
            payment_intent(signer_run.session_id, payee="acme-data", amount=f"{left + 0.01:.2f}")
        )
        assert isinstance(over, grpc.RpcError) and reason_of(over) == "BUDGET_EXCEEDED"
        frozen = api.answer(
            payment_intent(
                open_session(api.planner, "agent-2", "10.00", timeout=TIMEOUT),
                payee="acme-data",
                amount="1.00",
            ),
            agent="agent-2",
        )
        assert isinstance(frozen, grpc.RpcError) and reason_of(frozen) == "FROZEN"
    verify = paywarden(
        "audit", "verify", "--config", migrated, "--public-key", signer_run.audit_pem,
        "--max-unsealed", "100", env=settings_free_env(),
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_offline_readers_read_the_copy_as_they_read_the_file(
    signer_run: SignerRun, migrated: Path
) -> None:
    lite = offline_reads.sqlite_file(signer_run.db)
    pg = load_config(migrated, environ={}).store
    assert pg.url is not None
    assert offline_reads.read_audit_log(pg) == offline_reads.read_audit_log(lite)
    with offline_reads.audit_log_snapshot(pg) as a, offline_reads.audit_log_snapshot(lite) as b:
        assert a.checkpoints == b.checkpoints and a.checkpoints
        assert list(a.records()) == list(b.records()) == list(a.records())
    lite_version, lite_counts = offline_reads.table_counts(lite)
    pg_version, pg_counts = offline_reads.table_counts(pg)
    assert pg_version == lite_version
    assert dict(pg_counts) == {**dict(lite_counts), "paywarden_schema": 1}
    for table in ("decisions", "approvals", "freezes", "nonces", "reservations"):
        assert dict(lite_counts)[table] > 0, table
        assert _rows_as_json(pg, table) == _rows_as_json(lite, table), table
    revoked = list(offline_reads.table_rows(pg, "revocations"))
    assert [(r["rowid"], r["value"]) for r in revoked] == [(1, "planner-2")]
    agents, since = ["agent-1", "agent-2"], 0
    payments = offline_reads.signed_payments(pg, agents, since)
    assert payments == offline_reads.signed_payments(lite, agents, since)
    assert len(payments) == 4


def _rows_as_json(store: StoreConfig, table: str) -> list[str]:
    """A table's rows, each as sorted JSON (bytes as hex), in sorted order."""
    return sorted(
        json.dumps(row, sort_keys=True, default=lambda v: v.hex())
        for row in offline_reads.table_rows(store, table)
    )


def test_the_cli_tools_read_the_postgres_store(signer_run: SignerRun, migrated: Path) -> None:
    env = settings_free_env()
    for args in (
        ("audit", "export"),
        ("audit", "prove", "--seq", "3"),
        ("audit", "consistency", "--first", "4", "--second", "9"),
    ):
        pg = paywarden(*args, "--config", migrated, env=env)
        lite = paywarden(*args, "--db", signer_run.db, env=env)
        assert pg.returncode == lite.returncode == 0, pg.stderr + lite.stderr
        assert pg.stdout == lite.stdout and pg.stdout
    verify = ("audit", "verify", "--public-key", signer_run.audit_pem, "--max-unsealed", "50")
    pg = paywarden(*verify, "--config", migrated, env=env)
    assert pg.returncode == 0, pg.stdout + pg.stderr
    assert pg.stdout == paywarden(*verify, "--db", signer_run.db, env=env).stdout
    info = paywarden("store-info", "--config", migrated, env=env)
    assert info.returncode == 0, info.stderr
    lite_info = paywarden("store-info", "--config", signer_run.config, env=env).stdout
    assert info.stdout.startswith("store postgresql://paywarden@127.0.0.1:")
    counts = sorted(info.stdout.splitlines()[1:])
    assert counts == sorted([*lite_info.splitlines()[1:], "  paywarden_schema: 1 rows"])
    export = paywarden("store-export", "--config", migrated, "--table", "freezes", env=env)
    assert export.returncode == 0, export.stderr
    assert json.loads(export.stdout)["target"] == "agent-2"
    lint_pg = paywarden("policy", "lint", "--config", migrated, "--json", env=env)
    lint_lite = paywarden("policy", "lint", "--config", signer_run.config, "--json", env=env)
    assert lint_pg.returncode == lint_lite.returncode and lint_pg.stdout == lint_lite.stdout


def test_a_database_that_is_not_empty_is_refused(
    signer_run: SignerRun, pg_cluster: PgCluster, migrated: Path
) -> None:
    target = load_config(migrated, environ={}).store.url
    assert target is not None
    before = _tables(pg_cluster, target)
    again = _migrate(signer_run, target, "--password-file", pg_cluster.password_file)
    assert again.returncode == 1
    assert "not empty" in again.stderr and "nothing committed" in again.stderr
    assert _tables(pg_cluster, target) == before


def test_a_password_in_the_url_is_refused_and_never_printed(
    signer_run: SignerRun, pg_cluster: PgCluster, pg_url: str
) -> None:
    with_password = pg_url.replace("paywarden@", "paywarden:hunter2-in-url@")
    done = _migrate(signer_run, with_password)
    assert done.returncode == 2
    assert "--password-file" in done.stderr
    assert "hunter2-in-url" not in done.stdout + done.stderr
    assert _tables(pg_cluster, pg_url) == 0


def test_a_wrong_password_is_refused_and_never_printed(
    signer_run: SignerRun, pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-7f3a\n", encoding="utf-8")
    done = _migrate(signer_run, pg_url, "--password-file", wrong)
    assert done.returncode == 1
    assert "--to" in done.stderr and "password authentication failed" in done.stderr
    assert "not-the-password-7f3a" not in done.stdout + done.stderr
    assert _tables(pg_cluster, pg_url) == 0


def test_a_tampered_source_is_refused_with_nothing_committed(
    signer_run: SignerRun, pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    shutil.copyfile(signer_run.db, db)
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER audit_log_no_update")
    body = conn.execute("SELECT body FROM audit_log WHERE seq = 5").fetchone()[0]
    edited = body.replace('"agent-1"', '"agent-9"', 1)
    assert edited != body
    conn.execute(
        "UPDATE audit_log SET body = ?, leaf = ? WHERE seq = 5",
        (edited, merkle.leaf_hash(edited.encode())),
    )
    conn.commit()
    conn.close()
    done = _migrate(signer_run, pg_url, "--password-file", pg_cluster.password_file, db=db)
    assert done.returncode == 1, done.stdout
    assert "the copied audit log does not verify" in done.stderr
    assert "nothing committed" in done.stderr
    assert _tables(pg_cluster, pg_url) == 0


def test_a_source_at_another_schema_version_is_refused(
    signer_run: SignerRun, pg_cluster: PgCluster, pg_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "state.db"
    shutil.copyfile(signer_run.db, db)
    conn = sqlite3.connect(db)
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    conn.execute(f"PRAGMA user_version = {version - 1}")
    conn.commit()
    conn.close()
    done = _migrate(signer_run, pg_url, "--password-file", pg_cluster.password_file, db=db)
    assert done.returncode == 1
    assert f"schema version {version - 1}" in done.stderr
    assert "start the signer once" in done.stderr
    assert _tables(pg_cluster, pg_url) == 0


def test_the_copy_streams_in_batches_and_keeps_every_row(
    signer_run: SignerRun, pg_cluster: PgCluster, pg_url: str
) -> None:
    """Three rows at a time from the file (each table spans several batches): the copy
    holds every row, byte for byte."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from paywarden.signer.store.sqlite_to_postgres import migrate

    key = load_pem_public_key(signer_run.audit_pem.read_bytes())
    secret = pg_cluster.password_file.read_text(encoding="utf-8").strip()
    done = migrate(signer_run.db, pg_url, secret, [key], batch=3)  # type: ignore[list-item]
    lite = offline_reads.sqlite_file(signer_run.db)
    pg = StoreConfig(url=pg_url, password_file=pg_cluster.password_file)
    _, counts = offline_reads.table_counts(lite)
    assert sorted(done.tables) == sorted(counts)
    assert max(n for _, n in counts) > 3 * 3
    for table, _ in counts:
        if table != "revocations":  # its rowid is a column on PostgreSQL
            assert _rows_as_json(pg, table) == _rows_as_json(lite, table), table
    assert offline_reads.read_audit_log(pg) == offline_reads.read_audit_log(lite)


def test_the_offline_tools_name_the_setting_and_never_the_password(
    signer_run: SignerRun, pg_url: str, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-91c2\n", encoding="utf-8")
    config = _with_postgres_store(signer_run.config, pg_url, wrong)
    env = settings_free_env()
    for args, code in (
        (("audit", "verify", "--public-key", signer_run.audit_pem), 1),
        (("audit", "prove", "--seq", "1"), 1),
        (("store-info",), 1),
        (("store-export", "--table", "decisions"), 1),
        (("policy", "lint"), 2),
    ):
        done = paywarden(*args, "--config", config, env=env)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        assert "store.url postgresql://paywarden@" in done.stderr, (args, done.stderr)
        assert "password authentication failed" in done.stderr
        assert "not-the-password-91c2" not in done.stdout + done.stderr

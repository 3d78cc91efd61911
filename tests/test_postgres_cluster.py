"""The throwaway PostgreSQL cluster of the tests (tests/support/postgres.py) is real and
safe: the role logs in by SCRAM with the password from its file and nothing else, the
password is in no other file, stop/start is an outage and a recovery on the same url,
and every database handed out is new and empty."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.helpers import ROOT
from tests.support import postgres
from tests.support.postgres import PgCluster

# A process that makes a cluster, says where it is, and waits to be killed.
OWNER = """
import json, sys
from tests.support import postgres
from tests.support.postgres import PgCluster
c = PgCluster()
pid = int((c.data_dir / "postmaster.pid").read_text().split()[0])
print(json.dumps({"dir": str(c.dir), "postmaster": pid, "guardian": c._guardian.pid}), flush=True)
sys.stdin.read()
"""


def cluster_password(cluster: PgCluster) -> str:
    return cluster.password_file.read_text(encoding="ascii").strip()


def user_tables(url: str, password: str) -> list[str]:
    with psycopg.connect(url, password=password) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie that its new parent has not reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` (not our child) exits within ``timeout_s`` (a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


def test_the_role_runs_a_query_with_the_password_from_its_file(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    parts = urlsplit(pg_url)
    assert (parts.username, parts.password, parts.hostname) == ("paywarden", None, "127.0.0.1")
    with psycopg.connect(pg_url, password=cluster_password(pg_cluster)) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), 6 * 7, current_setting('fsync')"
        ).fetchone()
    assert row == ("paywarden", parts.path.lstrip("/"), 42, "on")


def test_the_password_file_is_for_the_test_process_alone(pg_cluster: PgCluster) -> None:
    info = pg_cluster.password_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()


def test_a_wrong_password_is_refused(pg_cluster: PgCluster, pg_url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_url, password=cluster_password(pg_cluster) + "x", connect_timeout=10)


def test_the_superuser_is_not_reachable_over_tcp(pg_cluster: PgCluster, pg_url: str) -> None:
    superuser = pg_cluster.psql("SELECT current_user").strip()
    as_superuser = pg_url.replace("paywarden@", f"{superuser}@", 1)
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(as_superuser, password=cluster_password(pg_cluster), connect_timeout=10)


def test_the_password_is_in_no_file_of_the_cluster_but_its_own(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    password = cluster_password(pg_cluster)
    # Log in, fail to log in and write, so that the log and the data have seen all of it.
    with psycopg.connect(pg_url, password=password) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_url, password=password[::-1], connect_timeout=10)
    pg_cluster.psql("CHECKPOINT")
    read, holding = [], []
    for path in pg_cluster.dir.rglob("*"):
        if path == pg_cluster.password_file or not path.is_file():
            continue
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # a temporary file the server removed meanwhile
            continue
        read.append(path.name)
        if password.encode() in content:
            holding.append(path)  # the path only: a failure must not print the password
    assert {"postgresql.conf", "pg_hba.conf", "server.log"} <= set(read)
    assert holding == []


def test_stop_refuses_connections_and_start_serves_the_same_url_again(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    password = cluster_password(pg_cluster)
    with psycopg.connect(pg_url, password=password) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (7)")
    pg_cluster.stop()
    assert not pg_cluster.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_url, password=password, connect_timeout=10)
    pg_cluster.stop()  # idempotent
    pg_cluster.start()
    assert pg_cluster.running
    with psycopg.connect(pg_url, password=password) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(7,)]


def test_each_database_handed_out_is_new_empty_and_the_roles(pg_cluster: PgCluster) -> None:
    password = cluster_password(pg_cluster)
    first, second = pg_cluster.create_database(), pg_cluster.create_database()
    try:
        assert first != second
        assert user_tables(first, password) == user_tables(second, password) == []
        with psycopg.connect(first, password=password) as conn:
            conn.execute("CREATE TABLE only_in_first (x int)")
            owner = conn.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
            ).fetchone()
        assert owner == ("paywarden",)
        assert user_tables(first, password) == ["public.only_in_first"]
        assert user_tables(second, password) == []
    finally:
        pg_cluster.drop_database(first)
        pg_cluster.drop_database(second + "?sslmode=disable")
    names = pg_cluster.psql("SELECT datname FROM pg_database").split()
    assert urlsplit(first).path[1:] not in names
    assert urlsplit(second).path[1:] not in names


def test_close_stops_the_server_and_removes_the_cluster() -> None:
    cluster = PgCluster()
    pid = int((cluster.data_dir / "postmaster.pid").read_text(encoding="ascii").split()[0])
    assert cluster.running and not process_gone(pid)
    cluster.close()
    cluster.close()  # idempotent
    assert process_gone(pid)
    assert not cluster.dir.exists()
    assert not cluster.running


def test_a_cluster_whose_owner_is_killed_is_stopped_and_removed() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        made = json.loads(owner.stdout.readline())
        assert not process_gone(made["postmaster"])
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert wait_for_exit(made["guardian"], timeout_s=60)
    assert process_gone(made["postmaster"])
    assert not Path(made["dir"]).exists()


def test_a_port_taken_before_the_server_binds_it_is_traded_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = postgres.free_port
        monkeypatch.setattr(postgres, "free_port", lambda: next(ports, None) or real_free_port())
        cluster = PgCluster()
        try:
            assert cluster.port != taken.getsockname()[1]
            assert cluster.running
            assert "could not bind" in cluster.log_file.read_text(encoding="utf-8")
        finally:
            cluster.close()

"""A real, throwaway PostgreSQL cluster for the tests: ``initdb`` and ``pg_ctl`` in a
temporary directory, no mock.

Layout of ``PgCluster.dir`` (made by ``tempfile.mkdtemp``, removed by ``close()``)::

    paywarden.password   the role's password, mode 0600, owned by the test process
    pg/                  owned by the server's OS user
    pg/data/             the cluster (initdb)
    pg/server.log        everything the server writes: show it when a test fails
    pg/socket/           the unix socket, for the fixture's own admin (``psql``)

The server runs as the current user, or as the ``postgres`` OS user (``runuser``) when
the tests run as root, since initdb and pg_ctl refuse root. Clients reach it on
127.0.0.1 only as the role ``paywarden`` (LOGIN, CREATEDB) with SCRAM-SHA-256; the
server's OS user is the superuser, reachable through the socket alone (peer).

If the process that made the cluster dies without ``close()`` (SIGKILL, a CI timeout), a
guardian process it started sees its pipe close, stops the server (immediate) and
removes the directory: no server outlives the test run.

The password never reaches the server or any file but ``password_file``: the role is
given a SCRAM verifier made here, so neither the server log nor a statement holds it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

ROLE = "paywarden"
SERVER_OS_USER_WHEN_ROOT = "postgres"
_START_TIMEOUT_S = 60

# A test machine's settings: fsync stays on (the durability tests need it), memory is
# small, and there are connections for several signer processes with a pool each.
_SETTINGS = """
listen_addresses = '127.0.0.1'
include = 'port.conf'
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0700
max_connections = 200
shared_buffers = 16MB
fsync = on
logging_collector = off
log_line_prefix = '%m [%p] %u@%d '
password_encryption = scram-sha-256
"""

# The guardian: waits for EOF on stdin (the owner closed the cluster or died), then runs
# the stop command (argv[2:]) and removes the directory (argv[1]).
_GUARDIAN = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""

_HBA = f"""# Written by tests/support/postgres.py: the superuser by socket, {ROLE} by TCP.
local   all   {{superuser}}   peer
host    all   {ROLE}   127.0.0.1/32   scram-sha-256
"""


def server_bin_dir() -> Path:
    """The directory of the newest server binaries: /usr/lib/postgresql/VERSION/bin
    (Debian), else that of ``initdb`` on PATH."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.is_file()]
    if found:
        return max(found, key=lambda d: _version_key(d.parent.name))
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's server (initdb) is not installed: run scripts/install.sh")
    return Path(initdb).resolve().parent


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677), so
    that the password itself is never sent to the server. ``password`` must be ASCII
    (SASLprep leaves it unchanged)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """A cluster started by the constructor; ``close()`` stops it and removes its files.

    ``url(dbname)`` names a database without a password (the password is in
    ``password_file``); ``create_database()`` makes a fresh one owned by the role.
    ``stop()`` and ``start()`` keep the port and the data, for tests of an outage.
    """

    def __init__(self) -> None:
        self.bin_dir = server_bin_dir()
        self._as_root = os.geteuid() == 0
        os_user = SERVER_OS_USER_WHEN_ROOT if self._as_root else pwd.getpwuid(os.geteuid()).pw_name
        try:
            server_user = pwd.getpwnam(os_user)
        except KeyError:
            raise RuntimeError(
                f"the OS user {os_user!r} that runs PostgreSQL is missing: run scripts/install.sh"
            ) from None
        self._superuser = os_user
        self._databases = 0
        self._closed = False
        # The server's user must reach pg/ but see nothing else here (the password file).
        self.dir = Path(tempfile.mkdtemp(prefix="paywarden-pg-"))
        self.dir.chmod(0o711)
        self.password_file = self.dir / "paywarden.password"
        pg = self.dir / "pg"
        self.data_dir = pg / "data"
        self.socket_dir = pg / "socket"
        self.log_file = pg / "server.log"
        self._guardian = self._start_guardian()
        try:
            for d in (pg, self.socket_dir):
                d.mkdir(mode=0o700)
                os.chown(d, server_user.pw_uid, server_user.pw_gid)
            self._initdb()
            self._start_on_a_free_port()
            self._create_role()
        except BaseException:
            self.close()
            raise

    # -- the API of the fixtures ---------------------------------------------------

    def url(self, dbname: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh empty database owned by the role (a unique name); its url."""
        self._databases += 1
        name = f"pw_{self._databases}_{secrets.token_hex(4)}"
        self.psql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database that ``url`` names, ending whatever is still connected to it."""
        name = urlsplit(url).path.lstrip("/")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @property
    def running(self) -> bool:
        if self._closed:
            return False
        status = self._run([self._bin("pg_ctl"), "status", "-D", str(self.data_dir)], check=False)
        return status.returncode == 0

    def start(self) -> None:
        """Start the server (again) on the same port and data; return once it accepts
        connections (``pg_ctl -w``)."""
        if self._closed:
            raise RuntimeError("the cluster is closed")
        start = [self._bin("pg_ctl"), "start", "-w", "-t", str(_START_TIMEOUT_S)]
        proc = self._run([*start, "-D", str(self.data_dir), "-l", str(self.log_file)], check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """Fast shutdown (open sessions are ended, a checkpoint is written); nothing if it
        is not running. ``close`` stops it "immediate": its files are removed next."""
        if self.data_dir.exists() and self.running:
            stop = [self._bin("pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data_dir)]
            self._run(stop)

    def close(self) -> None:
        """Stop the server and remove every file of the cluster; idempotent."""
        if self._closed:
            return
        try:
            # No shutdown checkpoint: it fsyncs every file of every database, seconds
            # of work for data that is removed next.
            self.stop("immediate")
        finally:
            self._closed = True
            shutil.rmtree(self.dir, ignore_errors=True)
            if self._guardian.stdin is not None:
                self._guardian.stdin.close()
            self._guardian.wait()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` as the superuser through the socket; its output (unaligned, tuples
        only). The SQL goes on stdin, not argv."""
        args = [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        args += ["-h", str(self.socket_dir), "-p", str(self.port), "-U", self._superuser]
        return self._run([*args, "-d", dbname, "-f", "-"], stdin=sql).stdout

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n--- " + str(self.log_file) + " ---\n" + "\n".join(text.splitlines()[-lines:])

    # -- inside --------------------------------------------------------------------

    def _initdb(self) -> None:
        initdb = [self._bin("initdb"), "-D", str(self.data_dir), "-U", self._superuser]
        auth = ["--auth-local=peer", "--auth-host=reject"]  # pg_hba.conf is written below
        self._run([*initdb, "-E", "UTF8", "--locale=C", "--no-sync", *auth])
        settings = _SETTINGS.format(socket_dir=self.socket_dir)
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(settings)
        hba = _HBA.format(superuser=self._superuser)
        (self.data_dir / "pg_hba.conf").write_text(hba, encoding="utf-8")

    def _start_on_a_free_port(self, attempts: int = 3) -> None:
        """Start on a port that was free a moment ago; another one if something took it
        meanwhile (the port stays the cluster's for every later ``start()``)."""
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            (self.data_dir / "port.conf").write_text(f"port = {self.port}\n", encoding="utf-8")
            try:
                self.start()
                return
            except RuntimeError as e:
                if attempt == attempts or "could not bind" not in str(e):
                    raise

    def _create_role(self) -> None:
        password = secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(password + "\n")
        verifier = scram_verifier(password)
        self.psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{verifier}'")

    def _start_guardian(self) -> subprocess.Popen[bytes]:
        """The process that cleans up if this one dies: its own session (a Ctrl-C to
        pytest's process group does not reach it), our end of its stdin held only here."""
        stop = [self._bin("pg_ctl"), "stop", "-w", "-m", "immediate", "-D", str(self.data_dir)]
        return subprocess.Popen(
            [sys.executable, "-c", _GUARDIAN, str(self.dir), *self._as_server_user(stop)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=self._env(),
            start_new_session=True,
        )

    def _as_server_user(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self._superuser, "--", *args] if self._as_root else args

    @staticmethod
    def _env() -> dict[str, str]:
        """Our environment without PG* variables (PGPASSWORD, PGHOST, ...)."""
        return {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if path.is_file():
            return str(path)
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"PostgreSQL's {name} is not installed: run scripts/install.sh")
        return found

    def _run(
        self, args: list[str], *, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the server's OS user, in ``dir/pg`` (a cwd that
        user can read), with no PG* variables of ours."""
        proc = subprocess.run(
            self._as_server_user(args),
            cwd=self.dir / "pg",
            env=self._env(),
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{args} failed: {proc.stdout}{proc.stderr}{self.log_tail()}")
        return proc

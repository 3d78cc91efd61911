#!/usr/bin/env python3
"""Holds a throwaway PostgreSQL cluster for a shell script (scripts/replicas.sh).

    .venv/bin/python scripts/pgcluster.py

Starts the tests' cluster (``PgCluster`` of tests/support/postgres.py: ``initdb`` and
``pg_ctl`` in a temporary directory, run as the ``postgres`` OS user under root, the
role ``paywarden`` on 127.0.0.1 with a password kept in a file of mode 0600), makes one
empty database and prints two lines: its URL (no password in it) and the password
file's path. Then it waits until its standard input closes, or SIGTERM or SIGINT,
stops the cluster and removes every file of it. If this process is killed outright,
the cluster's own guardian process does the same.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
# The one place for the cluster code: the tests' support module.
sys.path.insert(0, str(ROOT))

from tests.support.postgres import PgCluster  # noqa: E402


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    cluster = PgCluster()
    try:
        print(cluster.create_database(), flush=True)
        print(cluster.password_file, flush=True)
        sys.stdin.buffer.read()  # until the caller closes it (or a signal ends the wait)
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

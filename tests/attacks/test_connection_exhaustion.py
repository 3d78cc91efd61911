"""Idle TCP connections, no certificate needed, must not stop the service.

The attack: about 10,000 idle TCP connections exhausted the server's file
descriptors, and every new call failed for about two minutes, until gRPC's
default 120 s handshake timeout closed them. The server now closes a
connection that has not finished its TLS handshake within
``server.handshake_timeout_seconds`` and refuses connections beyond
``server.max_connections``.

Kept small and on loopback: the server's descriptor limit is lowered
(``prlimit``, as ``ulimit -n`` would) to a little above what it already uses,
so a few hundred sockets are enough to exhaust it.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import Pki, ServeProcess, TestToken, serve, write_config
from tests.support.clients import public_keys

HEADROOM = 64  # descriptors the server may open beyond those it holds when the flood starts
IDLE = 300  # idle connections: well beyond the headroom
CALL_TIMEOUT = 10
WAIT = 30.0  # longest wait for the server to close idle sockets (its timeout is 1 s here)


def _limit_descriptors(pid: int) -> int:
    """Lowers the server's soft descriptor limit to what it holds plus HEADROOM."""
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    _soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + HEADROOM, hard))
    return in_use + HEADROOM


@contextmanager
def _idle_sockets(srv: ServeProcess, count: int) -> Iterator[list[socket.socket]]:
    """Opens ``count`` TCP connections that never send a byte."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
        yield socks
    finally:
        for s in socks:
            s.close()


def _closed_by_server(socks: list[socket.socket], wanted: int, deadline: float) -> int:
    """Waits until the server has closed ``wanted`` of ``socks`` (EOF), or ``deadline``."""
    open_socks = list(socks)
    closed = 0
    while closed < wanted and time.monotonic() < deadline:
        readable, _, _ = select.select(open_socks, [], [], 0.5)
        for s in readable:
            try:
                data = s.recv(1)
            except ConnectionError:
                data = b""
            if data == b"":
                closed += 1
                open_socks.remove(s)
    return closed


def _serve_env(timeout_seconds: float, max_connections: int) -> dict[str, str]:
    return {
        "PAYWARDEN_SERVER__HANDSHAKE_TIMEOUT_SECONDS": str(timeout_seconds),
        "PAYWARDEN_SERVER__MAX_CONNECTIONS": str(max_connections),
    }


def test_idle_connections_exhausting_descriptors_are_closed_and_service_resumes(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki)
    with serve(config, env=_serve_env(1.0, 1000)) as srv:
        with pki.channel(srv.addr, "agent", "agent-1") as ch:
            assert len(public_keys(ch, CALL_TIMEOUT).keys) == 2
        _limit_descriptors(srv.proc.pid)
        with _idle_sockets(srv, IDLE) as socks:
            closed = _closed_by_server(socks, IDLE, time.monotonic() + WAIT)
            assert closed == IDLE, f"{IDLE - closed} idle connections still held"
            # The flood is over only because the server closed it: a new caller is served.
            with pki.channel(srv.addr, "agent", "agent-1") as ch:
                assert len(public_keys(ch, CALL_TIMEOUT).keys) == 2
        assert srv.proc.poll() is None


def test_connections_beyond_the_cap_are_closed_as_they_arrive(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    cap = 20
    config = write_config(tmp_path, token, pki)
    # A long handshake timeout: only the cap can close these within WAIT.
    with serve(config, env=_serve_env(120.0, cap)) as srv:
        _limit_descriptors(srv.proc.pid)
        with _idle_sockets(srv, IDLE) as socks:
            closed = _closed_by_server(socks, IDLE - cap, time.monotonic() + WAIT)
            assert closed >= IDLE - cap
            in_use = len(os.listdir(f"/proc/{srv.proc.pid}/fd"))
            assert in_use < resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE)[0]
        assert srv.proc.poll() is None

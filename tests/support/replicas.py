"""Several ``paywarden serve`` processes on one PostgreSQL database: the replicas of
issue 11, for the tests that race them (tests/test_replicas.py).

Each replica has a config file of its own (its own directory, policy copy and ports)
naming the same database (``store.url`` + ``store.password_file``) and the same
SoftHSM2 token directory: each process opens its own PKCS#11 session on it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from paywarden.v1 import signer_pb2

from tests.helpers import Pki, ServeProcess, TestToken, serve, write_config
from tests.support.clients import Api, served_api

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def replica_config(
    directory: Path,
    token: TestToken,
    pki: Pki,
    url: str,
    password_file: Path,
    *,
    server: Mapping[str, int] | None = None,
    store_extra: str = "",
    packs: dict[str, str] | None = None,
) -> Path:
    """``write_config``'s signer, its store the PostgreSQL database at ``url``;
    ``server`` sets ``[server]`` settings, ``store_extra`` adds lines to ``[store]``."""
    path = write_config(directory, token, pki, packs=packs)
    text = path.read_text(encoding="utf-8")
    sqlite = f'[store]\npath = "{directory / "state.db"}"\n'
    assert sqlite in text, "write_config's [store] changed: update replica_config"
    postgres = f'[store]\nurl = "{url}"\npassword_file = "{password_file}"\n{store_extra}'
    text = text.replace(sqlite, postgres)
    for key, value in (server or {}).items():
        line = re.compile(rf"^{key} = .*$", re.MULTILINE)
        setting = f"{key} = {value}"
        if line.search(text):
            text = line.sub(setting, text, count=1)
        else:
            text = text.replace("[server]\n", f"[server]\n{setting}\n", 1)
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Replica:
    """One running signer process and the shared test client on it."""

    name: str
    config: Path
    srv: ServeProcess
    api: Api

    def sign(
        self, request: signer_pb2.SignRequest, *, agent: str = "agent-1", timeout: float = 30
    ) -> signer_pb2.SignResponse | grpc.RpcError:
        """The answer to ``request`` from this replica: the response or the call's error."""
        return self.api.answer(request.intent, agent=agent, timeout=timeout)


@contextmanager
def running_replicas(configs: Sequence[Path], pki: Pki) -> Iterator[list[Replica]]:
    """``paywarden serve`` on each config, all started at once (they migrate the one
    database together); each one's readiness line is waited for. Named A, B, C…"""
    with ExitStack() as stack:
        starting: list[AbstractContextManager[ServeProcess]] = [serve(c) for c in configs]
        with ThreadPoolExecutor(len(starting)) as pool:
            futures = [pool.submit(cm.__enter__) for cm in starting]
        failures: list[BaseException] = []
        servers: list[ServeProcess] = []
        for cm, future in zip(starting, futures, strict=True):
            error = future.exception()
            if error is None:
                stack.push(cm)  # the started ones stop, whatever happens next
                servers.append(future.result())
            else:
                failures.append(error)
        if failures:
            raise failures[0]
        replicas = []
        for i, (config, srv) in enumerate(zip(configs, servers, strict=True)):
            api = stack.enter_context(served_api(srv, pki))
            replicas.append(Replica(chr(ord("A") + i), config, srv, api))
        yield replicas


def health_status(replica: Replica, service: str = "") -> int:
    """The standard health service's answer on ``replica`` for ``service``."""
    stub = health_pb2_grpc.HealthStub(replica.api.channel("operator", "operator-1"))
    answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    return int(answer.status)


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], what: str, bound: float) -> Any:
    """Asks ``fetch`` until ``done`` holds of its answer; fails after ``bound`` seconds
    (a safety net, not a measured time)."""
    ends = time.monotonic() + bound
    while True:
        got = fetch()
        if done(got):
            return got
        if time.monotonic() > ends:
            raise AssertionError(f"{what}: still {got!r} after {bound} s")
        threading.Event().wait(0.05)


def health_turns(replica: Replica, want: int, bound: float = 30.0) -> None:
    """Polls ``replica``'s health (overall and the Signer service) until both say ``want``."""
    name = health_pb2.HealthCheckResponse.ServingStatus.Name

    def both() -> tuple[str, str]:
        return name(health_status(replica)), name(health_status(replica, "paywarden.v1.Signer"))

    wait_for(both, lambda got: got == (name(want), name(want)), f"health of {replica.name}", bound)


class HealthWatch:
    """The standard health service's ``Watch`` stream on one replica, opened (and so
    admitted) while the replica serves, read on a thread of its own: what it reports
    later is seen as it changes (the authenticator's fail-closed revocation check
    refuses every new call but the health service's while the store is down)."""

    def __init__(self, replica: Replica) -> None:
        stub = health_pb2_grpc.HealthStub(replica.api.channel("operator", "operator-1"))
        self.name = replica.name
        self._stream = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        self.seen: list[int] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"health-{replica.name}")
        self._reader.start()

    def _read(self) -> None:
        try:
            for answer in self._stream:
                with self._changed:
                    self.seen.append(int(answer.status))
                    self._changed.notify_all()
        except grpc.RpcError:
            pass  # cancelled by close(), or the server went away

    def wait_for(self, want: int, bound: float = 30.0) -> None:
        """Until the stream's latest report is ``want`` (fails after ``bound`` seconds)."""
        name = health_pb2.HealthCheckResponse.ServingStatus.Name
        with self._changed:
            done = self._changed.wait_for(lambda: self.seen[-1:] == [want], timeout=bound)
            seen = [name(s) for s in self.seen]
        assert done, f"health of {self.name} never said {name(want)} in {bound} s: {seen}"

    def close(self) -> None:
        self._stream.cancel()
        self._reader.join()


def signed_rows(url: str, password_file: Path, session_id: str) -> dict[str, list[str]]:
    """{nonce: the JWS of every decision row of the session that holds one}, read from
    the database itself (the store has no reader for every row of a nonce)."""
    password = password_file.read_text(encoding="utf-8").strip()
    with psycopg.connect(url, password=password, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nonce, jws FROM decisions WHERE session_id = %s AND jws IS NOT NULL",
            (session_id,),
        ).fetchall()
    found: dict[str, list[str]] = {}
    for nonce, jws in rows:
        found.setdefault(str(nonce), []).append(str(jws))
    return found

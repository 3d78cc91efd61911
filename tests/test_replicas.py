"""Several signer processes on one PostgreSQL: the acceptance tests of issue 11.

Real parts only: ``paywarden serve`` processes, each with its own config naming the one
database of a throwaway PostgreSQL cluster (tests/support/postgres.py) and the one
SoftHSM2 token (each process opens its own PKCS#11 session), called over mutual TLS on
127.0.0.1. The replicas race: identical retries, payments against one budget, a freeze
through one and a call on another, a replica killed with SIGKILL under load, the
database stopped under them. What the clients were answered is checked against the rows
the database holds and against the audit log, verified over the shared database.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from paywarden.signer.config import StoreConfig
from paywarden.signer.config_file import load_config
from paywarden.signer.store.opening import open_store
from paywarden.signer.store.records import StoreError
from paywarden.v1 import control_pb2, signer_pb2

from tests.helpers import Pki, TestToken, reason_of
from tests.support.cli import ctl, paywarden
from tests.support.clients import is_signed, signed
from tests.support.intents import payment_request
from tests.support.postgres import PgCluster
from tests.support.replicas import (
    NOT_SERVING,
    SERVING,
    HealthWatch,
    Replica,
    health_status,
    health_turns,
    replica_config,
    running_replicas,
    signed_rows,
    wait_for,
)
from tests.support.sessions import open_session, spent
from tests.support.threads import waiting_in

PAYEE = "acme-data"
RETRIES = 200
PAYMENTS = 50
FITTING = 10  # payments of 1.00 that a budget of 10.00 holds
RPC_TIMEOUT = 30.0
BURST = 8  # calls at once on each replica before its database stops
OUTAGE_DEADLINE = 5.0  # each Sign's own deadline while the database is down
# One agent sends every call of a race at once, on one connection per replica: each
# replica must take its share (67 of 200) at once, or admission (8 calls in flight per
# principal by default, 62 workers to share) and HTTP/2 (16 streams per connection)
# would refuse most of them before the race reaches the store.
RACING = {"max_workers": 96, "max_calls_per_principal": 96, "max_concurrent_streams": 128}
Answer = signer_pb2.SignResponse | grpc.RpcError


@dataclass
class Shared:
    """Replicas of one database, and how the test reaches that database itself."""

    url: str
    password_file: Path
    replicas: list[Replica]

    def rows(self, session_id: str) -> dict[str, list[str]]:
        """{nonce: JWS of each signed decision row} of the session, from the database."""
        return signed_rows(self.url, self.password_file, session_id)


@contextmanager
def replicas_of(
    cluster: PgCluster, base: Path, token: TestToken, pki: Pki, count: int
) -> Iterator[Shared]:
    """``count`` replicas on a fresh database of ``cluster``; the database is dropped
    once they have stopped."""
    url = cluster.create_database()
    configs = [
        replica_config(base / f"replica-{i}", token, pki, url, cluster.password_file, server=RACING)
        for i in range(count)
    ]
    try:
        with running_replicas(configs, pki) as replicas:
            yield Shared(url, cluster.password_file, replicas)
    finally:
        if cluster.running:
            cluster.drop_database(url)


@pytest.fixture(scope="module")
def trio(
    pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki
) -> Iterator[Shared]:
    """Three replicas on one database, shared by the module's races (each test its own
    sessions)."""
    with replicas_of(pg_cluster, tmp_path_factory.mktemp("trio"), token, pki, 3) as shared:
        yield shared


def answer_of(replica: Replica, request: signer_pb2.SignRequest, agent: str = "agent-1") -> Answer:
    return replica.sign(request, agent=agent, timeout=RPC_TIMEOUT)


def described(answer: Answer) -> str:
    """An answer as one comparable string: ``SIGNED`` or ``CODE/REASON``."""
    if isinstance(answer, grpc.RpcError):
        return f"{answer.code().name}/{reason_of(answer)}"
    return str(signer_pb2.SignStatus.Name(answer.status))


def at_once(calls: list[tuple[Replica, signer_pb2.SignRequest]]) -> list[tuple[str, Answer]]:
    """Every call at the same moment (a thread each, released together): (replica's
    name, answer) in call order."""
    barrier = threading.Barrier(len(calls))

    def call(item: tuple[Replica, signer_pb2.SignRequest]) -> tuple[str, Answer]:
        replica, request = item
        barrier.wait()
        return replica.name, answer_of(replica, request)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(call, calls))


# -- 1, 2: racing the replicas -------------------------------------------------------


def test_identical_retries_across_replicas_spend_once_and_answer_one_jws(trio: Shared) -> None:
    planner = trio.replicas[0].api.planner
    session_id = open_session(planner, "agent-1", "100.00", timeout=RPC_TIMEOUT)
    request = payment_request(session_id, payee=PAYEE, amount="7.00")
    calls = [(trio.replicas[i % len(trio.replicas)], request) for i in range(RETRIES)]

    answers = at_once(calls)

    outcomes = Counter(described(a) for _, a in answers)
    assert outcomes == {"SIGNED": RETRIES}, outcomes
    responses = [a for _, a in answers if isinstance(a, signer_pb2.SignResponse)]
    assert len({r.jws for r in responses}) == 1
    assert len({r.decision_id for r in responses}) == 1
    assert sum(not r.replayed_result for r in responses) == 1  # decided once, replayed after
    by_replica = Counter(name for name, _ in answers)
    assert set(by_replica) == {r.name for r in trio.replicas}
    assert spent(planner, session_id, timeout=RPC_TIMEOUT) == {"USD": "7.00"}
    assert trio.rows(session_id) == {request.intent.nonce: [responses[0].jws]}


def test_payments_raced_across_replicas_never_exceed_the_session_budget(trio: Shared) -> None:
    planner = trio.replicas[1].api.planner
    session_id = open_session(planner, "agent-1", "10.00", timeout=RPC_TIMEOUT)
    requests = [payment_request(session_id, payee=PAYEE, amount="1.00") for _ in range(PAYMENTS)]
    calls = [(trio.replicas[i % len(trio.replicas)], r) for i, r in enumerate(requests)]

    answers = at_once(calls)

    outcomes = Counter(described(a) for _, a in answers)
    assert outcomes == {
        "SIGNED": FITTING,
        "PERMISSION_DENIED/BUDGET_EXCEEDED": PAYMENTS - FITTING,
    }, outcomes
    received = {
        request.intent.nonce: [answer.jws]
        for request, (_, answer) in zip(requests, answers, strict=True)
        if isinstance(answer, signer_pb2.SignResponse)
    }
    assert trio.rows(session_id) == received
    assert spent(planner, session_id, timeout=RPC_TIMEOUT) == {"USD": "10.00"}


# -- 3: a freeze through one replica holds on every other ---------------------------------


def test_a_freeze_through_one_replica_refuses_the_next_call_on_another(
    trio: Shared, pki: Pki
) -> None:
    a, b, c = trio.replicas
    session_id = open_session(a.api.planner, "agent-2", "10.00", timeout=RPC_TIMEOUT)
    first = payment_request(session_id, payee=PAYEE, amount="1.00")
    before = signed(answer_of(b, first, "agent-2"))

    froze = ctl(a.srv, pki, "freeze", "agent", "agent-2", "--reason", "replica drill")
    assert froze.returncode == 0, froze.stdout + froze.stderr
    after = [payment_request(session_id, payee=PAYEE, amount="1.00") for _ in range(2)]
    assert described(answer_of(b, after[0], "agent-2")) == "FAILED_PRECONDITION/FROZEN"
    assert described(answer_of(c, after[1], "agent-2")) == "FAILED_PRECONDITION/FROZEN"
    assert trio.rows(session_id) == {first.intent.nonce: [before.jws]}

    lifted = b.api.control().Unfreeze(
        control_pb2.UnfreezeRequest(scope=control_pb2.AGENT, target="agent-2", reason="drill over"),
        timeout=RPC_TIMEOUT,
    )
    assert lifted.removed
    # A set the freeze; B lifted it: A's cached view of the freezes (it refuses before
    # the request is read) catches up within limits.freeze_cache_seconds. Until it
    # does, A may refuse FROZEN, and nothing else.
    seen: list[str] = []

    def a_signs() -> str:
        seen.append(described(answer_of(a, after[0], "agent-2")))
        return seen[-1]

    wait_for(a_signs, lambda got: got == "SIGNED", "A after the unfreeze on B", 15.0)
    assert set(seen) <= {"SIGNED", "FAILED_PRECONDITION/FROZEN"}, seen
    assert set(trio.rows(session_id)) == {first.intent.nonce, after[0].intent.nonce}


# -- 4: one audit log ----------------------------------------------------------------


def test_the_shared_audit_log_verifies_and_holds_every_replicas_records(
    trio: Shared, tmp_path: Path
) -> None:
    session_id = open_session(trio.replicas[2].api.planner, "agent-1", "10.00", timeout=RPC_TIMEOUT)
    decided = {
        replica.name: signed(
            answer_of(replica, payment_request(session_id, payee=PAYEE, amount="1.00"))
        ).decision_id
        for replica in trio.replicas
    }
    checkpoint = (
        trio.replicas[0]
        .api.control()
        .Checkpoint(control_pb2.CheckpointRequest(), timeout=RPC_TIMEOUT)
    )
    audit_key = tmp_path / "audit.pem"
    audit_key.write_text(checkpoint.audit_public_key_pem, encoding="ascii")

    config = trio.replicas[1].config
    verified = paywarden("audit", "verify", "--config", config, "--public-key", audit_key)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("audit log OK: "), verified.stdout
    records = audit_records_of(config)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    in_log = {r["decision"]["id"] for r in records if r["action"] == "sign.decision"}
    assert set(decided.values()) <= in_log  # a decision of each replica's


def audit_records_of(config: Path) -> list[dict[str, Any]]:
    """The audit records of the store ``config`` names, in order, read through the
    store's own API."""
    store = open_store(load_config(config, environ={}).store)
    try:
        size, _root = store.audit_head()
        return [json.loads(store.audit_record(seq)) for seq in range(1, size + 1)]
    finally:
        store.close()


# -- 5: SIGKILL of one replica under load --------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One call of the load: where it went, what it asked, what came back, and whether
    the answer came before the kill."""

    replica: str
    request: signer_pb2.SignRequest
    answer: Answer
    before_kill: bool


class Load:
    """Client threads paying in one session through each replica, each call a new
    payment, until told to stop (or, on a replica that died, until its calls fail)."""

    def __init__(self, replicas: list[Replica], session_id: str, per_replica: int) -> None:
        self.sent: list[Sent] = []
        self.killed = threading.Event()
        self._stop = threading.Event()
        self._signed: Counter[str] = Counter()
        self._changed = threading.Condition()
        self._session_id = session_id
        self._threads = [
            threading.Thread(target=self._pay, args=(r,), name=f"load-{r.name}-{i}")
            for r in replicas
            for i in range(per_replica)
        ]

    def _pay(self, replica: Replica) -> None:
        while not self._stop.is_set():
            request = payment_request(self._session_id, payee=PAYEE, amount="0.01")
            answer = answer_of(replica, request)
            with self._changed:
                self.sent.append(Sent(replica.name, request, answer, not self.killed.is_set()))
                if isinstance(answer, signer_pb2.SignResponse):
                    self._signed[replica.name] += 1
                self._changed.notify_all()
            if isinstance(answer, grpc.RpcError) and replica.srv.proc.poll() is not None:
                return  # its replica is gone

    def signed_by(self, name: str) -> int:
        with self._changed:
            return self._signed[name]

    def wait_until_signed(self, name: str, count: int) -> None:
        """Until ``count`` payments were signed through replica ``name`` (bounded)."""
        with self._changed:
            done = self._changed.wait_for(lambda: self._signed[name] >= count, timeout=120)
        assert done, f"replica {name} signed {self._signed[name]} of {count} payments"

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_sigkill_of_a_replica_under_load_loses_no_signature_and_the_other_serves_on(
    pg_cluster: PgCluster, tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    with replicas_of(pg_cluster, tmp_path, token, pki, 2) as pair:
        a, b = pair.replicas
        session_id = open_session(b.api.planner, "agent-1", "1000.00", timeout=RPC_TIMEOUT)
        with Load(pair.replicas, session_id, per_replica=3) as load:
            load.wait_until_signed("A", 15)
            load.killed.set()
            a.srv.proc.kill()  # SIGKILL, mid-load
            a.srv.proc.wait()
            load.wait_until_signed("B", load.signed_by("B") + 15)  # B serves on
        sent = load.sent

        assert all(is_signed_answer(s.answer) for s in sent if s.before_kill)
        assert all(is_signed_answer(s.answer) for s in sent if s.replica == "B")
        received = {
            s.request.intent.nonce: s.answer.jws
            for s in sent
            if isinstance(s.answer, signer_pb2.SignResponse)
        }
        rows = pair.rows(session_id)
        assert {n: rows.get(n) for n in received} == {n: [j] for n, j in received.items()}
        # a payment A answered, asked again of B: A's signature
        answered_by_a = [s for s in sent if s.replica == "A" and is_signed_answer(s.answer)]
        last = answered_by_a[-1].request
        again = signed(answer_of(b, last))
        assert again.replayed_result and again.jws == received[last.intent.nonce]
        # the calls A died with, asked again of B: each signed, once
        lost = [s.request for s in sent if s.replica == "A" and not is_signed_answer(s.answer)]
        retried = {r.intent.nonce: signed(answer_of(b, r)).jws for r in lost}
        rows = pair.rows(session_id)
        assert {n: rows.get(n) for n in retried} == {n: [j] for n, j in retried.items()}
        assert all(len(jws) == 1 for jws in rows.values())  # no payment signed twice
        assert spent(b.api.planner, session_id, timeout=RPC_TIMEOUT) == {
            "USD": f"{Decimal('0.01') * len(rows):.2f}"
        }
        health_turns(b, SERVING)


def is_signed_answer(answer: Answer) -> bool:
    return isinstance(answer, signer_pb2.SignResponse) and is_signed(answer)


# -- 6: the database stopped under the replicas --------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of the test's own, to stop without stopping the run's."""
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.close()


def test_with_postgresql_stopped_every_sign_fails_closed_until_it_is_back(
    own_cluster: PgCluster, tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    with replicas_of(own_cluster, tmp_path, token, pki, 2) as pair, ExitStack() as watches:
        session_id = open_session(
            pair.replicas[0].api.planner, "agent-1", "100.00", timeout=RPC_TIMEOUT
        )
        # a burst first: each replica's pool holds several connections when the server stops
        burst = at_once(
            [
                (replica, payment_request(session_id, payee=PAYEE, amount="1.00"))
                for replica in pair.replicas
                for _ in range(BURST)
            ]
        )
        assert Counter(described(a) for _, a in burst) == {"SIGNED": 2 * BURST}
        health = []
        for replica in pair.replicas:
            health_turns(replica, SERVING)
            health.append(HealthWatch(replica))
            watches.callback(health[-1].close)

        own_cluster.stop()
        refused = []
        for replica, watch in zip(pair.replicas, health, strict=True):
            for _ in range(3):
                request = payment_request(session_id, payee=PAYEE, amount="1.00")
                answer = replica.sign(request, timeout=OUTAGE_DEADLINE)
                assert described(answer) == "UNAVAILABLE/STORE_UNAVAILABLE", answer
                refused.append(request)
            watch.wait_for(NOT_SERVING)
            # and a health Check made now is answered, NOT_SERVING (not refused: the
            # revocations it cannot read decide no status question)
            assert health_status(replica) == NOT_SERVING
            request = payment_request(session_id, payee=PAYEE, amount="1.00")
            answer = replica.sign(request, timeout=OUTAGE_DEADLINE)
            assert described(answer) == "UNAVAILABLE/STORE_UNAVAILABLE", answer
            refused.append(request)

        own_cluster.start()
        # the very next call signs: no connection pooled before the outage fails it
        for replica in pair.replicas:
            signed(answer_of(replica, payment_request(session_id, payee=PAYEE, amount="1.00")))
        for replica, watch in zip(pair.replicas, health, strict=True):
            watch.wait_for(SERVING)
            health_turns(replica, SERVING)
        rows = pair.rows(session_id)
        assert len(rows) == 2 * BURST + 2 and not {r.intent.nonce for r in refused} & set(rows)
        assert spent(pair.replicas[1].api.planner, session_id, timeout=RPC_TIMEOUT) == {
            "USD": f"{2 * BURST + 2}.00"
        }


def test_connections_pooled_before_the_database_restarted_fail_no_call_after_it(
    own_cluster: PgCluster,
) -> None:
    """The store itself: its pool held several connections when the database stopped;
    once it is back, no call is given one of those (each would fail)."""
    config = StoreConfig(
        url=own_cluster.create_database(), password_file=own_cluster.password_file, pool_size=4
    )
    store = open_store(config)
    try:
        store.migrate()
        holder = threading.Event()

        def hold_the_lock() -> None:
            with store.payment_tx():
                holder.wait()

        waiters = [threading.Thread(target=hold_the_lock) for _ in range(4)]
        for thread in waiters:
            thread.start()  # one holds the write lock, three wait for it, each on a connection
        wait_for(
            lambda: sum(waiting_in(t, "PostgresConnection._begin") for t in waiters),
            lambda waiting: waiting == 3,
            "three transactions waiting for the write lock",
            30.0,
        )
        holder.set()
        for thread in waiters:
            thread.join()

        own_cluster.stop()
        with pytest.raises(StoreError):
            store.check()
        own_cluster.start()
        for _ in range(4):
            store.check()
    finally:
        store.close()

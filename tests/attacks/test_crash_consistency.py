"""Crash consistency: SIGKILL a loaded ``paywarden serve`` at random points, restart it on
the same data directory, and check that no signature was lost, unrecorded or doubled.

Four clients (two agents, two clients each sharing one session, so that budgets are
raced) sign payments against a real server process. Each round kills the server
with SIGKILL once a random number of answers has arrived, so that in-flight calls are
cut at every stage (waiting for a batch, deciding, while the HSM signs inside the
decision's transaction, at the batch's commit, after it before the answer). After every
restart the log is sealed by an operator and ``paywarden audit verify`` must pass;
every client first retries, identically, what it sent without an answer and some of
what it got signed (the same JWS must come back). After the last round every JWS that
any client received must be recorded with its decision and spend, no nonce is signed
twice and no session's budget is exceeded.

``PAYWARDEN_CRASH_ROUNDS`` (default 20) sets the number of kills;
``PAYWARDEN_CRASH_SEED`` replays a run (the seed is printed on failure).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.v1 import (
    control_pb2,
    control_pb2_grpc,
    sessions_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
)

from tests.conftest import make_token
from tests.helpers import ROOT, Pki, ServeProcess, reason_of, serve, write_config
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

ROUNDS = int(os.environ.get("PAYWARDEN_CRASH_ROUNDS", "20"))
SEED = int(os.environ.get("PAYWARDEN_CRASH_SEED", str(secrets.randbits(32))))
BUDGET = "5.00"  # USD per session: a few payments each, then BUDGET_EXCEEDED
RPC_TIMEOUT = 30.0  # generous: only a stalled server reaches it
KILL_WAIT = 120.0  # the longest a round may take to reach its kill point
PAIRS = (("agent-1", "planner-1"), ("agent-2", "planner-2"))
CLIENTS_PER_PAIR = 2


def _cents(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 100 + int(frac.ljust(2, "0"))


@dataclass(frozen=True)
class Signed:
    intent: signer_pb2.PaymentIntent
    jws: str
    decision_id: str


@dataclass
class SessionSlot:
    """The session a pair of clients shares; replaced once its budget is spent."""

    agent: str
    planner: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    current: str | None = None
    budgets: dict[str, int] = field(default_factory=dict)  # every session opened: cents

    def session(self, sessions: sessions_pb2_grpc.SessionsStub) -> str:
        with self.lock:
            if self.current is None:
                self.current = open_session(
                    sessions,
                    self.agent,
                    BUDGET,
                    task="crash consistency load",
                    ttl=3600,
                    timeout=RPC_TIMEOUT,
                )
                self.budgets[self.current] = _cents(BUDGET)
            return self.current

    def exhausted(self, session_id: str) -> None:
        with self.lock:
            if self.current == session_id:
                self.current = None


class ServerGone(Exception):
    """The server was killed under this client: stop the round."""


@dataclass
class Round:
    """What the kill switch of one round waits for."""

    target: int
    killed: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    answered: int = 0
    finished: int = 0  # clients whose round is over (killed, done or failed)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def answer(self) -> None:
        with self.cond:
            self.answered += 1
            self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.finished += 1
            self.cond.notify_all()


@dataclass
class Client:
    slot: SessionSlot
    rng: random.Random
    signed: dict[str, Signed] = field(default_factory=dict)  # nonce -> what came back
    uncertain: dict[str, signer_pb2.PaymentIntent] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # nonce -> reason
    problems: list[str] = field(default_factory=list)
    retried_identical: int = 0
    interrupted: int = 0  # calls the kill cut before an answer came

    def run(self, addr: str, pki: Pki, rnd: Round, *, final: bool = False) -> None:
        try:
            with (
                pki.channel(addr, "agent", self.slot.agent) as agent_ch,
                pki.channel(addr, "planner", self.slot.planner) as planner_ch,
            ):
                self._run(
                    signer_pb2_grpc.SignerStub(agent_ch),
                    sessions_pb2_grpc.SessionsStub(planner_ch),
                    rnd,
                    final,
                )
        except ServerGone:
            pass
        except grpc.RpcError as exc:
            if not rnd.killed.is_set():
                self.problems.append(f"unexpected RPC failure: {exc.code()} {exc.details()}")
        except Exception as exc:  # a test client: report, never hang the round
            self.problems.append(f"client error: {exc!r}")
        finally:
            rnd.finish()

    def _run(
        self,
        signer: signer_pb2_grpc.SignerStub,
        sessions: sessions_pb2_grpc.SessionsStub,
        rnd: Round,
        final: bool,
    ) -> None:
        # 1. what was sent without an answer: the identical request again
        for nonce, intent in list(self.uncertain.items()):
            self._sign(signer, intent, rnd, retry=True)
            if nonce in self.uncertain:
                self.problems.append(f"retry of {nonce} left it uncertain")
        # 2. what was signed before the crash: the identical request, the identical JWS
        done = sorted(self.signed)
        for nonce in done if final else self.rng.sample(done, min(2, len(done))):
            self._sign(signer, self.signed[nonce].intent, rnd, retry=True)
        # 3. new payments until the server is killed
        while not final and not rnd.stop.is_set():
            try:
                session_id = self.slot.session(sessions)
            except grpc.RpcError as exc:
                if rnd.killed.is_set():
                    raise ServerGone from None
                raise exc
            intent = payment_intent(
                session_id,
                key_id=self.rng.choice(("payments.v1", "payments.v2")),
                payee=f"shop-{self.rng.randrange(8)}.example",
                amount=f"{self.rng.randint(1, 150) / 100:.2f}",
                reference=f"inv-{self.rng.randrange(10**6)}",
                purpose="crash consistency",
                expires_at=int(time.time()) + 290,
            )
            self._sign(signer, intent, rnd, retry=False)
            if intent.nonce in self.signed and self.rng.random() < 0.15:
                self._replay(signer, intent, rnd)

    def _sign(
        self,
        signer: signer_pb2_grpc.SignerStub,
        intent: signer_pb2.PaymentIntent,
        rnd: Round,
        *,
        retry: bool,
    ) -> None:
        nonce = intent.nonce
        self.uncertain[nonce] = intent
        try:
            resp = signer.Sign(signer_pb2.SignRequest(intent=intent), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            if rnd.killed.is_set():
                self.interrupted += 1
                raise ServerGone from None
            reason = reason_of(exc)
            del self.uncertain[nonce]
            if reason == "BUDGET_EXCEEDED":
                self.slot.exhausted(intent.session_id)
            elif not (retry and reason == "EXPIRY_IN_PAST"):
                self.problems.append(f"{nonce}: unexpected {exc.code()} [{reason}]")
            self.refused[nonce] = str(reason)
            rnd.answer()
            return
        del self.uncertain[nonce]
        rnd.answer()
        if resp.status != signer_pb2.SIGNED or not resp.jws:
            self.problems.append(f"{nonce}: answered {resp.status} without a JWS")
            return
        earlier = self.signed.get(nonce)
        if earlier is not None:
            self.retried_identical += 1
            if (resp.jws, resp.decision_id) != (earlier.jws, earlier.decision_id):
                self.problems.append(f"{nonce}: an identical retry got another JWS")
            if not resp.replayed_result:
                self.problems.append(f"{nonce}: a retry was not marked replayed")
            return
        if nonce in self.refused:
            self.problems.append(f"{nonce}: signed after it was refused")
        self.signed[nonce] = Signed(intent, resp.jws, resp.decision_id)

    def _replay(
        self, signer: signer_pb2_grpc.SignerStub, intent: signer_pb2.PaymentIntent, rnd: Round
    ) -> None:
        """The same nonce with another amount: refused, never signed."""
        changed = signer_pb2.PaymentIntent()
        changed.CopyFrom(intent)
        changed.amount = "0.01" if intent.amount != "0.01" else "0.02"
        try:
            signer.Sign(signer_pb2.SignRequest(intent=changed), timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            if rnd.killed.is_set():
                raise ServerGone from None
            if (exc.code(), reason_of(exc)) != (grpc.StatusCode.ALREADY_EXISTS, "NONCE_REPLAYED"):
                self.problems.append(f"replay of {intent.nonce}: {exc.code()} {reason_of(exc)}")
            rnd.answer()
            return
        self.problems.append(f"replay of {intent.nonce} with another amount was signed")


def _operator_checkpoint(addr: str, pki: Pki) -> str:
    """Seals the log now; returns the audit public key (PEM)."""
    with pki.channel(addr, "operator", "operator-1") as ch:
        resp = control_pb2_grpc.ControlStub(ch).Checkpoint(
            control_pb2.CheckpointRequest(), timeout=RPC_TIMEOUT
        )
    return resp.audit_public_key_pem


def _start_verify(db: Path, snapshot: Path, public_key: Path) -> subprocess.Popen[str]:
    """``paywarden audit verify`` on a consistent copy of the store taken now.

    The copy (SQLite's online backup, one read transaction) lets the check run while
    the next round loads the server, and it verifies exactly the log as sealed now.
    """
    source = _db(db)
    target = sqlite3.connect(snapshot)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return subprocess.Popen(
        [sys.executable, "-m", "paywarden.signer.cli", "audit", "verify",
         "--db", str(snapshot), "--public-key", str(public_key)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _verified(proc: subprocess.Popen[str] | None) -> None:
    if proc is None:
        return
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert out.startswith("audit log OK"), out


def _run_round(srv: ServeProcess, pki: Pki, clients: list[Client], rnd: Round, final: bool) -> None:
    """Runs the clients; unless ``final``, SIGKILLs the server at the round's target."""
    threads = [
        threading.Thread(target=c.run, args=(srv.addr, pki, rnd), kwargs={"final": final})
        for c in clients
    ]
    for t in threads:
        t.start()
    try:
        if not final:
            with rnd.cond:
                rnd.cond.wait_for(
                    lambda: rnd.answered >= rnd.target or rnd.finished == len(clients), KILL_WAIT
                )
            assert rnd.answered >= rnd.target, (
                f"only {rnd.answered} answers in the round: "
                f"{[p for c in clients for p in c.problems][:10]}"
            )
    finally:
        if not final:
            rnd.killed.set()  # before the kill: every error from now on is the kill's
            srv.proc.kill()
            srv.proc.wait(timeout=30)
        rnd.stop.set()
        for t in threads:
            t.join(timeout=KILL_WAIT)
    assert not any(t.is_alive() for t in threads), "a client did not finish its round"


@pytest.fixture
def crash_config(tmp_path: Path, pki: Pki) -> Iterator[Path]:
    # A token of this test's own: nothing the kills do can touch the shared one.
    token = make_token(tmp_path / "hsm", label="crash")
    yield write_config(tmp_path / "cfg", token, pki)


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)


def test_sigkill_under_load_loses_no_signature_and_doubles_no_spend(
    crash_config: Path, tmp_path: Path, pki: Pki
) -> None:
    rng = random.Random(SEED)
    slots = [SessionSlot(agent, planner) for agent, planner in PAIRS]
    clients = [
        Client(slot, random.Random(rng.getrandbits(32)))
        for slot in slots
        for _ in range(CLIENTS_PER_PAIR)
    ]
    audit_pem = tmp_path / "audit.pem"
    db_path = crash_config.parent / "state.db"
    jwks = ""
    note = f"(PAYWARDEN_CRASH_SEED={SEED})"

    verifying: subprocess.Popen[str] | None = None
    for number in range(ROUNDS + 1):
        final = number == ROUNDS
        with serve(crash_config) as srv:
            # every restart: seal what survived the kill, and the log must verify
            key = _operator_checkpoint(srv.addr, pki)
            if not audit_pem.exists():
                audit_pem.write_text(key, encoding="utf-8")
            assert audit_pem.read_text(encoding="utf-8") == key
            _verified(verifying)  # the previous round's
            verifying = _start_verify(db_path, tmp_path / f"verify-{number}.db", audit_pem)
            if not jwks:
                with pki.channel(srv.addr, "agent", "agent-1") as ch:
                    jwks = (
                        signer_pb2_grpc.SignerStub(ch)
                        .GetPublicKeys(signer_pb2.GetPublicKeysRequest(), timeout=RPC_TIMEOUT)
                        .jwks_json
                    )
            rnd = Round(target=rng.randint(2, 40))
            _run_round(srv, pki, clients, rnd, final)
            problems = [p for c in clients for p in c.problems]
            assert not problems, f"round {number} {note}: {problems[:10]}"
        if final:
            assert srv.proc.returncode == 0, "".join(srv.output[-20:])
    _verified(verifying)
    _verified(_start_verify(db_path, tmp_path / "verify-end.db", audit_pem))

    assert all(not c.uncertain for c in clients), "the final retries left requests unanswered"
    received = {nonce: s for c in clients for nonce, s in c.signed.items()}
    assert len(received) == sum(len(c.signed) for c in clients), "one nonce signed twice"
    assert len(received) >= ROUNDS, f"too few signatures to mean anything {note}"
    assert sum(c.retried_identical for c in clients) >= len(received), note

    # every JWS is genuine, and says what was asked
    keys = KeySet.import_key_set(json.loads(jwks))
    for nonce, s in received.items():
        token = jws.deserialize_compact(s.jws, keys, algorithms=["ES256"])
        claims = json.loads(token.payload)
        assert (claims["nonce"], claims["amount"], claims["sid"], claims["jti"]) == (
            nonce, s.intent.amount, s.intent.session_id, s.decision_id,
        )  # fmt: skip

    conn = _db(db_path)
    try:
        rows = conn.execute(
            "SELECT d.id, d.nonce, d.outcome, d.jws, d.session_id, d.amount_minor, r.status,"
            " r.amount_minor, n.decision_id FROM decisions d"
            " LEFT JOIN reservations r ON r.decision_id = d.id"
            " LEFT JOIN nonces n ON n.nonce = d.nonce"
        ).fetchall()
        budgets = {
            sid: int(b)
            for sid, b in conn.execute("SELECT session_id, budget_minor FROM session_budgets")
        }
        audited = set()
        for (body,) in conn.execute("SELECT body FROM audit_log"):
            record = json.loads(body)
            if record["action"] == "sign.decision":
                audited.add(record["decision"]["id"])
    finally:
        conn.close()

    by_id = {r[0]: r for r in rows}
    # every JWS a client received: its decision, nonce, spend and audit record are stored
    for nonce, s in received.items():
        row = by_id.get(s.decision_id)
        assert row is not None, f"signed decision {s.decision_id} is not in the store {note}"
        _id, r_nonce, outcome, r_jws, sid, amount, status, reserved, nonce_owner = row
        assert (r_nonce, outcome, r_jws, sid) == (nonce, "allow", s.jws, s.intent.session_id)
        assert int(amount) == int(reserved) == _cents(s.intent.amount)
        assert status == "spent", f"{s.decision_id} signed but its spend is {status} {note}"
        assert nonce_owner == s.decision_id
        assert s.decision_id in audited, f"{s.decision_id} signed but not audited {note}"
    # and nothing was signed that no client ended up holding
    signed_in_store = {r[0] for r in rows if r[3] is not None}
    assert signed_in_store == {s.decision_id for s in received.values()}, note
    for r in rows:  # an allowed decision never signed keeps no spend
        if r[2] == "allow" and r[3] is None:
            assert r[6] == "released", f"{r[0]} never signed but its spend is {r[6]} {note}"
    # at most one decision per nonce, and no session spent beyond its budget
    nonces = [r[1] for r in rows]
    assert len(nonces) == len(set(nonces)), note
    spent: dict[str, int] = {}
    for r in rows:
        if r[6] in ("spent", "held"):
            spent[r[4]] = spent.get(r[4], 0) + int(r[7])
    for sid, total in spent.items():
        assert total <= budgets[sid], f"session {sid} spent {total} of {budgets[sid]} {note}"
    by_session: dict[str, int] = {}
    for s in received.values():
        by_session[s.intent.session_id] = by_session.get(s.intent.session_id, 0) + _cents(
            s.intent.amount
        )
    opened = {sid: b for slot in slots for sid, b in slot.budgets.items()}
    for sid, total in by_session.items():
        assert total <= opened[sid] == budgets[sid], f"session {sid}: {total} signed {note}"
    # the kills did cut calls in flight (what the retries above were about)
    assert sum(c.interrupted for c in clients) >= ROUNDS // 2, note

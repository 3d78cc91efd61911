"""Kill switch, circuit breaker, metrics and health against the real ``paywarden serve``.

Every test runs its own server process on its own store (``<tmp>/state.db``, or a
database of its own on PostgreSQL: the tests that keep state run on both backends) and
talks to it over mutual TLS. The audit log is read through a store of the test's own
on the same database to prove the ordering claims: a freeze is one audit record, and
no ``sign.decision`` that allows a payment in the frozen scope comes after it until
the matching ``freeze.clear``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from paywarden.v1 import (
    approvals_pb2,
    control_pb2,
    signer_pb2,
    signer_pb2_grpc,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_token
from tests.helpers import (
    ROOT,
    Pki,
    ServeProcess,
    TestToken,
    reason_of,
    serve,
    write_config,
)
from tests.support.backends import Stores
from tests.support.cli import ctl
from tests.support.clients import Api
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

pytestmark = pytest.mark.both_backends

FLEET = tuple(f"fleet-{i}" for i in range(20))
KEYS = ("payments.v1", "payments.v2")
MAX_ITERATIONS = 200  # per signing thread
OPERATOR = "operator-1"
FROZEN = "FROZEN"
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.name
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.name
SCOPES = {
    "global": control_pb2.GLOBAL,
    "agent": control_pb2.AGENT,
    "session": control_pb2.SESSION,
    "key": control_pb2.KEY,
}


def _list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


# agent-1 and agent-2: anyone but evil-corp; one approver above USD 500.00.
BASE_PACK = """
id = "ks-base"
version = 1
agents = ["agent-1", "agent-2"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "10000.00"
approval_above = "500.00"

[payees]
allow_patterns = [".+"]
deny = ["evil-corp"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "100000.00" }
"""

FLEET_PACK = f"""
id = "ks-fleet"
version = 1
agents = {_list(FLEET)}

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "10000.00"

[payees]
allow_patterns = [".+"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "100000.00" }}
"""


def breaker_pack(pack_id: str, agent: str, payees: str, breaker: str) -> str:
    return f"""
id = "{pack_id}"
version = 1
agents = ["{agent}"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "1000.00"

[payees]
{payees}
first_payment = "allow"

[breaker]
window_seconds = 3600
{breaker}

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "100000.00" }}
"""


ONLY_ACME = 'allow = ["acme-data"]'
ANYONE = 'allow_patterns = [".+"]'


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(pki: Pki) -> tuple[str, ...]:
    """Agent certificates fleet-0 … fleet-19 beside the session's others."""

    def issue(agent: str) -> None:
        if (pki.dir / f"agent-{agent}.crt").exists():
            return
        proc = subprocess.run(
            [sys.executable, "scripts/pki.py", "issue", "--dir", str(pki.dir),
             "--role", "agent", "--id", agent],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(issue, FLEET))
    for agent in FLEET:
        assert (pki.dir / f"agent-{agent}.key").exists()
    return FLEET


def make_config(directory: Path, token: TestToken, pki: Pki, stores: Stores) -> Path:
    packs = {"base.toml": BASE_PACK, "fleet.toml": FLEET_PACK}
    return write_config(directory, token, pki, packs=packs, stores=stores)


# -- clients ------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One Sign call and its answer, as the client saw it."""

    agent: str
    session_id: str
    key_id: str
    nonce: str
    code: str  # "OK" or the gRPC status code name
    reason: str | None = None
    details: str = ""
    status: int = 0  # signer_pb2.SIGNED / PENDING_APPROVAL when code is OK
    decision_id: str = ""
    approval_id: str = ""
    jws: str = ""
    payload: bytes = b""
    replayed: bool = False
    audit_seq: int | None = None
    after_freeze: bool = False  # sent after Control.Freeze had returned

    @property
    def signed(self) -> bool:
        return self.code == "OK" and self.status == signer_pb2.SIGNED and bool(self.jws)

    @property
    def frozen(self) -> bool:
        return self.code == FAILED_PRECONDITION and self.reason == FROZEN


# What this module's agents pay, unless a test says otherwise.
intent = partial(
    payment_intent,
    amount="1.00",
    payee="acme-data",
    reference="inv-ks",
    purpose="kill switch test",
    expires_in=240,
)


def sign(stub: signer_pb2_grpc.SignerStub, agent: str, req: signer_pb2.PaymentIntent) -> Attempt:
    a = Attempt(agent, req.session_id, req.key_id, req.nonce, "OK")
    try:
        resp = stub.Sign(signer_pb2.SignRequest(intent=req), timeout=30)
    except grpc.RpcError as exc:
        err: Any = exc  # a grpc.Call as well
        md: dict[str, Any] = dict(err.trailing_metadata() or ())
        a.code = err.code().name
        a.reason = reason_of(err)
        a.details = err.details() or ""
        a.decision_id = str(md.get("paywarden-decision-id", ""))
        seq = md.get("paywarden-audit-seq")
        a.audit_seq = int(seq) if seq is not None else None
        return a
    a.status = resp.status
    a.decision_id = resp.decision_id
    a.approval_id = resp.approval_id
    a.jws = resp.jws
    a.payload = resp.canonical_payload
    a.replayed = resp.replayed_result
    a.audit_seq = resp.audit_seq or None
    return a


class ServedApi(Api):
    """The shared client on a ``paywarden serve`` process (channels opened once per
    test, one per identity), with the kill-switch operations."""

    def __init__(self, srv: ServeProcess, pki: Pki, stack: ExitStack) -> None:
        super().__init__(lambda role, who: stack.enter_context(pki.channel(srv.addr, role, who)))
        self.srv, self.pki = srv, pki

    def attempt(self, agent: str, req: signer_pb2.PaymentIntent) -> Attempt:
        return sign(self.signer_of(agent), agent, req)

    def open_session(self, agent: str, budget: str = "5000.00") -> str:
        task = f"kill switch test task for {agent}"
        return open_session(self.planner, agent, budget, task=task, timeout=30)

    def freeze(
        self, scope: str, target: str = "", reason: str = "test"
    ) -> control_pb2.FreezeResponse:
        resp: control_pb2.FreezeResponse = self.control().Freeze(
            control_pb2.FreezeRequest(scope=SCOPES[scope], target=target, reason=reason),
            timeout=30,
        )
        return resp

    def unfreeze(self, scope: str, target: str = "", reason: str = "all clear") -> bool:
        return bool(
            self.control()
            .Unfreeze(
                control_pb2.UnfreezeRequest(scope=SCOPES[scope], target=target, reason=reason),
                timeout=30,
            )
            .removed
        )

    def freezes(self) -> list[control_pb2.FreezeRecord]:
        return list(
            self.control().ListFreezes(control_pb2.ListFreezesRequest(), timeout=30).freezes
        )


@contextmanager
def running(config: Path, pki: Pki) -> Iterator[ServedApi]:
    with serve(config) as srv, ExitStack() as stack:
        yield ServedApi(srv, pki, stack)


def rpc_error(call: Callable[[], object]) -> tuple[str, str | None]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    failure: Any = err.value  # a grpc.Call as well
    return failure.code().name, reason_of(failure)


# -- the store, read through a store of the test's own ----------------------------------------


def stored_jws(stores: Stores, db: Path, decision_ids: list[str]) -> dict[str, str | None]:
    """The JWS the store named by ``db`` holds for each decision (each must be recorded)."""
    store = stores.open(db)
    try:
        found = {i: store.get_decision(i) for i in decision_ids}
    finally:
        store.close()
    assert all(d is not None for d in found.values()), found
    return {i: d.jws for i, d in found.items() if d is not None}


def actions(records: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [r for r in records if r["action"] == action]


def unverified_payload(compact: str) -> bytes:
    """The payload part of a compact JWS, decoded without checking the signature."""
    part = compact.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# -- metrics --------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(srv: ServeProcess) -> int:
    for line in srv.output:
        if line.startswith("paywarden: serving on "):
            found = re.search(r"metrics 127\.0\.0\.1:(\d+)\)", line)
            assert found, line
            return int(found.group(1))
    raise AssertionError(f"no readiness line in {srv.output!r}")


def scrape(srv: ServeProcess) -> Samples:
    url = f"http://127.0.0.1:{metrics_port(srv)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode("utf-8")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def metric(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def poll(
    fetch: Callable[[], Any], done: Callable[[Any], bool], what: str, timeout: float = 20.0
) -> Any:
    """Bounded polling for something the server does asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if done(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {got!r} after {timeout} s")
        threading.Event().wait(0.1)


# -- 1, 2: 20 agents signing in a loop while an operator freezes a scope ---------------------


class Fleet:
    """One thread per agent, each with its own channel, cycling over its sessions and keys."""

    def __init__(
        self, api: ServedApi, agents: tuple[str, ...], sessions_per_agent: int = 2
    ) -> None:
        self.api = api
        self.agents = agents
        self.sessions = {
            a: [api.open_session(a) for _ in range(sessions_per_agent)] for a in agents
        }
        self.combos = {a: [(s, k) for s in self.sessions[a] for k in KEYS] for a in agents}
        self.attempts: dict[str, list[Attempt]] = {a: [] for a in agents}
        self.finished: set[str] = set()
        self.cond = threading.Condition()
        self.freeze_returned = threading.Event()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(a,), daemon=True) for a in agents]

    def _run(self, agent: str) -> None:
        try:
            with self.api.pki.channel(self.api.srv.addr, "agent", agent) as ch:
                stub = signer_pb2_grpc.SignerStub(ch)
                combos = self.combos[agent]
                for i in range(MAX_ITERATIONS):
                    if self.stop.is_set():
                        break
                    session_id, key_id = combos[i % len(combos)]
                    after = self.freeze_returned.is_set()
                    attempt = sign(
                        stub, agent, intent(session_id, key_id=key_id, payee=f"payee-{agent}")
                    )
                    attempt.after_freeze = after
                    with self.cond:
                        self.attempts[agent].append(attempt)
                        self.cond.notify_all()
        finally:
            with self.cond:
                self.finished.add(agent)
                self.cond.notify_all()

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads)

    def wait_each(self, count: Callable[[list[Attempt]], int], at_least: int, what: str) -> None:
        def ready() -> bool:
            return all(
                count(self.attempts[a]) >= at_least or a in self.finished for a in self.agents
            )

        with self.cond:
            assert self.cond.wait_for(ready, timeout=60), what
        short = {a: count(v) for a, v in self.attempts.items() if count(v) < at_least}
        assert not short, f"{what}: {short}"


Scope = Callable[[str, str, str], bool]  # (agent, session_id, key_id) -> in the frozen scope


def pick_scope(scope: str, fleet: Fleet) -> tuple[str, Scope]:
    if scope == "global":
        return "", lambda agent, session_id, key_id: True
    if scope == "agent":
        return "fleet-0", lambda agent, session_id, key_id: agent == "fleet-0"
    if scope == "session":
        target = fleet.sessions["fleet-1"][0]
        return target, lambda agent, session_id, key_id: session_id == target
    assert scope == "key"
    return "payments.v1", lambda agent, session_id, key_id: key_id == "payments.v1"


@pytest.mark.parametrize("scope", ["global", "agent", "session", "key"])
def test_freeze_stops_every_later_signature_while_20_agents_sign(
    scope: str, tmp_path: Path, token: TestToken, pki: Pki, fleet: tuple[str, ...], stores: Stores
) -> None:
    config = make_config(tmp_path, token, pki, stores)
    reason = f"incident: freeze {scope} now"
    with running(config, pki) as api:
        crew = Fleet(api, fleet)
        target, in_scope = pick_scope(scope, crew)
        crew.start()
        try:
            # every agent is signing before the operator pulls the switch
            crew.wait_each(lambda xs: sum(a.signed for a in xs), 2, "signatures before the freeze")
            frozen = api.freeze(scope, target, reason)
            crew.freeze_returned.set()
            # every agent tries each of its sessions and keys after the freeze returned
            crew.wait_each(lambda xs: sum(a.after_freeze for a in xs), 4, "calls after the freeze")
        finally:
            crew.join()
        while_frozen = scrape(api.srv)
        listed = api.freezes()
        assert api.unfreeze(scope, target)
        assert api.freezes() == []
        # service is back: one in-scope request per agent signs again
        again = []
        for agent in fleet:
            for session_id, key_id in crew.combos[agent]:
                if in_scope(agent, session_id, key_id):
                    again.append(api.attempt(agent, intent(session_id, key_id=key_id)))
                    break
        after_unfreeze = scrape(api.srv)

    # the freeze as the operator set it
    assert frozen.created
    assert (frozen.freeze.scope, frozen.freeze.target) == (SCOPES[scope], target)
    assert frozen.freeze.actor == f"operator/{OPERATOR}"
    assert frozen.freeze.reason == reason
    assert [(f.scope, f.target, f.actor) for f in listed] == [
        (SCOPES[scope], target, f"operator/{OPERATOR}")
    ]

    # what the clients saw
    attempts = [a for agent in fleet for a in crew.attempts[agent]]
    assert len(attempts) <= MAX_ITERATIONS * len(fleet)
    odd = [a for a in attempts if not (a.signed or a.frozen)]
    assert odd == [], "only signatures and FROZEN refusals are expected"
    late = [a for a in attempts if a.after_freeze]
    late_in = [a for a in late if in_scope(a.agent, a.session_id, a.key_id)]
    late_out = [a for a in late if not in_scope(a.agent, a.session_id, a.key_id)]
    assert late_in, "some requests in the frozen scope came after the freeze"
    assert all(a.frozen and not a.jws and not a.decision_id for a in late_in), [
        a for a in late_in if not a.frozen
    ]
    for a in late_in:
        # the agent learns the reason code only: not the scope, the operator or the reason
        assert a.details == "[FROZEN] signing is frozen for this request"
        assert reason not in a.details
    assert all(a.signed for a in late_out), [a for a in late_out if not a.signed]
    if scope != "global":
        assert late_out, "the other scopes kept signing"
    assert again and all(a.signed for a in again), again

    # what the audit log proves
    db = tmp_path / "state.db"
    records = stores.audit_log(db)
    by_seq = {r["seq"]: r for r in records}
    (set_rec,) = actions(records, "freeze.set")
    (clear_rec,) = actions(records, "freeze.clear")
    assert (set_rec["scope"], set_rec["target"], set_rec["reason"]) == (scope, target, reason)
    assert set_rec["actor"] == {"role": "operator", "id": OPERATOR}
    f_set, f_clear = set_rec["seq"], clear_rec["seq"]
    assert f_set < f_clear

    decisions = actions(records, "sign.decision")
    by_decision = {r["decision"]["id"]: r for r in decisions}
    assert {r["decision"]["outcome"] for r in decisions} == {"allow"}
    escaped = [
        r
        for r in decisions
        if f_set < r["seq"] < f_clear
        and in_scope(r["actor"]["id"], r["decision"]["session_id"], r["decision"]["key_id"])
    ]
    assert escaped == [], "an allow decision in the frozen scope was recorded after the freeze"
    if scope != "global":
        assert any(f_set < r["seq"] < f_clear for r in decisions), "other scopes kept deciding"

    # every JWS a client received belongs to a decision recorded before the freeze record
    jws_in_store = stored_jws(stores, db, [a.decision_id for a in attempts if a.decision_id])
    signed = [a for a in attempts if a.signed]
    for a in signed:
        rec = by_decision[a.decision_id]
        assert rec["seq"] == a.audit_seq
        assert rec["actor"]["id"] == a.agent
        assert unverified_payload(a.jws) == a.payload == rec["payload"].encode()
        assert json.loads(a.payload)["jti"] == a.decision_id
        assert jws_in_store[a.decision_id] == a.jws
        if in_scope(a.agent, a.session_id, a.key_id):
            assert rec["seq"] < f_set, (a, rec["seq"], f_set)
    # … and every allowed decision of the loop reached a client (none signed unseen):
    # signed, or allowed before the freeze and its signature discarded (FROZEN)
    discarded = [a for a in attempts if a.frozen and a.decision_id]
    for a in discarded:
        assert by_decision[a.decision_id]["seq"] < f_set and not jws_in_store[a.decision_id]
    assert {r["decision"]["id"] for r in decisions if r["seq"] < f_clear} == {
        a.decision_id for a in signed + discarded
    }
    for a in again:
        assert by_decision[a.decision_id]["seq"] > f_clear

    # every FROZEN answer without a decision is in the log, after the freeze and before
    # the clear: the first of each agent as a sign.refused record, the repeats counted
    # in its summary (a discarded signature's record is its decision)
    refused = [r for r in actions(records, "sign.refused") if r["reason"] == FROZEN]
    summaries = [r for r in actions(records, "sign.refused.summary") if r["reason"] == FROZEN]
    frozen_answers = [a for a in attempts if a.frozen and not a.decision_id]
    assert len(refused) + sum(s["count"] for s in summaries) == len(frozen_answers)
    assert {s["first_seq"] for s in summaries} <= {r["seq"] for r in refused}
    recorded = [a for a in frozen_answers if a.audit_seq is not None]
    assert len(recorded) == len(refused)
    for a in recorded:
        assert a.audit_seq is not None
        rec = by_seq[a.audit_seq]
        assert rec["action"] == "sign.refused" and rec["reason"] == FROZEN
        assert rec["actor"]["id"] == a.agent
        assert rec["untrusted"]["request"]["nonce"] == a.nonce
        assert f_set < rec["seq"] < f_clear

    # the metrics saw it too
    assert metric(while_frozen, "paywarden_freezes_total", scope=scope, source="operator") == 1
    assert metric(while_frozen, "paywarden_frozen_scopes", scope=scope) == 1
    assert metric(after_unfreeze, "paywarden_frozen_scopes", scope=scope) == 0
    refused_frozen = metric(
        while_frozen, "paywarden_sign_requests_total", outcome="refused", reason=FROZEN
    )
    assert refused_frozen == len(frozen_answers) + len(discarded)
    hsm_signed = len(signed) + len(discarded)
    assert metric(while_frozen, "paywarden_hsm_sign_latency_seconds_count") == hsm_signed
    tti = metric(while_frozen, "paywarden_time_to_intervention_seconds")
    assert tti is not None and 0 <= tti < 5


# -- 3: a freeze survives a restart; paywarden ctl lists and lifts it ----------------------


def test_freeze_survives_restart_and_ctl_lists_and_lifts_it(
    tmp_path: Path, token: TestToken, pki: Pki, stores: Stores
) -> None:
    config = make_config(tmp_path, token, pki, stores)
    with running(config, pki) as api:
        sid = api.open_session("agent-1")
        first_req = intent(sid)
        first = api.attempt("agent-1", first_req)
        assert first.signed
        out = ctl(api.srv, pki, "freeze", "global", "--reason", "incident 42")
        assert out.returncode == 0, out.stderr
        assert "frozen (incident 42)" in out.stdout and "already" not in out.stdout
        out = ctl(api.srv, pki, "freeze", "key", "payments.v2", "--reason", "rotating v2")
        assert out.returncode == 0, out.stderr
        assert "payments.v2: frozen (rotating v2)" in out.stdout
        assert api.attempt("agent-1", intent(sid)).frozen

    with running(config, pki) as api:
        gauges = scrape(api.srv)
        assert metric(gauges, "paywarden_frozen_scopes", scope="global") == 1
        assert metric(gauges, "paywarden_frozen_scopes", scope="key") == 1
        assert metric(gauges, "paywarden_frozen_scopes", scope="agent") == 0
        still = api.attempt("agent-1", intent(sid))
        assert still.frozen and still.details == "[FROZEN] signing is frozen for this request"
        assert "incident 42" not in still.details  # the agent never sees the reason
        # a retry of a request signed before the freeze is refused too
        retry = api.attempt("agent-1", first_req)
        assert retry.frozen and not retry.jws

        out = ctl(api.srv, pki, "freezes")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 2, out.stdout
        (g,) = [ln for ln in lines if ln.startswith("global ")]
        (k,) = [ln for ln in lines if ln.startswith("key payments.v2 ")]
        assert f"by operator/{OPERATOR}" in g and g.endswith("incident 42")
        assert f"by operator/{OPERATOR}" in k and k.endswith("rotating v2")

        out = ctl(api.srv, pki, "freeze", "global", "--reason", "again")
        assert out.returncode == 0 and "already frozen (incident 42)" in out.stdout

        out = ctl(api.srv, pki, "unfreeze", "global", "--reason", "incident 42 resolved")
        assert out.returncode == 0 and "unfrozen" in out.stdout, out.stdout + out.stderr
        assert api.attempt("agent-1", intent(sid, key_id="payments.v1")).signed
        v2 = api.attempt("agent-1", intent(sid, key_id="payments.v2"))
        assert v2.frozen and v2.details == "[FROZEN] signing is frozen for this request"

        out = ctl(api.srv, pki, "unfreeze", "key", "payments.v2", "--reason", "rotated")
        assert out.returncode == 0 and "unfrozen" in out.stdout
        assert api.attempt("agent-1", intent(sid, key_id="payments.v2")).signed
        out = ctl(api.srv, pki, "freezes")
        assert out.returncode == 0 and out.stdout.strip() == "nothing is frozen"
        out = ctl(api.srv, pki, "unfreeze", "global", "--reason", "nothing to lift")
        assert out.returncode == 0 and "was not frozen" in out.stdout

    records = stores.audit_log(tmp_path / "state.db")
    assert [(r["scope"], r["target"]) for r in actions(records, "freeze.set")] == [
        ("global", ""), ("key", "payments.v2")
    ]  # fmt: skip
    assert [(r["scope"], r["target"]) for r in actions(records, "freeze.clear")] == [
        ("global", ""), ("key", "payments.v2")
    ]  # fmt: skip


# -- 4: an approved, not yet signed payment is frozen too ----------------------------------


def test_pending_and_approved_payments_are_frozen_until_unfreeze(
    tmp_path: Path, token: TestToken, pki: Pki, stores: Stores
) -> None:
    config = make_config(tmp_path, token, pki, stores)
    db = tmp_path / "state.db"
    with running(config, pki) as api:
        sid = api.open_session("agent-1")
        held_req = intent(sid, amount="600.00", payee="big-vendor")
        held = api.attempt("agent-1", held_req)
        assert (held.code, held.status) == ("OK", signer_pb2.PENDING_APPROVAL)
        waiting_req = intent(sid, amount="700.00", payee="big-vendor")
        waiting = api.attempt("agent-1", waiting_req)
        assert (waiting.code, waiting.status) == ("OK", signer_pb2.PENDING_APPROVAL)
        approved = (
            api.approvals("approver", "approver-1")
            .Approve(approvals_pb2.ApproveRequest(approval_id=held.approval_id), timeout=30)
            .approval
        )
        assert approved.state == "approved"
        hsm_before = metric(scrape(api.srv), "paywarden_hsm_sign_latency_seconds_count")

        assert api.freeze("global", reason="stop held payments").created
        for req in (held_req, waiting_req):
            retry = api.attempt("agent-1", req)
            assert retry.frozen and not retry.jws, retry
        # nothing was signed: no JWS in the store, no HSM signature
        assert stored_jws(stores, db, [held.decision_id])[held.decision_id] is None
        assert metric(scrape(api.srv), "paywarden_hsm_sign_latency_seconds_count") == hsm_before

        assert api.unfreeze("global")
        done = api.attempt("agent-1", held_req)
        assert done.signed and done.replayed and done.decision_id == held.decision_id
        assert unverified_payload(done.jws) == held.payload
        still = api.attempt("agent-1", waiting_req)
        assert (still.code, still.status, still.jws) == ("OK", signer_pb2.PENDING_APPROVAL, "")

    records = stores.audit_log(db)
    (f_set,) = [r["seq"] for r in actions(records, "freeze.set")]
    (f_clear,) = [r["seq"] for r in actions(records, "freeze.clear")]
    refused = [r for r in actions(records, "sign.refused") if r["reason"] == FROZEN]
    # the first refusal in full, the repeat within the window counted in a summary
    assert [r["untrusted"]["request"]["nonce"] for r in refused] == [held_req.nonce]
    assert all(f_set < r["seq"] < f_clear for r in refused)
    (summary,) = [r for r in actions(records, "sign.refused.summary") if r["reason"] == FROZEN]
    assert (summary["count"], summary["first_seq"]) == (1, refused[0]["seq"])
    signed_retry = [
        r for r in actions(records, "sign.retry") if r["decision_id"] == held.decision_id
    ]
    assert len(signed_retry) == 1 and signed_retry[0]["seq"] > f_clear


# -- 5: who may do what ------------------------------------------------------------------------


def test_operators_cannot_sign_or_approve_and_others_cannot_freeze(
    tmp_path: Path, token: TestToken, pki: Pki, stores: Stores
) -> None:
    config = make_config(tmp_path, token, pki, stores)
    with running(config, pki) as api:
        sid = api.open_session("agent-1")
        held = api.attempt("agent-1", intent(sid, amount="600.00"))
        assert held.status == signer_pb2.PENDING_APPROVAL

        # the operator cannot sign, approve, deny or list approvals
        op = api.channel("operator", OPERATOR)
        op_sign = sign(signer_pb2_grpc.SignerStub(op), OPERATOR, intent(sid))
        assert (op_sign.code, op_sign.reason) == (PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
        op_approvals = api.approvals("operator", OPERATOR)
        for call in (
            lambda: op_approvals.Approve(
                approvals_pb2.ApproveRequest(approval_id=held.approval_id), timeout=30
            ),
            lambda: op_approvals.Deny(
                approvals_pb2.DenyRequest(approval_id=held.approval_id), timeout=30
            ),
            lambda: op_approvals.ListPending(approvals_pb2.ListPendingRequest(), timeout=30),
        ):
            assert rpc_error(call) == (PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
        pending = (
            api.approvals("approver", "approver-2")
            .GetApproval(approvals_pb2.GetApprovalRequest(approval_id=held.approval_id), timeout=30)
            .approval
        )
        assert (pending.state, list(pending.approved_by), pending.denied_by) == ("pending", [], "")

        # the operator freezes agent-2; nobody else may freeze, unfreeze or list
        assert api.freeze("agent", "agent-2", reason="operator only").created
        for role, principal in (
            ("agent", "agent-1"),
            ("agent", "agent-2"),
            ("planner", "planner-1"),
            ("approver", "approver-1"),
        ):
            stub = api.control(role, principal)
            for call in (
                lambda stub=stub: stub.Freeze(
                    control_pb2.FreezeRequest(scope=control_pb2.GLOBAL, reason="x"), timeout=30
                ),
                lambda stub=stub: stub.Unfreeze(
                    control_pb2.UnfreezeRequest(
                        scope=control_pb2.AGENT, target="agent-2", reason="x"
                    ),
                    timeout=30,
                ),
                lambda stub=stub: stub.ListFreezes(control_pb2.ListFreezesRequest(), timeout=30),
            ):
                assert rpc_error(call) == (PERMISSION_DENIED, "ROLE_NOT_ALLOWED"), (role, principal)
        assert [(f.scope, f.target) for f in api.freezes()] == [(control_pb2.AGENT, "agent-2")]
        sid2 = api.open_session("agent-2")
        assert api.attempt("agent-2", intent(sid2)).frozen
        assert api.attempt("agent-1", intent(sid)).signed

    records = stores.audit_log(tmp_path / "state.db")
    assert len(actions(records, "freeze.set")) == 1
    assert actions(records, "freeze.clear") == []
    assert not [r for r in records if r["action"].startswith("approval.")]


# -- 6: the circuit breaker ------------------------------------------------------------------


def breaker_config(tmp_path: Path, token: TestToken, pki: Pki, stores: Stores) -> Path:
    return write_config(
        tmp_path,
        token,
        pki,
        stores=stores,
        packs={
            "rejections.toml": breaker_pack(
                "brk-rejections", "agent-1", ONLY_ACME, "max_rejections = 3"
            ),
            "payees.toml": breaker_pack("brk-payees", "agent-2", ANYONE, "max_payees = 2"),
            "spend.toml": breaker_pack(
                "brk-spend", "fleet-0", ANYONE, 'max_spend = { USD = "10.00" }'
            ),
            "rate.toml": breaker_pack(
                "brk-rate", "fleet-1", ONLY_ACME, "max_rejection_rate = 0.5\nmin_decisions = 4"
            ),
        },
    )


def trip_rejection_breaker(api: ServedApi) -> tuple[str, list[Attempt]]:
    """agent-1: three rejections, a payment, a fourth rejection (the breaker trips)."""
    sid = api.open_session("agent-1")
    seen = [api.attempt("agent-1", intent(sid, payee="unknown-vendor")) for _ in range(3)]
    seen.append(api.attempt("agent-1", intent(sid)))  # three rejections: not frozen yet
    seen.append(api.attempt("agent-1", intent(sid, payee="unknown-vendor")))  # the fourth
    for a in seen[:3] + seen[4:]:
        assert (a.code, a.reason) == (PERMISSION_DENIED, "PAYEE_NOT_ALLOWED"), a
    assert seen[3].signed, seen[3]
    return sid, seen


def test_breaker_freezes_an_agent_after_the_fourth_rejection(
    tmp_path: Path, token: TestToken, pki: Pki, fleet: tuple[str, ...], stores: Stores
) -> None:
    config = breaker_config(tmp_path, token, pki, stores)
    with running(config, pki) as api:
        sid, seen = trip_rejection_breaker(api)
        blocked = api.attempt("agent-1", intent(sid))
        assert blocked.frozen and not blocked.jws
        assert blocked.details == "[FROZEN] signing is frozen for this request"
        # scraped before anyone lists the freezes
        samples = scrape(api.srv)
        assert metric(samples, "paywarden_freezes_total", scope="agent", source="breaker") == 1
        assert metric(samples, "paywarden_freezes_total", scope="agent", source="operator") is None
        frozen_gauge = metric(samples, "paywarden_frozen_scopes", scope="agent")

        (listed,) = api.freezes()
        assert (listed.scope, listed.target, listed.actor) == (
            control_pb2.AGENT, "agent-1", "breaker"
        )  # fmt: skip
        assert listed.reason == "circuit breaker: 4 rejections in 3600 s (more than 3)"
        # the agent cannot lift it, and it holds
        agent_ctl = api.control("agent", "agent-1")
        assert rpc_error(
            lambda: agent_ctl.Unfreeze(
                control_pb2.UnfreezeRequest(scope=control_pb2.AGENT, target="agent-1", reason="x"),
                timeout=30,
            )
        ) == (PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
        assert api.attempt("agent-1", intent(sid)).frozen

    records = stores.audit_log(tmp_path / "state.db")
    (trip,) = actions(records, "breaker.freeze")
    assert (trip["scope"], trip["target"], trip["pack_id"]) == (
        "agent",
        "agent-1",
        "brk-rejections",
    )
    assert trip["actor"] == {"role": "system", "id": "paywarden"}
    assert trip["reason"] == listed.reason
    # recorded in the deciding transaction of the fourth rejection
    fourth = seen[4]
    assert by_id(records, fourth.decision_id)["seq"] == fourth.audit_seq == trip["seq"] - 1
    assert not [
        r
        for r in actions(records, "sign.decision")
        if r["seq"] > trip["seq"] and r["actor"]["id"] == "agent-1"
    ]
    # the gauge of freezes in force counts the breaker's freeze (scraped before
    # anything called ListFreezes, which is what refreshes it today)
    assert frozen_gauge == 1


def by_id(records: list[dict[str, Any]], decision_id: str) -> dict[str, Any]:
    (rec,) = [r for r in actions(records, "sign.decision") if r["decision"]["id"] == decision_id]
    return rec


def test_breaker_freeze_is_lifted_only_by_an_operator_and_stays_lifted(
    tmp_path: Path, token: TestToken, pki: Pki, fleet: tuple[str, ...], stores: Stores
) -> None:
    config = breaker_config(tmp_path, token, pki, stores)
    with running(config, pki) as api:
        sid, _ = trip_rejection_breaker(api)
        assert api.attempt("agent-1", intent(sid)).frozen
        assert api.unfreeze("agent", "agent-1", reason="reviewed: the agent is fine")
        assert api.freezes() == []
        # the operator's unfreeze restores service: good payments sign, one after another
        after = [api.attempt("agent-1", intent(sid)) for _ in range(3)]
        assert [a.signed for a in after] == [True, True, True], after
        assert api.freezes() == []
        samples = scrape(api.srv)
        assert metric(samples, "paywarden_freezes_total", scope="agent", source="breaker") == 1


def test_payee_spend_and_rate_breakers_trip(
    tmp_path: Path, token: TestToken, pki: Pki, fleet: tuple[str, ...], stores: Stores
) -> None:
    config = breaker_config(tmp_path, token, pki, stores)
    with running(config, pki) as api:
        # agent-2: at most 2 distinct payees in the window
        s2 = api.open_session("agent-2")
        for payee in ("p-one", "p-two", "p-one"):
            assert api.attempt("agent-2", intent(s2, payee=payee)).signed
        # the third payee would trip it: that payment is denied, not signed
        tripping = api.attempt("agent-2", intent(s2, payee="p-three"))
        assert not tripping.signed and (tripping.code, tripping.reason) == (
            PERMISSION_DENIED,
            "BREAKER_TRIPPED",
        )
        blocked = api.attempt("agent-2", intent(s2, payee="p-one"))
        assert blocked.frozen
        assert blocked.details == "[FROZEN] signing is frozen for this request"

        # fleet-0: at most USD 10.00 in the window
        s0 = api.open_session("fleet-0")
        assert api.attempt("fleet-0", intent(s0, amount="6.00")).signed
        assert api.attempt("fleet-0", intent(s0, amount="4.00")).signed  # exactly 10.00: fine
        tripping = api.attempt("fleet-0", intent(s0, amount="999.00"))  # would pass 10.00
        assert not tripping.signed and tripping.reason == "BREAKER_TRIPPED"
        blocked = api.attempt("fleet-0", intent(s0, amount="0.01"))
        assert blocked.frozen

        # fleet-1: rejection rate above 0.5 once there are at least 4 decisions
        s1 = api.open_session("fleet-1")
        bad = [api.attempt("fleet-1", intent(s1, payee="unknown-vendor")) for _ in range(2)]
        good = api.attempt("fleet-1", intent(s1))  # 2 of 3 rejected, but fewer than 4 decisions
        bad.append(api.attempt("fleet-1", intent(s1, payee="unknown-vendor")))  # 3 of 4: trips
        assert [(a.code, a.reason) for a in bad] == [(PERMISSION_DENIED, "PAYEE_NOT_ALLOWED")] * 3
        assert good.signed
        blocked = api.attempt("fleet-1", intent(s1))
        assert blocked.frozen
        assert blocked.details == "[FROZEN] signing is frozen for this request"

        samples = scrape(api.srv)
        assert metric(samples, "paywarden_freezes_total", scope="agent", source="breaker") == 3
        listed = api.freezes()
        assert sorted((f.target, f.actor) for f in listed) == [
            ("agent-2", "breaker"), ("fleet-0", "breaker"), ("fleet-1", "breaker")
        ]  # fmt: skip
        # the others are not frozen
        s_other = api.open_session("agent-1")
        assert api.attempt("agent-1", intent(s_other)).signed

    trips = actions(stores.audit_log(tmp_path / "state.db"), "breaker.freeze")
    assert sorted((t["target"], t["pack_id"]) for t in trips) == [
        ("agent-2", "brk-payees"), ("fleet-0", "brk-spend"), ("fleet-1", "brk-rate")
    ]  # fmt: skip


# -- 7: the metrics after a known sequence of calls ------------------------------------------


def test_metrics_after_a_known_sequence(
    tmp_path: Path, token: TestToken, pki: Pki, stores: Stores
) -> None:
    config = make_config(tmp_path, token, pki, stores)
    with running(config, pki) as api:
        start = scrape(api.srv)
        assert metric(start, "paywarden_hsm_available") == 1
        assert metric(start, "paywarden_spend_total", asset="USD") is None
        s1 = api.open_session("agent-1")
        s2 = api.open_session("agent-1")
        s3 = api.open_session("agent-2")
        assert api.attempt("agent-1", intent(s1, amount="10.00", payee="payee-a")).signed
        assert api.attempt("agent-1", intent(s1, amount="20.00", payee="payee-b")).signed
        assert api.attempt("agent-1", intent(s2, amount="30.00", payee="payee-x")).signed
        during = scrape(api.srv)
        assert metric(during, "paywarden_spend_total", asset="USD") == 60.0
        assert metric(during, "paywarden_hsm_sign_latency_seconds_count") == 3
        assert metric(during, "paywarden_sign_requests_total", outcome="signed", reason="OK") == 3

        denied = api.attempt("agent-1", intent(s1, amount="5.00", payee="evil-corp"))
        assert (denied.code, denied.reason) == (PERMISSION_DENIED, "PAYEE_DENYLISTED")
        held_req = intent(s1, amount="600.00", payee="payee-c")
        held = api.attempt("agent-1", held_req)
        assert held.status == signer_pb2.PENDING_APPROVAL
        approver = api.approvals("approver", "approver-1")
        approver.Approve(approvals_pb2.ApproveRequest(approval_id=held.approval_id), timeout=30)
        assert api.attempt("agent-1", held_req).signed

        refused_by_human = api.attempt("agent-2", intent(s3, amount="700.00", payee="payee-e"))
        assert refused_by_human.status == signer_pb2.PENDING_APPROVAL
        approver.Deny(
            approvals_pb2.DenyRequest(approval_id=refused_by_human.approval_id), timeout=30
        )
        left = api.attempt("agent-2", intent(s3, amount="800.00", payee="payee-d"))
        assert left.status == signer_pb2.PENDING_APPROVAL
        assert api.freeze("agent", "agent-2", reason="metrics test").created
        assert api.attempt("agent-2", intent(s3, amount="1.00")).frozen

        # the health watcher refreshes the pending gauge every 2 s
        samples = poll(
            lambda: scrape(api.srv),
            lambda s: metric(s, "paywarden_pending_approvals") == 1,
            "paywarden_pending_approvals",
        )

    def m(name: str, **labels: str) -> float | None:
        return metric(samples, name, **labels)

    requests = {
        (dict(k[1])["outcome"], dict(k[1])["reason"]): v
        for k, v in samples.items()
        if k[0] == "paywarden_sign_requests_total"
    }
    assert requests == {
        ("signed", "OK"): 4,
        ("pending_approval", "OK"): 3,
        ("refused", "PAYEE_DENYLISTED"): 1,
        ("refused", FROZEN): 1,
    }
    decisions = {
        (dict(k[1])["outcome"], dict(k[1])["reason"]): v
        for k, v in samples.items()
        if k[0] == "paywarden_decisions_total"
    }
    assert decisions == {
        ("allow", "ALLOWED"): 3,
        ("deny", "PAYEE_DENYLISTED"): 1,
        ("pending", "AMOUNT_NEEDS_APPROVAL"): 3,
    }
    assert m("paywarden_sign_latency_seconds_count") == 9
    assert m("paywarden_hsm_sign_latency_seconds_count") == 4
    assert m("paywarden_spend_total", asset="USD") == pytest.approx(660.0)
    # sessions that spent: s1 = 10 + 20 + 600, s2 = 30
    assert m("paywarden_average_spend_per_task", asset="USD") == pytest.approx(330.0)
    # agent-1's last decided payment (payee-c in s1): a, b, c in s1; a, b, x, c today
    assert m("paywarden_recipient_diversity", agent="agent-1", window="session") == 3
    assert m("paywarden_recipient_diversity", agent="agent-1", window="day") == 4
    # agent-2's: payee-d (the denied payee-e was released)
    assert m("paywarden_recipient_diversity", agent="agent-2", window="session") == 1
    assert m("paywarden_recipient_diversity", agent="agent-2", window="day") == 1
    assert m("paywarden_approvals_total", event="requested") == 3
    assert m("paywarden_approvals_total", event="approved") == 1
    assert m("paywarden_approvals_total", event="denied") == 1
    assert m("paywarden_override_frequency") == pytest.approx(0.5)
    assert m("paywarden_rejection_rate") == pytest.approx(2 / 9)
    assert m("paywarden_freezes_total", scope="agent", source="operator") == 1
    assert m("paywarden_frozen_scopes", scope="agent") == 1
    for scope in ("global", "session", "key"):
        assert m("paywarden_frozen_scopes", scope=scope) == 0
    # no signature in agent-2's scope since its freeze
    assert m("paywarden_time_to_intervention_seconds") == 0
    assert m("paywarden_pending_approvals") == 1
    assert m("paywarden_hsm_available") == 1


def test_time_to_intervention_ignores_signatures_after_the_unfreeze(
    tmp_path: Path, token: TestToken, pki: Pki, stores: Stores
) -> None:
    config = make_config(tmp_path, token, pki, stores)
    with running(config, pki) as api:
        sid = api.open_session("agent-1")
        assert api.attempt("agent-1", intent(sid)).signed
        assert api.freeze("agent", "agent-1").created
        assert api.attempt("agent-1", intent(sid)).frozen
        assert metric(scrape(api.srv), "paywarden_time_to_intervention_seconds") == 0
        assert api.unfreeze("agent", "agent-1")
        assert api.attempt("agent-1", intent(sid)).signed
        # the freeze stopped every signature at once: one made after it was lifted
        # is not a signature that escaped it
        assert metric(scrape(api.srv), "paywarden_time_to_intervention_seconds") == 0


# -- 8: health follows the HSM ------------------------------------------------------------------


def test_health_is_not_serving_while_the_hsm_is_unusable(tmp_path: Path, pki: Pki) -> None:
    tok: TestToken = make_token(tmp_path / "hsm", label="health")
    config = write_config(tmp_path / "cfg", tok, pki)
    tokens, away = tok.base / "tokens", tok.base / "tokens.away"
    with running(config, pki) as api:
        health = health_pb2_grpc.HealthStub(api.channel("operator", OPERATOR))

        def status(service: str = "") -> int:
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            return int(resp.status)

        def state() -> tuple[int, int, float | None]:
            return (
                status(),
                status("paywarden.v1.Signer"),
                metric(scrape(api.srv), "paywarden_hsm_available"),
            )

        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,
        )
        assert state() == (serving, serving, 1)
        shutil.move(tokens, away)
        tokens.mkdir()
        try:
            poll(state, lambda s: s == (not_serving, not_serving, 0), "health with the HSM gone")
            sid = api.open_session("agent-1")
            down = api.attempt("agent-1", intent(sid))
            assert (down.code, down.reason) == ("UNAVAILABLE", "HSM_UNAVAILABLE")
        finally:
            shutil.rmtree(tokens)
            shutil.move(away, tokens)
        poll(state, lambda s: s == (serving, serving, 1), "health with the HSM back")
        assert api.attempt("agent-1", intent(sid)).signed

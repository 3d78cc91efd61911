"""Attack: refused Signs fill the audit log and hold the write lock.

Each refused Sign (a frozen agent, bad input...) appended a full audit record,
with up to 2 KB of the agent's purpose text and an fsync under the write lock:
1,000 refused calls from a frozen agent added 1,000 records. Now a frozen agent
(or key, or the whole signer) is refused before its request is read, a
principal refused too often is refused (RATE_LIMITED) before its request is
read, repeats of a refusal within a window are one counted summary record, and
the circuit breaker counts refusals, not only decisions.

Every test runs the real ``paywarden serve`` on its own store and talks to it
over mutual TLS; the audit log is read from the SQLite file and checked with
``paywarden audit verify``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from paywarden.policy.vocabulary import FreezeScope, FreezeSource
from paywarden.signer.core.refusals import FreezeView, RefusalLog
from paywarden.signer.store.records import Freeze
from paywarden.v1 import (
    control_pb2,
)

from tests.attacks.kit import AGENT, assert_audit_verifies, audit_log
from tests.helpers import (
    OPEN_PACK,
    Pki,
    TestToken,
    write_config,
)
from tests.support.clients import running_api
from tests.support.intents import payment_request
from tests.support.refusals import outcome
from tests.support.sessions import open_session

FLOOD = 1000
TIMEOUT = 30

AGENT1_PACK = OPEN_PACK.replace('agents = ["agent-1", "agent-2"]', 'agents = ["agent-1"]')
BREAKER_PACK = """
id = "breaker-refusals"
version = 1
agents = ["agent-2"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "100.00"

[payees]
allow_patterns = [".+"]
first_payment = "allow"

[breaker]
window_seconds = 3600
max_rejections = 3

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000.00" }
"""
PACKS = {"a1.toml": AGENT1_PACK, "a2.toml": BREAKER_PACK}


# What this module's agents ask to sign, unless a test says otherwise, and how an
# answer is read (one string: "SIGNED", or "CODE/REASON").
flood_request = partial(
    payment_request, payee="acme-data", amount="1.00", purpose="supplies", expires_in=120
)
flood_answer = partial(outcome, timeout=TIMEOUT)


def test_thousand_refused_signs_from_a_frozen_agent_add_a_bounded_number_of_records(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    db = tmp_path / "state.db"
    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki) as (srv, client):
        sid = open_session(client.planner, "agent-1", "100.00", timeout=TIMEOUT)
        control = client.control()
        control.Freeze(
            control_pb2.FreezeRequest(scope=control_pb2.AGENT, target="agent-1", reason="flood"),
            timeout=TIMEOUT,
        )
        before = len(audit_log(db))
        signer = client.signer_of("agent-1")
        purpose = "P" * 1024  # the longest purpose a request may carry
        bad = "1.2.3"  # malformed too: refused before it is read, so it says FROZEN
        requests = [
            flood_request(sid, amount=bad if i % 2 else "1.00", purpose=purpose)
            for i in range(FLOOD)
        ]
        with ThreadPoolExecutor(8) as pool:
            answers = Counter(pool.map(lambda r: flood_answer(signer.Sign, r), requests))
        assert answers == {"FAILED_PRECONDITION/FROZEN": FLOOD}
        during = audit_log(db)[before:]
        # an explicit small bound: the first refusal in full, the rest counted
        assert len(during) <= 2, [r["action"] for r in during]
        assert during[0]["action"] == "sign.refused"
        assert during[0]["untrusted"]["purpose"] == purpose
        pem = control.Checkpoint(control_pb2.CheckpointRequest(), timeout=TIMEOUT)
        public_key = tmp_path / "audit.pem"
        public_key.write_text(pem.audit_public_key_pem, encoding="utf-8")
    assert srv.proc.returncode == 0
    flood = [r for r in audit_log(db)[before:] if r["action"].startswith("sign.refused")]
    assert len(flood) <= 3, [r["action"] for r in flood]
    # the log still proves what happened: every one of the 1,000 refusals is counted
    full = [r for r in flood if r["action"] == "sign.refused"]
    summaries = [r for r in flood if r["action"] == "sign.refused.summary"]
    assert all(r["reason"] == "FROZEN" and r["actor"]["id"] == "agent-1" for r in flood)
    assert len(full) + sum(s["count"] for s in summaries) == FLOOD
    assert all(s["first_seq"] == full[0]["seq"] for s in summaries)
    assert_audit_verifies(db, public_key)


def test_callers_racing_the_reload_after_a_freeze_wait_for_it_rather_than_pass() -> None:
    # The flood above failed now and then: one malformed request answered
    # AMOUNT_MALFORMED, because a caller that found the view's reload in progress
    # went on with the view from before the operator's freeze.
    frozen = Freeze(FreezeScope.AGENT, "agent-1", "flood", "operator/op", FreezeSource.OPERATOR, 0)
    loading, release = threading.Event(), threading.Event()

    def load() -> list[Freeze]:
        loading.set()
        assert release.wait(30)
        return [frozen]

    view = FreezeView(load, lambda: 1, max_age=3600.0, clock=time.monotonic)
    seen: dict[str, FreezeScope | None] = {}

    def ask(who: str) -> None:
        view.refresh()
        seen[who] = view.frozen("agent-1", "payments.v1")

    reloader = threading.Thread(target=ask, args=("reloader",))
    reloader.start()
    assert loading.wait(30)  # the first caller is inside the reload
    racer = threading.Thread(target=ask, args=("racer",))
    racer.start()
    release.set()
    reloader.join(30)
    racer.join(30)
    assert seen == {"reloader": FreezeScope.AGENT, "racer": FreezeScope.AGENT}


def test_refusal_budget_refuses_before_reading_the_request(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    env = {
        "PAYWARDEN_LIMITS__REFUSAL_BURST": "5",
        "PAYWARDEN_LIMITS__REFUSAL_RATE_PER_SECOND": "0.0001",
    }
    db = tmp_path / "state.db"
    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki, env) as (_, client):
        sid1, sid2 = (
            open_session(client.planner, "agent-1", "100.00", timeout=TIMEOUT),
            open_session(client.planner, "agent-2", "100.00", timeout=TIMEOUT),
        )
        agent1, agent2 = client.signer_of("agent-1"), client.signer_of("agent-2")
        before = len(audit_log(db))
        for _ in range(3):
            assert (
                flood_answer(agent2.Sign, flood_request(sid2, amount="1.2.3"))
                == "INVALID_ARGUMENT/AMOUNT_MALFORMED"
            )
        # the budget is the caller's own: agent-1's bad requests do not spend agent-2's
        for _ in range(5):
            assert (
                flood_answer(agent1.Sign, flood_request(sid1, amount="1.2.3"))
                == "INVALID_ARGUMENT/AMOUNT_MALFORMED"
            )
        # agent-1 spent its five: even a valid request is refused before it is read
        assert flood_answer(agent1.Sign, flood_request(sid1)) == "RESOURCE_EXHAUSTED/RATE_LIMITED"
        for _ in range(200):
            assert (
                flood_answer(agent1.Sign, flood_request(sid1, amount="1.2.3"))
                == "RESOURCE_EXHAUSTED/RATE_LIMITED"
            )
        assert flood_answer(agent2.Sign, flood_request(sid2)) == "SIGNED"
        added = Counter((r["action"], r.get("reason")) for r in audit_log(db)[before:])
        assert added == {
            ("sign.refused", "AMOUNT_MALFORMED"): 2,  # one each for agent-1 and agent-2
            ("sign.refused", "RATE_LIMITED"): 1,
            ("sign.decision", None): 1,
        }


def test_breaker_with_max_rejections_trips_from_refusals_alone(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    db = tmp_path / "state.db"
    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki) as (_, client):
        sid = open_session(client.planner, "agent-2", "100.00", timeout=TIMEOUT)
        agent2 = client.signer_of("agent-2")
        # max_rejections = 3: the fourth refusal in the window trips the breaker
        for _ in range(4):
            assert (
                flood_answer(agent2.Sign, flood_request(sid, amount="1.2.3"))
                == "INVALID_ARGUMENT/AMOUNT_MALFORMED"
            )
        assert flood_answer(agent2.Sign, flood_request(sid)) == "FAILED_PRECONDITION/FROZEN"
        freezes = client.control().ListFreezes(control_pb2.ListFreezesRequest(), timeout=TIMEOUT)
        assert [(f.scope, f.target, f.actor) for f in freezes.freezes] == [
            (control_pb2.AGENT, "agent-2", "breaker")
        ]
        records = audit_log(db)
        trips = [r for r in records if r["action"] == "breaker.freeze"]
        assert len(trips) == 1 and "4 refusals" in trips[0]["reason"]
        assert not [r for r in records if r["action"] == "sign.decision"]  # no decision at all
        # an operator's unfreeze starts the breaker's window afresh
        client.control().Unfreeze(
            control_pb2.UnfreezeRequest(scope=control_pb2.AGENT, target="agent-2", reason="ok"),
            timeout=TIMEOUT,
        )
        assert flood_answer(agent2.Sign, flood_request(sid)) == "SIGNED"
        assert (
            flood_answer(agent2.Sign, flood_request(sid, amount="1.2.3"))
            == "INVALID_ARGUMENT/AMOUNT_MALFORMED"
        )
        assert flood_answer(agent2.Sign, flood_request(sid)) == "SIGNED"


def test_breaker_counts_refusals_and_denials_together(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    db = tmp_path / "state.db"
    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki) as (_, client):
        sid = open_session(client.planner, "agent-2", "100.00", timeout=TIMEOUT)
        agent2 = client.signer_of("agent-2")
        for _ in range(2):  # two refusals: no decision recorded
            assert (
                flood_answer(agent2.Sign, flood_request(sid, amount="1.2.3"))
                == "INVALID_ARGUMENT/AMOUNT_MALFORMED"
            )
        # two policy denials: 2 + 2 = 4 rejections is more than max_rejections = 3
        assert (
            flood_answer(agent2.Sign, flood_request(sid, amount="200.00"))
            == "PERMISSION_DENIED/AMOUNT_ABOVE_MAX"
        )
        assert (
            flood_answer(agent2.Sign, flood_request(sid, amount="200.00"))
            == "PERMISSION_DENIED/AMOUNT_ABOVE_MAX"
        )
        assert flood_answer(agent2.Sign, flood_request(sid)) == "FAILED_PRECONDITION/FROZEN"
        (trip,) = [r for r in audit_log(db) if r["action"] == "breaker.freeze"]
        assert "4 rejections" in trip["reason"]


def test_an_unfreeze_is_not_undone_by_refusals_counted_before_it(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    db = tmp_path / "state.db"
    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki) as (_, client):
        sid = open_session(client.planner, "agent-2", "100.00", timeout=TIMEOUT)
        agent2 = client.signer_of("agent-2")
        # max_rejections = 3: the fourth refusal trips the breaker and freezes agent-2
        for _ in range(4):
            assert (
                flood_answer(agent2.Sign, flood_request(sid, amount="1.2.3"))
                == "INVALID_ARGUMENT/AMOUNT_MALFORMED"
            )
        # the agent goes quiet (no Sign sees the freeze); an operator reviews and lifts it
        control = client.control()
        assert control.Unfreeze(
            control_pb2.UnfreezeRequest(scope=control_pb2.AGENT, target="agent-2", reason="ok"),
            timeout=TIMEOUT,
        ).removed
        # the refusals counted before the unfreeze no longer count: payments sign, and
        # the agent is not frozen again behind the operator's back
        assert flood_answer(agent2.Sign, flood_request(sid)) == "SIGNED"
        assert flood_answer(agent2.Sign, flood_request(sid)) == "SIGNED"
        freezes = control.ListFreezes(control_pb2.ListFreezesRequest(), timeout=TIMEOUT)
        assert list(freezes.freezes) == []
        trips = [r for r in audit_log(db) if r["action"] == "breaker.freeze"]
        assert len(trips) == 1


def test_refusals_counted_in_a_window_that_lapsed_unclosed_are_still_summarised() -> None:
    # A window that is over but was not closed (no flush between two refusals) used
    # to be replaced by the next refusal's window, and its count went with it.
    log: RefusalLog[str] = RefusalLog(60)
    agent = AGENT
    assert log.admit(agent, "AMOUNT_MALFORMED", 0)  # recorded in full
    log.recorded(agent, "AMOUNT_MALFORMED", 7)
    assert not log.admit(agent, "AMOUNT_MALFORMED", 10)  # counted
    assert not log.admit(agent, "AMOUNT_MALFORMED", 30)  # counted
    assert log.admit(agent, "AMOUNT_MALFORMED", 61)  # a new window: recorded in full
    log.recorded(agent, "AMOUNT_MALFORMED", 9)
    summaries = log.due(61) + log.due(10_000, everything=True)
    assert [(s.principal, s.count, s.since, s.until, s.first_seq) for s in summaries] == [
        (agent, 2, 0, 60, 7)
    ]
    assert log.due(20_000, everything=True) == []


def _sealed_summaries(db: Path, agent: str) -> tuple[list[dict[str, Any]], int]:
    """The agent's refusal summaries in the log, and the size the last checkpoint seals."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        bodies = conn.execute("SELECT body FROM audit_log ORDER BY seq").fetchall()
        (sealed,) = conn.execute("SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints").fetchone()
    finally:
        conn.close()
    records = [json.loads(b) for (b,) in bodies]
    summaries = [
        r for r in records if r["action"] == "sign.refused.summary" and r["actor"]["id"] == agent
    ]
    return summaries, int(sealed)


def test_a_quiet_agents_counted_refusals_are_sealed_without_a_later_sign_or_a_shutdown(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    # Counted refusals were written only when a later Sign came, or at a clean
    # shutdown: an agent that went quiet left them in memory, and a SIGKILL lost them.
    env = {
        "PAYWARDEN_LIMITS__REFUSAL_SUMMARY_SECONDS": "2",
        "PAYWARDEN_AUDIT__CHECKPOINT_SECONDS": "0.2",
    }
    db = tmp_path / "state.db"

    def full_records() -> list[dict[str, Any]]:
        return [
            r
            for r in audit_log(db)
            if r["action"] == "sign.refused" and r["actor"]["id"] == "agent-1"
        ]

    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki, env) as (srv, client):
        sid = open_session(client.planner, "agent-1", "100.00", timeout=TIMEOUT)
        agent1 = client.signer_of("agent-1")
        # Repeat the refusal until some repeats are only counted, in memory (on a slow
        # machine a window may close between two calls: then the next one opens another).
        repeats = 0
        while repeats < 50 and (repeats < 5 or len(full_records()) == repeats):
            assert (
                flood_answer(agent1.Sign, flood_request(sid, amount="1.2.3"))
                == "INVALID_ARGUMENT/AMOUNT_MALFORMED"
            )
            repeats += 1
        full = full_records()
        assert 1 <= len(full) < repeats  # some repeats were only counted, in memory
        # the agent goes quiet: no Sign, no shutdown; the summary must reach the log
        # and be sealed by a checkpoint (readiness polled on the store, bounded)
        deadline = time.monotonic() + 30
        summaries, sealed = _sealed_summaries(db, "agent-1")
        while time.monotonic() < deadline and not (
            len(full) + sum(s["count"] for s in summaries) == repeats
            and sealed >= max(s["seq"] for s in summaries)
        ):
            time.sleep(0.05)
            summaries, sealed = _sealed_summaries(db, "agent-1")
        assert len(full) + sum(s["count"] for s in summaries) == repeats, summaries
        assert all(s["reason"] == "AMOUNT_MALFORMED" for s in summaries)
        assert {s["first_seq"] for s in summaries} <= {r["seq"] for r in full}
        assert sealed >= max(s["seq"] for s in summaries)
        pem = client.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=TIMEOUT)
        public_key = tmp_path / "audit.pem"
        public_key.write_text(pem.audit_public_key_pem, encoding="utf-8")
        srv.proc.kill()  # no clean shutdown: what the log holds is what was written
        srv.proc.wait(timeout=TIMEOUT)
    summaries_after, _ = _sealed_summaries(db, "agent-1")
    assert summaries_after == summaries
    assert_audit_verifies(db, public_key)

"""Attack: identical retries of an answered request fill the audit log.

Each identical retry (same session, nonce and payload) of a request already
answered — signed, denied or held — appended a full ``sign.retry`` audit record
with an fsync under the write lock, outside the refusal budget: an agent holding
one signed request could replay it thousands of times and fill the disk. Now the
first retry of a decision with a given answer in a window is recorded in full,
repeats that change nothing are counted into one ``sign.retry.summary`` record
(decision id, answer, count, ``first_seq``), and a retry that changes state (an
approved hold now signed, a hold denied, a payment released) is always recorded
in full.

Every test runs the real ``paywarden serve`` on its own store and talks to it
over mutual TLS; the audit log is read from the SQLite file and checked with
``paywarden audit verify``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from paywarden.signer.core.refusals import RefusalLog
from paywarden.signer.identity import Principal, Role
from paywarden.v1 import (
    approvals_pb2,
    control_pb2,
    sessions_pb2,
    sessions_pb2_grpc,
    signer_pb2,
    signer_pb2_grpc,
)

from tests.attacks.kit import assert_audit_verifies, audit_log
from tests.helpers import (
    Pki,
    Stack,
    TestToken,
    write_config,
)
from tests.support.cli import paywarden
from tests.support.clients import Api, running_api
from tests.support.intents import payment_request
from tests.support.refusals import outcome
from tests.support.sessions import open_session

FLOOD = 1000
WORKERS = 8
TIMEOUT = 30

PACK = """
id = "retry-flood"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "500.00"
approval_above = "100.00"

[payees]
allow = ["acme-data"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000.00" }
"""

PACKS = {"retry.toml": PACK}
pytestmark = pytest.mark.stack(packs=PACKS)


# What this module's agent asks to sign (the longest purpose a request may carry), and
# how an answer is read: one comparable string, status and JWS or status and reason.
retry_request = partial(payment_request, payee="acme-data", purpose="P" * 1024, expires_in=240)
retry_answer = partial(outcome, timeout=TIMEOUT, detail=True)


def _retries(records: list[dict[str, Any]], decision_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["action"] in ("sign.retry", "sign.retry.summary") and r["decision_id"] == decision_id
    ]


def _audit_key(client: Api, tmp_path: Path) -> Path:
    pem = client.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=TIMEOUT)
    public_key = tmp_path / "audit.pem"
    public_key.write_text(pem.audit_public_key_pem, encoding="utf-8")
    return public_key


def test_thousand_replays_of_a_signed_request_add_a_bounded_number_of_records(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    db = tmp_path / "state.db"
    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki) as (srv, client):
        signer = client.signer
        sid = open_session(client.planner, "agent-1", "1000.00", timeout=TIMEOUT)
        request = retry_request(sid, amount="10.00")
        resp = signer.Sign(request, timeout=TIMEOUT)
        assert resp.status == signer_pb2.SIGNED and resp.jws
        before = len(audit_log(db))
        with ThreadPoolExecutor(WORKERS) as pool:
            answers = Counter(pool.map(lambda _: retry_answer(signer.Sign, request), range(FLOOD)))
        # every replay gets the identical JWS
        assert answers == {f"SIGNED/{resp.decision_id}/{resp.jws}/True": FLOOD}
        during = audit_log(db)[before:]
        # an explicit small bound: the first retry in full (a caller that comes in
        # before that record is confirmed writes its own: at most one per worker);
        # the rest are only counted
        assert 1 <= len(during) <= WORKERS, [r["action"] for r in during]
        assert {r["action"] for r in during} <= {"sign.retry", "audit.checkpoint"}
        public_key = _audit_key(client, tmp_path)
    assert srv.proc.returncode == 0
    # the log still proves what happened: every one of the 1,000 replays is accounted for
    retries = _retries(audit_log(db), resp.decision_id)
    full = [r for r in retries if r["action"] == "sign.retry"]
    summaries = [r for r in retries if r["action"] == "sign.retry.summary"]
    assert full and len(summaries) == 1
    assert all(r["actor"] == {"role": "agent", "id": "agent-1"} for r in retries)
    assert all(
        (r["answer"], r["reason"]) == (full[0]["answer"], full[0]["reason"]) for r in retries
    )
    assert len(full) + summaries[0]["count"] == FLOOD
    assert summaries[0]["first_seq"] in {r["seq"] for r in full}
    assert summaries[0]["since"] <= summaries[0]["until"]
    assert_audit_verifies(db, public_key)
    # and audit show tells a human how many replays were counted
    show = paywarden("audit", "show", resp.decision_id, "--db", db)
    assert show.returncode == 0, show.stderr
    assert f"the agent retried {summaries[0]['count']} more time(s)" in show.stdout, show.stdout


def test_retries_that_change_state_are_recorded_in_full_among_counted_repeats(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    db = tmp_path / "state.db"
    polls = 50
    with running_api(write_config(tmp_path, token, pki, packs=PACKS), pki) as (srv, client):
        signer, approvals = client.signer, client.approver("approver-1")
        sid = open_session(client.planner, "agent-1", "1000.00", timeout=TIMEOUT)
        held, refused = retry_request(sid, amount="150.00"), retry_request(sid, amount="120.00")
        first = signer.Sign(held, timeout=TIMEOUT)
        assert first.status == signer_pb2.PENDING_APPROVAL
        other = signer.Sign(refused, timeout=TIMEOUT)
        assert other.status == signer_pb2.PENDING_APPROVAL
        pending = f"PENDING_APPROVAL/{first.decision_id}//True"
        # the agent polls by retrying: counted, not recorded one by one
        assert {retry_answer(signer.Sign, held) for _ in range(polls)} == {pending}
        # an approver grants it between retries: the next retry signs, in full
        approvals.Approve(
            approvals_pb2.ApproveRequest(approval_id=first.approval_id), timeout=TIMEOUT
        )
        signed = signer.Sign(held, timeout=TIMEOUT)
        assert signed.status == signer_pb2.SIGNED and signed.replayed_result
        again = f"SIGNED/{first.decision_id}/{signed.jws}/True"
        assert {retry_answer(signer.Sign, held) for _ in range(polls)} == {again}
        # a hold denied between retries: the first retry to learn it is recorded in full
        assert {retry_answer(signer.Sign, refused) for _ in range(polls)} == {
            f"PENDING_APPROVAL/{other.decision_id}//True"
        }
        approvals.Deny(approvals_pb2.DenyRequest(approval_id=other.approval_id), timeout=TIMEOUT)
        assert {retry_answer(signer.Sign, refused) for _ in range(polls)} == {
            "PERMISSION_DENIED/APPROVAL_DENIED"
        }
        public_key = _audit_key(client, tmp_path)
    assert srv.proc.returncode == 0
    records = audit_log(db)

    retries = _retries(records, first.decision_id)
    full = [r for r in retries if r["action"] == "sign.retry"]
    # the first poll, the retry that signed (approval approved), the first retry
    # answered with the stored signature: each recorded in full, in that order
    assert [(r["answer"], r.get("approval")) for r in full] == [
        ("pending", "pending"),
        ("pending", "approved"),
        ("pending", None),
    ]
    # the signing retry's record comes after the approval's
    (vote,) = [r for r in records if r["action"] == "approval.approve"]
    assert full[0]["seq"] < vote["seq"] < full[1]["seq"]
    summaries = [r for r in retries if r["action"] == "sign.retry.summary"]
    assert sorted((str(s.get("approval")), s["count"]) for s in summaries) == sorted(
        [("pending", polls - 1), ("None", polls - 1)]
    )
    assert len(full) + sum(s["count"] for s in summaries) == 2 * polls + 1

    retries = _retries(records, other.decision_id)
    full = [r for r in retries if r["action"] == "sign.retry"]
    assert [(r["answer"], r["reason"], r["approval"]) for r in full] == [
        ("pending", full[0]["reason"], "pending"),
        ("deny", "APPROVAL_DENIED", "denied"),
    ]
    summaries = [r for r in retries if r["action"] == "sign.retry.summary"]
    assert sorted(s["count"] for s in summaries) == [polls - 1, polls - 1]
    assert_audit_verifies(db, public_key)


def test_a_retry_that_expires_and_releases_a_hold_is_recorded_in_full_among_repeats(
    stack: Stack, grpc_create_channel: Callable[[str, str], grpc.Channel]
) -> None:
    """In process, so that time can pass: the hold's payment expires between polls."""
    db = Path(stack.config.store.path)
    polls = 20
    with (
        grpc_create_channel("planner", "planner-1") as planner,
        grpc_create_channel("agent", "agent-1") as agent,
    ):
        sid = (
            sessions_pb2_grpc.SessionsStub(planner)
            .OpenSession(
                sessions_pb2.OpenSessionRequest(
                    agent_id="agent-1",
                    task_description="buy things",
                    budgets=[sessions_pb2.AssetBudget(asset="USD", amount="1000.00")],
                    ttl_seconds=3600,
                )
            )
            .session.session_id
        )
        signer = signer_pb2_grpc.SignerStub(agent)
        held = retry_request(sid, amount="150.00")
        held.intent.expires_at = int(stack.clock.now()) + 60
        first = signer.Sign(held, timeout=TIMEOUT)
        assert first.status == signer_pb2.PENDING_APPROVAL
        pending = f"PENDING_APPROVAL/{first.decision_id}//True"
        assert {retry_answer(signer.Sign, held) for _ in range(polls)} == {pending}
        stack.clock.advance(120)  # the payment, and so its approval, expires
        expired = "PERMISSION_DENIED/APPROVAL_EXPIRED"
        assert {retry_answer(signer.Sign, held) for _ in range(polls)} == {expired}
        spent = (
            sessions_pb2_grpc.SessionsStub(agent)
            .GetSession(sessions_pb2.GetSessionRequest(session_id=sid))
            .session.spend
        )
        assert [(s.asset, s.spent) for s in spent] == [("USD", "0.00")]  # the hold is released
    stack.service.refusals.flush_all()
    retries = _retries(audit_log(db), first.decision_id)
    full = [r for r in retries if r["action"] == "sign.retry"]
    # the first poll, and the retry that expired the approval and released the hold
    assert [(r["answer"], r["reason"], r.get("approval")) for r in full] == [
        ("pending", full[0]["reason"], "pending"),
        ("deny", "APPROVAL_EXPIRED", "expired"),
    ]
    summaries = [r for r in retries if r["action"] == "sign.retry.summary"]
    assert sorted((s["answer"], s["count"]) for s in summaries) == [
        ("deny", polls - 1),
        ("pending", polls - 1),
    ]
    assert {s["first_seq"] for s in summaries} == {r["seq"] for r in full}


def test_replays_of_more_decisions_than_the_table_holds_stay_bounded_and_counted() -> None:
    # Retry kinds carry decision ids, which an agent can mint: a full table must not
    # turn every replay into a full record, nor grow, nor lose a count.
    cap = 3
    log: RefusalLog[str] = RefusalLog(60, max_tracked=cap)
    agent = Principal(Role.AGENT, "agent-1")
    full = 0
    for round_ in range(4):
        for i in range(cap + 2):  # more decisions than the table holds, replayed in turn
            kind = f"dec_{i}"
            for _ in range(10):
                seq = log.counts(agent, kind, round_)
                if seq is None:
                    full += 1
                    log.recorded(agent, kind, 100 + i)
                else:
                    assert seq == 100 + i
            assert len(log._open) <= cap
    summaries = log.due(10_000, everything=True)
    assert full + sum(s.count for s in summaries) == 4 * (cap + 2) * 10
    assert full == 4 * (cap + 2)  # one full record per window a decision gets
    assert log.due(20_000, everything=True) == []

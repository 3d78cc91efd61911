"""Plan-bound sessions over mutual TLS: explore → CommitPlan → execute.

In the explore phase nothing is signed; the planner commits a plan (payee,
asset, most amount, how many times) and from then on a payment is signed only
when it matches an unused plan line, and the pack and the session allow it.
agent-2's pack requires plan-bound sessions. Every refusal is checked by status
code and reason code (``paywarden-reason``).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from paywarden.v1 import (
    approvals_pb2,
    sessions_pb2,
    signer_pb2,
)

from tests.helpers import Stack, reason_of
from tests.support.clients import Api, is_signed, sign_at_once
from tests.support.intents import sign_request
from tests.support.refusals import assert_refused, decision_id_of
from tests.support.sessions import get_session, open_request, opened_session, spent

grpc_max_workers = 64

PLANS_PACK = """
id = "plans"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "100.00"
approval_above = "80.00"

[assets.BTC]
keys = ["payments.v1"]
max_per_payment = "0.5"

[payees]
allow = ["acme-data", "globex", "initech", "hooli"]
deny = ["evil-corp"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000.00", BTC = "1" }
"""

REQUIRED_PACK = """
id = "plans-required"
version = 1
agents = ["agent-2"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "100.00"

[payees]
allow = ["acme-data", "globex"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "500.00" }
require_plan = true
"""

PACKS = {"plans.toml": PLANS_PACK, "required.toml": REQUIRED_PACK}
pytestmark = [pytest.mark.stack(packs=PACKS), pytest.mark.both_backends]

DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
TASK = "Compare three weather datasets and buy the best two"
# What a session opened here asks for, unless a test says otherwise: plan-bound.
USUAL: dict[str, Any] = {"agent": "agent-1", "budget": "500.00", "task": TASK, "plan_bound": True}

Line = tuple[str, str, str, int]  # payee, asset, max_amount, count


# -- helpers -------------------------------------------------------------------


def commit_request(session_id: str, lines: list[Line]) -> sessions_pb2.CommitPlanRequest:
    return sessions_pb2.CommitPlanRequest(
        session_id=session_id,
        lines=[
            sessions_pb2.PlanLine(payee=p, asset=a, max_amount=m, count=c) for p, a, m, c in lines
        ],
    )


def commit(api: Api, session_id: str, lines: list[Line]) -> sessions_pb2.Session:
    return api.planner.CommitPlan(commit_request(session_id, lines)).session


def executing(api: Api, lines: list[Line], **kw: Any) -> str:
    """A plan-bound session with ``lines`` committed; returns its id."""
    sid = opened_session(api.planner, **{**USUAL, **kw}).session_id
    assert commit(api, sid, lines).phase == "execute"
    return sid


def used(api: Api, session_id: str) -> list[int]:
    return [line.used for line in get_session(api.agent_sessions, session_id).plan]


def plan_of(session: sessions_pb2.Session) -> list[tuple[str, str, str, int, int]]:
    return [(ln.payee, ln.asset, ln.max_amount, ln.count, ln.used) for ln in session.plan]


# -- explore, commit, execute ------------------------------------------------------


def test_explore_commit_execute(api: Api, stack: Stack) -> None:
    session = opened_session(api.planner, "agent-1", "500.00", task=TASK, plan_bound=True)
    assert (session.phase, session.state, list(session.plan)) == ("explore", "open", [])
    sid = session.session_id

    early = sign_request(stack, sid, amount="10.00")
    err = assert_refused(api.signer.Sign, early, PRECONDITION, "SESSION_IN_EXPLORE_PHASE")
    trace = [r.as_json() for r in stack.store.get_decision(decision_id_of(err)).trace]
    (phase,) = [r for r in trace if r["rule"] == "session_phase"]
    assert (phase["outcome"], phase["limit"], phase["observed"]) == ("deny", "execute", "explore")
    assert spent(api.agent_sessions, sid) == {"USD": "0.00"}

    lines: list[Line] = [("acme-data", "USD", "25", 2), ("globex", "USD", "100.00", 1)]
    assert_refused(
        api.planner2.CommitPlan,
        commit_request(sid, lines),
        DENIED,
        "SESSION_PLANNER_MISMATCH",
    )
    assert_refused(
        api.agent_sessions.CommitPlan, commit_request(sid, lines), DENIED, "ROLE_NOT_ALLOWED"
    )
    assert get_session(api.agent_sessions, sid).phase == "explore"

    committed = commit(api, sid, lines)
    assert committed.phase == "execute"
    assert plan_of(committed) == [
        ("acme-data", "USD", "25.00", 2, 0),
        ("globex", "USD", "100.00", 1, 0),
    ]
    # the agent sees the plan
    assert plan_of(get_session(api.agent_sessions, sid)) == plan_of(committed)

    assert_refused(
        api.planner.CommitPlan,
        commit_request(sid, [("initech", "USD", "400.00", 5)]),
        PRECONDITION,
        "SESSION_NOT_EXPLORING",
    )
    assert plan_of(get_session(api.agent_sessions, sid)) == plan_of(committed)

    # the request refused while exploring stays refused: its nonce is spent
    assert_refused(api.signer.Sign, early, PRECONDITION, "SESSION_IN_EXPLORE_PHASE")
    resp = api.signer.Sign(sign_request(stack, sid, amount="20.00"))
    assert is_signed(resp)
    trace = [r.as_json() for r in stack.store.get_decision(resp.decision_id).trace]
    (line,) = [r for r in trace if r["rule"] == "plan_line"]
    assert (line["outcome"], line["reason"], line["plan_line"]) == ("allow", "PLAN_LINE_MATCHED", 0)
    assert used(api, sid) == [1, 0]


def test_commit_only_in_an_open_exploring_session(api: Api, stack: Stack) -> None:
    lines: list[Line] = [("acme-data", "USD", "10.00", 1)]
    normal = opened_session(api.planner, "agent-1", "500.00", task=TASK)
    assert normal.phase == "normal"
    assert_refused(
        api.planner.CommitPlan,
        commit_request(normal.session_id, lines),
        PRECONDITION,
        "SESSION_NOT_EXPLORING",
    )
    assert is_signed(
        api.signer.Sign(sign_request(stack, normal.session_id, payee="initech", amount="10.00"))
    )

    closed = opened_session(api.planner, "agent-1", "500.00", task=TASK, plan_bound=True).session_id
    api.planner.CloseSession(sessions_pb2.CloseSessionRequest(session_id=closed))
    assert_refused(
        api.planner.CommitPlan, commit_request(closed, lines), PRECONDITION, "SESSION_NOT_EXPLORING"
    )
    assert get_session(api.agent_sessions, closed).phase == "explore"

    short = opened_session(
        api.planner, "agent-1", "500.00", task=TASK, plan_bound=True, ttl=30
    ).session_id
    stack.clock.advance(31)
    assert_refused(
        api.planner.CommitPlan, commit_request(short, lines), PRECONDITION, "SESSION_NOT_EXPLORING"
    )


def test_closing_an_executing_session_stops_it(api: Api, stack: Stack) -> None:
    sid = executing(api, [("acme-data", "USD", "10.00", 3)])
    assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="10.00")))
    api.planner.CloseSession(sessions_pb2.CloseSessionRequest(session_id=sid))
    assert_refused(
        api.signer.Sign, sign_request(stack, sid, amount="10.00"), PRECONDITION, "SESSION_CLOSED"
    )
    assert used(api, sid) == [1]


# -- only what the plan says ------------------------------------------------------


def test_payments_outside_the_plan_are_denied(api: Api, stack: Stack) -> None:
    sid = executing(api, [("acme-data", "USD", "25.00", 2), ("globex", "USD", "150.00", 1)])
    # initech is allowed by the pack and the session, but not in the plan
    err = assert_refused(
        api.signer.Sign,
        sign_request(stack, sid, payee="initech", amount="10.00"),
        DENIED,
        "PLAN_NO_MATCH",
    )
    trace = [r.as_json() for r in stack.store.get_decision(decision_id_of(err)).trace]
    (line,) = [r for r in trace if r["rule"] == "plan_line"]
    assert (line["outcome"], line["reason"], line["limit"]) == ("deny", "PLAN_NO_MATCH", "2 lines")
    assert [r["rule"] for r in trace if r["outcome"] == "deny"] == ["plan_line"]
    assert_refused(
        api.signer.Sign, sign_request(stack, sid, amount="25.01"), DENIED, "PLAN_NO_MATCH"
    )
    # a payee the pack does not allow is refused for that first
    assert_refused(
        api.signer.Sign,
        sign_request(stack, sid, payee="stranger", amount="10.00"),
        DENIED,
        "PAYEE_NOT_ALLOWED",
    )
    # the plan does not widen the pack: globex's line allows 150.00, the pack 100.00
    assert_refused(
        api.signer.Sign,
        sign_request(stack, sid, payee="globex", amount="100.01"),
        DENIED,
        "AMOUNT_ABOVE_MAX",
    )
    assert used(api, sid) == [0, 0]
    assert spent(api.agent_sessions, sid) == {"USD": "0.00"}
    assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="25.00")))
    assert used(api, sid) == [1, 0]


def test_plan_lines_are_consumed(api: Api, stack: Stack) -> None:
    sid = executing(api, [("acme-data", "USD", "25.00", 2), ("globex", "USD", "50.00", 1)])
    assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="20.00")))
    assert used(api, sid) == [1, 0]
    assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="25.00")))
    assert used(api, sid) == [2, 0]
    err = assert_refused(
        api.signer.Sign, sign_request(stack, sid, amount="1.00"), DENIED, "PLAN_NO_MATCH"
    )
    assert "used up" in stack.store.get_decision(decision_id_of(err)).message
    assert is_signed(api.signer.Sign(sign_request(stack, sid, payee="globex", amount="50.00")))
    assert_refused(
        api.signer.Sign,
        sign_request(stack, sid, payee="globex", amount="1.00"),
        DENIED,
        "PLAN_NO_MATCH",
    )
    assert used(api, sid) == [2, 1]
    assert spent(api.agent_sessions, sid) == {"USD": "95.00"}


def test_plan_does_not_widen_the_session_budget(api: Api, stack: Stack) -> None:
    sid = executing(api, [("acme-data", "USD", "40.00", 3)], budget="100.00")
    for _ in range(2):
        assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="40.00")))
    assert_refused(
        api.signer.Sign, sign_request(stack, sid, amount="40.00"), DENIED, "BUDGET_EXCEEDED"
    )
    assert used(api, sid) == [2]
    assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="20.00")))
    assert (used(api, sid), spent(api.agent_sessions, sid)) == ([3], {"USD": "100.00"})


def test_a_payment_uses_the_line_that_leaves_the_plan_most_room(api: Api, stack: Stack) -> None:
    """Lines "up to 50" and "up to 10" for one payee allow a 5.00 and a 30.00
    payment in either order: the 5.00 must not burn the 50.00 line."""
    sid = executing(api, [("acme-data", "USD", "50.00", 1), ("acme-data", "USD", "10.00", 1)])
    assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="5.00")))
    assert is_signed(api.signer.Sign(sign_request(stack, sid, amount="30.00")))
    assert used(api, sid) == [1, 1]


def test_concurrent_payments_never_overuse_a_line(api: Api, stack: Stack) -> None:
    sid = executing(api, [("acme-data", "USD", "5.00", 3)])
    requests = [sign_request(stack, sid, amount="1.00") for _ in range(20)]
    ok, errors = sign_at_once(api.signer, requests)
    assert len(ok) == 3
    assert all(is_signed(r) for r in ok)
    assert [(e.code(), reason_of(e)) for e in errors] == [(DENIED, "PLAN_NO_MATCH")] * 17
    assert (used(api, sid), spent(api.agent_sessions, sid)) == ([3], {"USD": "3.00"})


# -- pending payments and plan lines ------------------------------------------------


def vote(api: Api, approval_id: str, approve: bool) -> approvals_pb2.Approval:
    if approve:
        return (
            api.approver("approver-1")
            .Approve(approvals_pb2.ApproveRequest(approval_id=approval_id))
            .approval
        )
    return (
        api.approver("approver-1").Deny(approvals_pb2.DenyRequest(approval_id=approval_id)).approval
    )


def test_pending_payment_holds_its_line_until_denied(api: Api, stack: Stack) -> None:
    sid = executing(api, [("hooli", "USD", "95.00", 1)])
    request = sign_request(stack, sid, payee="hooli", amount="90.00")
    resp = api.signer.Sign(request)
    assert resp.status == signer_pb2.PENDING_APPROVAL
    assert used(api, sid) == [1]  # held while pending
    assert_refused(
        api.signer.Sign,
        sign_request(stack, sid, payee="hooli", amount="10.00"),
        DENIED,
        "PLAN_NO_MATCH",
    )
    assert vote(api, resp.approval_id, approve=False).state == "denied"
    assert used(api, sid) == [0]
    assert_refused(api.signer.Sign, request, DENIED, "APPROVAL_DENIED")
    assert is_signed(api.signer.Sign(sign_request(stack, sid, payee="hooli", amount="50.00")))
    assert (used(api, sid), spent(api.agent_sessions, sid)) == ([1], {"USD": "50.00"})


def test_expired_pending_payment_frees_its_line(api: Api, stack: Stack) -> None:
    sid = executing(api, [("hooli", "USD", "95.00", 1)])
    request = sign_request(
        stack, sid, payee="hooli", amount="90.00", expires_at=int(stack.clock.now()) + 30
    )
    assert api.signer.Sign(request).status == signer_pb2.PENDING_APPROVAL
    assert used(api, sid) == [1]
    stack.clock.advance(31)
    assert used(api, sid) == [0]
    assert_refused(api.signer.Sign, request, DENIED, "APPROVAL_EXPIRED")
    assert is_signed(api.signer.Sign(sign_request(stack, sid, payee="hooli", amount="50.00")))
    assert (used(api, sid), spent(api.agent_sessions, sid)) == ([1], {"USD": "50.00"})


def test_approved_pending_payment_keeps_its_line(api: Api, stack: Stack) -> None:
    sid = executing(api, [("hooli", "USD", "95.00", 1)])
    request = sign_request(stack, sid, payee="hooli", amount="90.00")
    resp = api.signer.Sign(request)
    assert vote(api, resp.approval_id, approve=True).state == "approved"
    assert is_signed(api.signer.Sign(request))
    assert used(api, sid) == [1]
    assert_refused(
        api.signer.Sign,
        sign_request(stack, sid, payee="hooli", amount="1.00"),
        DENIED,
        "PLAN_NO_MATCH",
    )
    assert (used(api, sid), spent(api.agent_sessions, sid)) == ([1], {"USD": "90.00"})


# -- what a plan may contain --------------------------------------------------------

GOOD: Line = ("acme-data", "USD", "10.00", 1)


@pytest.mark.parametrize(
    ("lines", "code", "reason"),
    [
        ([("stranger", "USD", "10.00", 1)], DENIED, "PAYEE_NOT_ALLOWED"),
        ([("evil-corp", "USD", "10.00", 1)], DENIED, "PAYEE_DENYLISTED"),
        ([("acme-d\u0430ta", "USD", "10.00", 1)], DENIED, "PAYEE_CONFUSABLE"),  # Cyrillic a
        ([GOOD, ("stranger", "USD", "10.00", 1)], DENIED, "PAYEE_NOT_ALLOWED"),
        ([("acme-data", "BTC", "0.1", 1)], INVALID, "PLAN_INVALID"),  # no BTC budget
        ([("acme-data", "XYZ", "1", 1)], INVALID, "PLAN_INVALID"),
        ([("acme-data", "USD", "10.00", 0)], INVALID, "PLAN_INVALID"),
        ([("acme-data", "USD", "10.00", -1)], INVALID, "PLAN_INVALID"),
        ([("acme-data", "USD", "10.00", 1001)], INVALID, "PLAN_INVALID"),
        ([("acme-data", "USD", "500.01", 1)], INVALID, "PLAN_INVALID"),  # above the budget
        ([GOOD, ("globex", "USD", "10.00", 0)], INVALID, "PLAN_INVALID"),
        ([], INVALID, "PLAN_INVALID"),
        ([GOOD] * 101, INVALID, "PLAN_INVALID"),
        ([("acme-data", "USD", "-1", 1)], INVALID, "AMOUNT_MALFORMED"),
        ([("acme-data", "USD", "0", 1)], INVALID, "AMOUNT_NOT_POSITIVE"),
        ([("acme-data", "USD", "1.001", 1)], INVALID, "AMOUNT_TOO_PRECISE"),
    ],
    ids=[
        "payee-not-in-pack",
        "payee-denylisted",
        "payee-confusable",
        "second-line-payee-not-in-pack",
        "asset-without-budget",
        "asset-unknown",
        "count-0",
        "count-negative",
        "count-1001",
        "max-above-budget",
        "second-line-count-0",
        "no-lines",
        "101-lines",
        "amount-negative",
        "amount-zero",
        "amount-too-precise",
    ],
)
def test_invalid_plan_is_refused_and_changes_nothing(
    api: Api, stack: Stack, lines: list[Line], code: grpc.StatusCode, reason: str
) -> None:
    sid = opened_session(api.planner, "agent-1", "500.00", task=TASK, plan_bound=True).session_id
    assert_refused(api.planner.CommitPlan, commit_request(sid, lines), code, reason)
    after = get_session(api.agent_sessions, sid)
    assert (after.phase, list(after.plan)) == ("explore", [])
    assert_refused(
        api.signer.Sign,
        sign_request(stack, sid, amount="10.00"),
        PRECONDITION,
        "SESSION_IN_EXPLORE_PHASE",
    )
    # the session can still commit a valid plan
    assert commit(api, sid, [GOOD]).phase == "execute"


def test_plan_stays_within_the_sessions_payees(api: Api) -> None:
    sid = opened_session(
        api.planner, "agent-1", "500.00", task=TASK, plan_bound=True, allowed_payees=("acme-data",)
    ).session_id
    assert_refused(
        api.planner.CommitPlan,
        commit_request(sid, [("globex", "USD", "10.00", 1)]),
        DENIED,
        "PAYEE_NOT_IN_SESSION",
    )
    assert commit(api, sid, [GOOD]).phase == "execute"


def test_plan_sizes_at_the_limits_are_accepted(api: Api) -> None:
    sid = opened_session(api.planner, "agent-1", "500.00", task=TASK, plan_bound=True).session_id
    session = commit(api, sid, [("acme-data", "USD", "500.00", 1000), *[GOOD] * 99])
    assert len(session.plan) == 100
    assert plan_of(session)[0] == ("acme-data", "USD", "500.00", 1000, 0)


# -- packs that require a plan ------------------------------------------------------


def test_pack_requiring_a_plan_refuses_sessions_without_one(api: Api, stack: Stack) -> None:
    assert_refused(
        api.planner.OpenSession,
        open_request("agent-2", "500.00", task=TASK),
        DENIED,
        "PLAN_REQUIRED",
    )
    session = opened_session(api.planner, "agent-2", "500.00", task=TASK, plan_bound=True)
    assert (session.phase, session.pack_id) == ("explore", "plans-required")
    assert_refused(
        api.signer2.Sign,
        sign_request(stack, session.session_id, amount="10.00"),
        PRECONDITION,
        "SESSION_IN_EXPLORE_PHASE",
    )
    commit(api, session.session_id, [("acme-data", "USD", "30.00", 1)])
    assert is_signed(api.signer2.Sign(sign_request(stack, session.session_id, amount="30.00")))
    assert_refused(
        api.signer2.Sign,
        sign_request(stack, session.session_id, payee="globex", amount="10.00"),
        DENIED,
        "PLAN_NO_MATCH",
    )

"""The Python client SDK (paywarden.client) against the real signer over mutual TLS.

The acceptance point: a ``sign`` whose first answer is lost on the way back (a proxy cuts the
connection after the signer committed, before its answer reaches the client) is retried with the
same nonce and payload, collects the signature, and the store holds exactly one decision, one
spend and one ``sign.decision`` audit record for it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import grpc
import pytest
from joserfc import jws
from joserfc.jwk import KeySet
from paywarden.client import (
    AgentClient,
    ApprovalDenied,
    ApproverClient,
    ConnectionSettings,
    OperatorClient,
    PendingApproval,
    PlanItem,
    PlannerClient,
    PreparedPayment,
    RetriesExhausted,
    RetryPolicy,
    Signed,
    SignRefused,
    TransportFailed,
)
from paywarden.client.receipts import check_receipt
from paywarden.v1 import signer_pb2
from paywarden.verify import ReceiptInvalid

from tests.helpers import Pki, Stack
from tests.support.faults import answer_dropping_proxy, outage_proxy
from tests.support.outage import broken_middlebox
from tests.support.postgres import free_port
from tests.support.sdk import (
    CountingInterceptor,
    account_of,
    decided_in,
    settings_for,
    upstream_of,
)

SDK_PACK = """
id = "sdk"
version = 1
agents = ["agent-1", "agent-2"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "500.00"
approval_above = "100.00"

[payees]
allow = ["acme-weather", "acme-data"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "5000.00" }
"""

pytestmark = pytest.mark.stack(packs={"sdk.toml": SDK_PACK})

SIGN = "/paywarden.v1.Signer/Sign"
GET_RECEIPT = "/paywarden.v1.Signer/GetReceipt"
QUICK = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, approval_poll=0.05)


@pytest.fixture(scope="module")
def sdk_addr(grpc_server: grpc.Server, grpc_addr: str) -> str:
    """The module's in-process signer, once it serves."""
    return grpc_addr


@pytest.fixture
def sdk_planner(sdk_addr: str, pki: Pki) -> Iterator[PlannerClient]:
    with PlannerClient(settings_for(pki, sdk_addr, "planner", "planner-1")) as planner:
        yield planner


@pytest.fixture
def sdk_agent(sdk_addr: str, pki: Pki) -> Iterator[AgentClient]:
    with AgentClient(settings_for(pki, sdk_addr, "agent", "agent-1"), retry=QUICK) as agent:
        yield agent


@pytest.fixture
def sdk_approver(sdk_addr: str, pki: Pki) -> Iterator[ApproverClient]:
    with ApproverClient(settings_for(pki, sdk_addr, "approver", "approver-1")) as approver:
        yield approver


def open_budget(planner: PlannerClient, budget: str = "1000.00") -> str:
    """A fresh session of agent-1 with a USD budget; its id."""
    return planner.open_session(
        "agent-1", task="buy weather data", budgets={"USD": budget}
    ).session_id


def test_a_lost_answer_is_retried_with_the_same_request_and_paid_once(
    stack: Stack, sdk_addr: str, pki: Pki, sdk_planner: PlannerClient
) -> None:
    session = open_budget(sdk_planner)
    settings = settings_for(pki, sdk_addr, "agent", "agent-1")
    with answer_dropping_proxy(upstream_of(sdk_addr), decided_in(stack, session)) as proxy:
        via_proxy = ConnectionSettings(
            addr=proxy.addr, ca=settings.ca, cert=settings.cert, key=settings.key,
            server_name="localhost",
        )  # fmt: skip
        with AgentClient(via_proxy, retry=QUICK) as agent:
            paid = agent.sign(session, payee="acme-weather", amount="12.50", reference="inv-7")
    assert proxy.cut.is_set() and proxy.withheld > 0  # the first answer never arrived
    assert proxy.connections == 2  # the retry went over a new connection
    assert isinstance(paid, Signed)
    assert paid.attempts == 2 and paid.replayed  # the signer repeated its first answer
    assert (paid.claims.payee, paid.claims.amount, paid.claims.session_id) == (
        "acme-weather", "12.50", session,
    )  # fmt: skip
    account = account_of(stack, session)
    assert len(account.decisions) == 1
    decision = account.decisions[0]
    assert (decision["id"], decision["outcome"], decision["nonce"], decision["jws"]) == (
        paid.decision_id, "allow", paid.claims.nonce, paid.jws,
    )  # fmt: skip
    assert [(s["decision_id"], s["status"]) for s in account.spends] == [
        (paid.decision_id, "spent")
    ]
    decided = account.decided(paid.claims.nonce)
    assert [(r["id"], r["outcome"]) for r in decided] == [(paid.decision_id, "allow")]
    assert len(account.retries(paid.decision_id)) == 1  # the retry is on record, not decided
    assert {s.asset: s.spent for s in sdk_planner.get_session(session).spend} == {"USD": "12.50"}


def test_after_retries_exhausted_resume_collects_the_same_decision(
    stack: Stack, sdk_addr: str, pki: Pki, sdk_planner: PlannerClient
) -> None:
    session = open_budget(sdk_planner)
    settings = settings_for(pki, sdk_addr, "agent", "agent-1")
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with outage_proxy(upstream_of(sdk_addr), decided_in(stack, session)) as proxy:
        via_proxy = ConnectionSettings(
            addr=proxy.addr, ca=settings.ca, cert=settings.cert, key=settings.key,
            server_name="localhost",
        )  # fmt: skip
        with AgentClient(via_proxy, retry=policy) as agent, pytest.raises(RetriesExhausted) as out:
            agent.sign(session, payee="acme-weather", amount="7.25", reference="inv-down")
        gave_up = out.value
        assert gave_up.attempts == 3 and proxy.cuts >= 1  # the signer committed, no answer came
        request = gave_up.request
        assert isinstance(request, PreparedPayment)
        [decision] = account_of(stack, session).decisions  # decided and spent already
        assert decision["nonce"] == request.intent.nonce
        # the caller may persist the request; its bytes bring back the very same request
        kept = PreparedPayment.from_bytes(request.to_bytes())
        assert kept.intent == request.intent
        proxy.heal()
        with AgentClient(via_proxy, retry=QUICK) as agent:  # later, e.g. after a restart
            paid = agent.resume(kept)
    assert isinstance(paid, Signed) and paid.replayed  # the signer repeated its decision
    assert paid.decision_id == decision["id"] and paid.claims.nonce == request.intent.nonce
    assert (paid.claims.payee, paid.claims.amount) == ("acme-weather", "7.25")
    account = account_of(stack, session)
    assert [d["id"] for d in account.decisions] == [paid.decision_id]
    assert [(s["decision_id"], s["status"]) for s in account.spends] == [
        (paid.decision_id, "spent")
    ]
    assert [r["id"] for r in account.decided(paid.claims.nonce)] == [paid.decision_id]
    assert {s.asset: s.spent for s in sdk_planner.get_session(session).spend} == {"USD": "7.25"}


def test_a_prepared_payment_is_submitted_once_however_often_sent(
    stack: Stack, sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    session = open_budget(sdk_planner)
    prepared = sdk_agent.prepare(session, payee="acme-data", amount="2.00", reference="inv-p")
    assert not account_of(stack, session).decisions  # preparing sends nothing
    first = sdk_agent.submit(prepared)
    again = sdk_agent.resume(prepared)
    assert isinstance(first, Signed) and isinstance(again, Signed)
    assert not first.replayed and again.replayed and again.jws == first.jws
    assert len(account_of(stack, session).spends) == 1


def test_a_status_the_signer_did_not_write_is_not_a_refusal(
    stack: Stack, sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    session = open_budget(sdk_planner)
    with broken_middlebox(grpc.StatusCode.INTERNAL) as addr:  # HTTP 500 from a proxy, say
        with (
            grpc.insecure_channel(addr) as channel,
            AgentClient(channel=channel, retry=QUICK) as agent,
            pytest.raises(TransportFailed) as broke,
        ):
            agent.sign(session, payee="acme-weather", amount="6.00", reference="inv-mb")
    err = broke.value
    assert not isinstance(err, SignRefused)  # never "nothing was signed"
    assert err.code is grpc.StatusCode.INTERNAL and err.refusal.domain is None
    assert (err.request.intent.session_id, err.request.intent.amount) == (session, "6.00")
    # the request it carries is the one to resume with the real signer: paid once
    paid = sdk_agent.resume(err.request)
    assert isinstance(paid, Signed) and paid.claims.nonce == err.request.intent.nonce
    assert len(account_of(stack, session).spends) == 1


def test_the_signature_verifies_with_an_independent_jose_library(
    sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    session = open_budget(sdk_planner)
    paid = sdk_agent.sign(session, payee="acme-data", amount="3.00", reference="inv-8")
    assert isinstance(paid, Signed) and not paid.replayed and paid.attempts == 1
    keys = KeySet.import_key_set(json.loads(sdk_agent.public_keys().jwks_json))
    token = jws.deserialize_compact(paid.jws, keys, algorithms=["ES256"])
    assert token.payload == paid.canonical_payload
    assert token.headers()["kid"] == paid.key_id
    assert paid.claims.decision_id == paid.decision_id and len(paid.claims.nonce) >= 22


@pytest.mark.parametrize(
    ("fields", "code", "reason"),
    [
        ({"amount": "1.2.3"}, grpc.StatusCode.INVALID_ARGUMENT, "AMOUNT_MALFORMED"),
        ({"amount": "600.00"}, grpc.StatusCode.PERMISSION_DENIED, "AMOUNT_ABOVE_MAX"),
        ({"payee": "evil-corp"}, grpc.StatusCode.PERMISSION_DENIED, "PAYEE_NOT_ALLOWED"),
    ],
)
def test_a_refusal_is_final_typed_and_never_retried(
    sdk_addr: str,
    pki: Pki,
    sdk_planner: PlannerClient,
    fields: dict[str, str],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    session = open_budget(sdk_planner)
    counter = CountingInterceptor()
    plain = settings_for(pki, sdk_addr, "agent", "agent-1").channel()
    with plain, AgentClient(channel=grpc.intercept_channel(plain, counter), retry=QUICK) as agent:
        with pytest.raises(SignRefused) as refused:
            agent.sign(
                session,
                payee=fields.get("payee", "acme-weather"),
                amount=fields.get("amount", "5.00"),
                reference="r",
            )
    err = refused.value
    assert (err.code, err.reason) == (code, reason)
    assert err.message.startswith(f"[{reason}]")
    assert counter.calls[SIGN] == 1  # not retried
    if code is grpc.StatusCode.PERMISSION_DENIED:  # a policy decision, recorded
        assert err.decision_id and err.audit_seq is not None and err.audit_seq > 0
        assert err.refusal.domain == "paywarden.dev"
    # every refusal comes with the signer's receipt of it, fetched once
    assert counter.calls[GET_RECEIPT] == 1 and err.receipt_error is None
    assert err.receipt is not None
    body = json.loads(err.receipt.receipt.body)
    assert (body["reason"], body["seq"]) == (reason, err.audit_seq)


def test_an_unreachable_signer_is_tried_within_bounds(pki: Pki, sdk_addr: str) -> None:
    settings = settings_for(pki, sdk_addr, "agent", "agent-1")
    nowhere = ConnectionSettings(
        addr=f"127.0.0.1:{free_port()}", ca=settings.ca, cert=settings.cert, key=settings.key,
        server_name="localhost",
    )  # fmt: skip
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with AgentClient(nowhere, retry=policy) as agent, pytest.raises(RetriesExhausted) as gave_up:
        agent.sign("s", payee="acme-weather", amount="1.00", reference="r")
    assert gave_up.value.attempts == 3
    assert gave_up.value.code is grpc.StatusCode.UNAVAILABLE


def test_pending_then_approved_then_signed(
    stack: Stack, sdk_planner: PlannerClient, sdk_agent: AgentClient, sdk_approver: ApproverClient
) -> None:
    session = open_budget(sdk_planner)
    pending = sdk_agent.sign(session, payee="acme-weather", amount="150.00", reference="big-1")
    assert isinstance(pending, PendingApproval)
    held = sdk_approver.get(pending.approval_id)
    assert (held.state, held.amount, held.reason) == ("pending", "150.00", "AMOUNT_NEEDS_APPROVAL")
    again = sdk_agent.resume(pending)  # not approved yet: still pending, the same approval
    assert isinstance(again, PendingApproval) and again.approval_id == pending.approval_id
    assert sdk_approver.approve(pending.approval_id, note="ok").state == "approved"
    paid = sdk_agent.resume(pending)
    assert isinstance(paid, Signed) and paid.approval_id == pending.approval_id
    assert paid.claims.nonce == pending.intent.nonce
    account = account_of(stack, session)
    assert len(account.decisions) == 1 and len(account.spends) == 1


def test_a_bounded_wait_collects_the_signature_once_approved(
    sdk_planner: PlannerClient, sdk_agent: AgentClient, sdk_approver: ApproverClient
) -> None:
    session = open_budget(sdk_planner)
    results: list[object] = []

    def agent_waits() -> None:
        results.append(
            sdk_agent.sign(
                session, payee="acme-data", amount="120.00", reference="w", wait_for_approval=120
            )
        )

    waiting = threading.Thread(target=agent_waits)
    waiting.start()
    approval = None
    while approval is None and waiting.is_alive():  # probe until the approval is held
        approval = next((a for a in sdk_approver.list_pending() if a.session_id == session), None)
    assert approval is not None
    sdk_approver.approve(approval.approval_id)
    waiting.join(timeout=120)
    (paid,) = results
    assert isinstance(paid, Signed) and paid.approval_id == approval.approval_id


def test_a_wait_that_ends_without_an_answer_reports_pending(
    sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    session = open_budget(sdk_planner)
    result = sdk_agent.sign(
        session, payee="acme-data", amount="130.00", reference="p", wait_for_approval=0.1
    )
    assert isinstance(result, PendingApproval)
    assert result.attempts == 1


def test_a_denied_approval_is_reported_with_its_reason(
    sdk_planner: PlannerClient, sdk_agent: AgentClient, sdk_approver: ApproverClient
) -> None:
    session = open_budget(sdk_planner)
    pending = sdk_agent.sign(session, payee="acme-weather", amount="200.00", reference="d")
    assert isinstance(pending, PendingApproval)
    sdk_approver.deny(pending.approval_id, note="not in the plan")
    with pytest.raises(ApprovalDenied) as denied:
        sdk_agent.resume(pending, wait_for_approval=30)
    assert denied.value.reason == "APPROVAL_DENIED"
    assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert denied.value.decision_id


def test_the_session_context_closes_the_session_at_the_end(
    sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    with sdk_planner.session("agent-1", task="one call", budgets={"USD": "10.00"}) as session:
        assert session.state.state == "open"
        paid = sdk_agent.sign(session.id, payee="acme-data", amount="1.00", reference="c")
        assert isinstance(paid, Signed)
    assert sdk_planner.get_session(session.id).state == "closed"
    with pytest.raises(SignRefused) as refused:
        sdk_agent.sign(session.id, payee="acme-data", amount="1.00", reference="c2")
    assert refused.value.reason == "SESSION_CLOSED"


def test_the_session_context_closes_the_session_when_the_block_raises(
    sdk_planner: PlannerClient,
) -> None:
    with (
        pytest.raises(RuntimeError, match="agent crashed"),
        sdk_planner.session("agent-1", task="crash", budgets={"USD": "10.00"}) as session,
    ):
        raise RuntimeError("agent crashed")
    assert sdk_planner.get_session(session.id).state == "closed"


def test_the_operator_freezes_and_the_agent_is_refused(
    sdk_addr: str, pki: Pki, sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    session = open_budget(sdk_planner)
    with OperatorClient(settings_for(pki, sdk_addr, "operator", "operator-1")) as operator:
        assert operator.freeze("session", session, reason="suspicious").created
        assert any(f.target == session for f in operator.list_freezes())
        with pytest.raises(SignRefused) as refused:
            sdk_agent.sign(session, payee="acme-data", amount="1.00", reference="f")
        assert refused.value.reason == "FROZEN"
        assert operator.unfreeze("session", session, reason="checked")
        assert isinstance(
            sdk_agent.sign(session, payee="acme-data", amount="1.00", reference="f2"), Signed
        )
        assert operator.explain_agent("agent-1")["agent_id"] == "agent-1"
        assert operator.checkpoint().checkpoint.tree_size > 0
        with pytest.raises(ValueError, match="scope"):
            operator.freeze("planet", reason="x")  # type: ignore[arg-type]


def test_an_agent_made_from_the_environment_reaches_the_signer(
    sdk_addr: str, pki: Pki, monkeypatch: pytest.MonkeyPatch, sdk_planner: PlannerClient
) -> None:
    settings = settings_for(pki, sdk_addr, "agent", "agent-2")
    for name, value in {
        "PAYWARDEN_ADDR": sdk_addr.replace("localhost", "127.0.0.1"),
        "PAYWARDEN_CA": str(settings.ca),
        "PAYWARDEN_CERT": str(settings.cert),
        "PAYWARDEN_KEY": str(settings.key),
        "PAYWARDEN_SERVER_NAME": "localhost",
    }.items():
        monkeypatch.setenv(name, value)
    session = sdk_planner.open_session("agent-2", task="env", budgets={"USD": "5.00"}).session_id
    with AgentClient() as agent:
        paid = agent.sign(session, payee="acme-data", amount="2.00", reference="env-1")
        assert isinstance(paid, Signed) and paid.claims.agent_id == "agent-2"
        assert agent.session(session).agent_id == "agent-2"
    monkeypatch.setenv("PAYWARDEN_SERVER_NAME", "signer.elsewhere")  # not the certificate's
    with AgentClient(retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)) as agent:
        with pytest.raises(RetriesExhausted) as refused:
            agent.sign(session, payee="acme-data", amount="2.00", reference="env-2")
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE


def test_a_plan_bound_session_signs_only_its_plan(
    sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    with sdk_planner.session(
        "agent-1", task="planned", budgets={"USD": "50.00"}, plan_bound=True
    ) as session:
        with pytest.raises(SignRefused) as exploring:
            sdk_agent.sign(session.id, payee="acme-data", amount="5.00", reference="p0")
        assert exploring.value.reason == "SESSION_IN_EXPLORE_PHASE"
        planned = session.commit_plan([PlanItem("acme-data", "USD", "5.00", count=1)])
        assert planned.phase == "execute" and planned.plan[0].count == 1
        assert isinstance(
            sdk_agent.sign(session.id, payee="acme-data", amount="5.00", reference="p1"), Signed
        )
        with pytest.raises(SignRefused) as unplanned:
            sdk_agent.sign(session.id, payee="acme-data", amount="5.00", reference="p2")
        assert unplanned.value.reason == "PLAN_NO_MATCH"
        assert session.refresh().plan[0].used == 1


def test_the_operator_revokes_and_proves(
    sdk_addr: str, pki: Pki, sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    session = open_budget(sdk_planner)
    paid = sdk_agent.sign(session, payee="acme-data", amount="1.00", reference="proof")
    assert isinstance(paid, Signed)
    with OperatorClient(settings_for(pki, sdk_addr, "operator", "operator-1")) as operator:
        revoked = operator.revoke_identity(principal_id="ghost-agent", reason="lost laptop")
        assert revoked.created and revoked.revocation.principal_id == "ghost-agent"
        assert "ghost-agent" in {r.principal_id for r in operator.list_revocations()}
        with pytest.raises(ValueError, match="exactly one"):
            operator.revoke_identity(reason="nobody")
        head = operator.checkpoint().checkpoint
        proof = operator.inclusion_proof(paid.audit_seq, head.tree_size)
        assert proof.root_hash == head.root_hash and proof.tree_size == head.tree_size
        assert operator.consistency_proof(1, head.tree_size).second_root == head.root_hash


def test_a_denial_carries_a_receipt_that_verifies(
    sdk_addr: str, pki: Pki, sdk_planner: PlannerClient, sdk_agent: AgentClient
) -> None:
    session = open_budget(sdk_planner, "10.00")
    with pytest.raises(SignRefused) as refused:
        sdk_agent.sign(session, payee="acme-data", amount="20.00", reference="over")
    err = refused.value
    assert err.reason == "BUDGET_EXCEEDED" and err.receipt_error is None
    assert err.receipt is not None
    with OperatorClient(settings_for(pki, sdk_addr, "operator", "operator-1")) as operator:
        audit_pem = operator.checkpoint().audit_public_key_pem  # pinned apart from the receipt
    verified = check_receipt(err.receipt, audit_pem)
    assert (verified.body["decision_id"], verified.body["outcome"], verified.body["reason"]) == (
        err.decision_id, "deny", "BUDGET_EXCEEDED",
    )  # fmt: skip
    assert verified.body["seq"] == err.audit_seq
    forged = signer_pb2.GetReceiptResponse()
    forged.CopyFrom(err.receipt)
    forged.receipt.body = forged.receipt.body.replace('"deny"', '"allow"')
    with pytest.raises(ReceiptInvalid):
        check_receipt(forged, audit_pem)
    # the checkpoint just made covers the denial: asked again, the receipt is sealed
    sealed = check_receipt(
        sdk_agent.receipt(decision_id=err.decision_id), audit_pem, require_sealed=True
    )
    assert sealed.sealed_by is not None and sealed.sealed_by.size >= err.audit_seq

"""The asyncio clients (paywarden.client.aio) against the real signer: the same exactly-once
retry through a proxy that loses the first answer, refusals never retried, and the planner's
``async with`` session closed even when the block raises."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from paywarden.client import PreparedPayment, RetryPolicy, Signed, SignRefused
from paywarden.client.aio import AgentClient, PlannerClient, SignCancelled

from tests.helpers import Pki, Stack
from tests.support.faults import answer_dropping_proxy, outage_proxy
from tests.support.sdk import account_of, decided_in, settings_for, upstream_of

ASYNC_POLICY = RetryPolicy(initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture(scope="module")
def aio_addr(grpc_server: grpc.Server, grpc_addr: str) -> str:
    """The module's in-process signer, once it serves."""
    return grpc_addr


def test_the_async_agent_collects_a_lost_answer_once(stack: Stack, aio_addr: str, pki: Pki) -> None:
    async def story() -> tuple[str, Signed, int, bool]:
        async with PlannerClient(settings_for(pki, aio_addr, "planner", "planner-1")) as planner:
            opened = await planner.open_session(
                "agent-1", task="async buy", budgets={"USD": "100.00"}
            )
        session = opened.session_id
        with answer_dropping_proxy(upstream_of(aio_addr), decided_in(stack, session)) as proxy:
            settings = settings_for(pki, proxy.addr, "agent", "agent-1")
            async with AgentClient(settings, retry=ASYNC_POLICY) as agent:
                paid = await agent.sign(
                    session, payee="acme-weather", amount="4.20", reference="a-1",
                    key_id="payments.v1",
                )  # fmt: skip
        assert isinstance(paid, Signed)
        return session, paid, proxy.connections, proxy.cut.is_set()

    session, paid, connections, cut = asyncio.run(story())
    assert cut and connections == 2
    assert paid.attempts == 2 and paid.replayed
    account = account_of(stack, session)
    assert [d["id"] for d in account.decisions] == [paid.decision_id]
    assert len(account.spends) == 1
    assert [d["outcome"] for d in account.decided(paid.claims.nonce)] == ["allow"]


def test_a_cancelled_sign_carries_its_request_and_resume_collects_it(
    stack: Stack, aio_addr: str, pki: Pki
) -> None:
    patient = RetryPolicy(max_attempts=1000, initial_backoff=0.01, max_backoff=0.05, deadline=600)

    async def story() -> tuple[str, SignCancelled, Signed]:
        async with PlannerClient(settings_for(pki, aio_addr, "planner", "planner-1")) as planner:
            opened = await planner.open_session(
                "agent-1", task="async cancel", budgets={"USD": "100.00"}
            )
        session = opened.session_id
        with outage_proxy(upstream_of(aio_addr), decided_in(stack, session)) as proxy:
            settings = settings_for(pki, proxy.addr, "agent", "agent-1")
            async with AgentClient(settings, retry=patient) as agent:
                task = asyncio.create_task(
                    agent.sign(session, payee="acme-weather", amount="3.30", reference="a-c")
                )
                # the signer committed and its answer was cut: the call is still retrying
                assert await asyncio.to_thread(proxy.first_cut.wait, 60)
                task.cancel()
                with pytest.raises(asyncio.CancelledError) as stopped:
                    await task
                assert task.cancelled()  # a cancellation still, as asyncio expects
            cancelled = stopped.value
            assert isinstance(cancelled, SignCancelled)
            proxy.heal()
            async with AgentClient(settings, retry=ASYNC_POLICY) as agent:
                paid = await agent.resume(cancelled.request)
        assert isinstance(paid, Signed)
        return session, cancelled, paid

    session, cancelled, paid = asyncio.run(story())
    assert isinstance(cancelled.request, PreparedPayment)
    assert paid.replayed and paid.claims.nonce == cancelled.request.intent.nonce
    account = account_of(stack, session)
    assert [d["id"] for d in account.decisions] == [paid.decision_id]
    assert [s["decision_id"] for s in account.spends] == [paid.decision_id]
    assert [d["id"] for d in account.decided(paid.claims.nonce)] == [paid.decision_id]


def test_the_async_agent_does_not_retry_a_refusal(aio_addr: str, pki: Pki) -> None:
    async def story() -> SignRefused:
        planner_settings = settings_for(pki, aio_addr, "planner", "planner-1")
        async with PlannerClient(planner_settings) as planner:
            opened = await planner.open_session(
                "agent-1", task="async refusal", budgets={"USD": "10.00"}
            )
        settings = settings_for(pki, aio_addr, "agent", "agent-1")
        async with AgentClient(settings, retry=ASYNC_POLICY, fetch_receipts=False) as agent:
            with pytest.raises(SignRefused) as refused:
                await agent.sign(
                    opened.session_id, payee="acme-weather", amount="50.00", reference="a-2",
                    key_id="payments.v1",
                )  # fmt: skip
            return refused.value

    refusal = asyncio.run(story())
    assert refusal.reason == "BUDGET_EXCEEDED"
    assert refusal.code is grpc.StatusCode.PERMISSION_DENIED
    assert refusal.decision_id and refusal.audit_seq
    assert refusal.receipt is None and refusal.receipt_error is None  # not asked for


def test_the_async_session_context_closes_on_error(aio_addr: str, pki: Pki) -> None:
    async def story() -> tuple[str, str]:
        settings = settings_for(pki, aio_addr, "planner", "planner-1")
        async with PlannerClient(settings) as planner:
            opened = ""
            with pytest.raises(KeyError):
                async with planner.session(
                    "agent-1", task="async crash", budgets={"USD": "1.00"}
                ) as session:
                    opened = session.session_id
                    raise KeyError("boom")
            return opened, (await planner.get_session(opened)).state

    session, state = asyncio.run(story())
    assert session and state == "closed"

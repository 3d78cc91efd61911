"""The asyncio clients, for agent frameworks built on asyncio (``grpc.aio``).

They behave as the blocking ones in :mod:`paywarden.client`, with the same retry policy and
exactly-once ``sign``: both perform the same steps (``paywarden.client._signing``), only the
sending and the waiting do not block the event loop.

>>> async with AgentClient() as agent:  # doctest: +SKIP
...     paid = await agent.sign(session_id, payee="acme-weather", amount="12.50",
...                             reference="inv-1")
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Unpack, overload

import grpc.aio
from paywarden.client._calls import (
    CLOSE_SESSION,
    COMMIT_PLAN,
    GET_PUBLIC_KEYS,
    GET_RECEIPT,
    GET_SESSION,
    OPEN_SESSION,
)
from paywarden.client._connection import DEFAULT_TIMEOUT, AioConnection
from paywarden.client._requests import (
    PlanItem,
    SessionOptions,
    close_request,
    note_close_failure,
    open_request,
    plan_request,
    session_id_request,
)
from paywarden.client._signing import Payment, build_intent
from paywarden.client.agent import AgentSteps, receipt_query
from paywarden.client.errors import ClientError
from paywarden.client.results import PendingApproval, PreparedPayment, Resumable, SignResult
from paywarden.client.retry import RetryPolicy
from paywarden.client.settings import ConnectionSettings
from paywarden.client.x402 import Requirements, X402Order, prepare_x402
from paywarden.client.x402_results import PreparedX402, X402Pending, X402Result
from paywarden.v1 import sessions_pb2, signer_pb2

__all__ = ["AgentClient", "PlannerClient", "SignCancelled"]


class SignCancelled(asyncio.CancelledError):
    """The task was cancelled during ``sign`` / ``submit`` / ``resume``: the outcome is
    unknown (the signer may have decided). It is a :class:`asyncio.CancelledError`, so the
    cancellation goes on as usual; ``request`` is the exact request to
    :meth:`AgentClient.resume` later (``except asyncio.CancelledError as e:
    getattr(e, "request", None)``, or ``prepare`` first and keep the request yourself)."""

    def __init__(self, request: Resumable, *args: object) -> None:
        super().__init__(*args)
        self.request = request


class AgentClient(AioConnection):
    """The asyncio :class:`paywarden.client.AgentClient`."""

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        fetch_receipts: bool = True,
    ) -> None:
        super().__init__(settings, channel=channel, timeout=timeout)
        self._agent = AgentSteps(retry, fetch_receipts, timeout)

    async def sign(
        self,
        session_id: str,
        *,
        wait_for_approval: float | None = None,
        **payment: Unpack[Payment],
    ) -> SignResult:
        """As :meth:`paywarden.client.AgentClient.sign`; a cancellation during the call is
        raised as :class:`SignCancelled`, carrying the request."""
        request = self.prepare(session_id, **payment)
        return await self.submit(request, wait_for_approval=wait_for_approval)

    def prepare(self, session_id: str, **payment: Unpack[Payment]) -> PreparedPayment:
        """As :meth:`paywarden.client.AgentClient.prepare`."""
        return PreparedPayment(build_intent(session_id, payment))

    async def submit(
        self, request: PreparedPayment, *, wait_for_approval: float | None = None
    ) -> SignResult:
        """As :meth:`paywarden.client.AgentClient.submit`; a cancellation is raised as
        :class:`SignCancelled` carrying ``request``."""
        try:
            return await self._run(self._agent.steps(request, wait_for_approval))
        except SignCancelled:
            raise
        except asyncio.CancelledError as cancelled:
            raise SignCancelled(request, *cancelled.args) from cancelled

    async def sign_x402(
        self,
        session_id: str,
        requirements: Requirements,
        *,
        wait_for_approval: float | None = None,
        **order: Unpack[X402Order],
    ) -> X402Result:
        """As :meth:`paywarden.client.AgentClient.sign_x402`; a cancellation during the
        call is raised as :class:`SignCancelled`, carrying the request."""
        request = self.prepare_x402(session_id, requirements, **order)
        return await self.submit_x402(request, wait_for_approval=wait_for_approval)

    def prepare_x402(
        self, session_id: str, requirements: Requirements, **order: Unpack[X402Order]
    ) -> PreparedX402:
        """As :meth:`paywarden.client.AgentClient.prepare_x402`."""
        return prepare_x402(session_id, requirements, order)

    async def submit_x402(
        self, request: PreparedX402, *, wait_for_approval: float | None = None
    ) -> X402Result:
        """As :meth:`paywarden.client.AgentClient.submit_x402`; a cancellation is raised
        as :class:`SignCancelled` carrying ``request``."""
        try:
            return await self._run(self._agent.x402_steps(request, wait_for_approval))
        except SignCancelled:
            raise
        except asyncio.CancelledError as cancelled:
            raise SignCancelled(request, *cancelled.args) from cancelled

    @overload
    async def resume(
        self,
        request: PendingApproval | PreparedPayment,
        *,
        wait_for_approval: float | None = None,
    ) -> SignResult: ...

    @overload
    async def resume(
        self, request: X402Pending | PreparedX402, *, wait_for_approval: float | None = None
    ) -> X402Result: ...

    async def resume(
        self,
        request: PendingApproval | PreparedPayment | X402Pending | PreparedX402,
        *,
        wait_for_approval: float | None = None,
    ) -> SignResult | X402Result:
        """As :meth:`paywarden.client.AgentClient.resume`."""
        if isinstance(request, X402Pending | PreparedX402):
            prepared_x402 = request.request if isinstance(request, X402Pending) else request
            return await self.submit_x402(prepared_x402, wait_for_approval=wait_for_approval)
        prepared = request.request if isinstance(request, PendingApproval) else request
        return await self.submit(prepared, wait_for_approval=wait_for_approval)

    async def receipt(
        self, *, decision_id: str | None = None, audit_seq: int | None = None
    ) -> signer_pb2.GetReceiptResponse:
        """As :meth:`paywarden.client.AgentClient.receipt`."""
        return await self._call(GET_RECEIPT, receipt_query(decision_id, audit_seq))

    async def public_keys(self) -> signer_pb2.GetPublicKeysResponse:
        """The signer's payment keys (a JWKS and PEMs)."""
        return await self._call(GET_PUBLIC_KEYS, signer_pb2.GetPublicKeysRequest())

    async def session(self, session_id: str) -> sessions_pb2.Session:
        """One of this agent's sessions, with its state and spend."""
        return (await self._call(GET_SESSION, session_id_request(session_id))).session


class PlannerClient(AioConnection):
    """The asyncio :class:`paywarden.client.PlannerClient`."""

    async def open_session(
        self, agent_id: str, **options: Unpack[SessionOptions]
    ) -> sessions_pb2.Session:
        """Opens a session for ``agent_id``."""
        return (await self._call(OPEN_SESSION, open_request(agent_id, **options))).session

    async def get_session(self, session_id: str) -> sessions_pb2.Session:
        """A session this planner opened."""
        return (await self._call(GET_SESSION, session_id_request(session_id))).session

    async def commit_plan(self, session_id: str, items: Iterable[PlanItem]) -> sessions_pb2.Session:
        """Commits the plan of a plan-bound session."""
        return (await self._call(COMMIT_PLAN, plan_request(session_id, items))).session

    async def close_session(self, session_id: str) -> sessions_pb2.Session:
        """Closes a session."""
        return (await self._call(CLOSE_SESSION, close_request(session_id))).session

    @asynccontextmanager
    async def session(
        self, agent_id: str, **options: Unpack[SessionOptions]
    ) -> AsyncIterator[sessions_pb2.Session]:
        """Opens a session for the ``async with`` block and closes it when the block ends,
        also when it raises (the block's exception stands)."""
        opened = await self.open_session(agent_id, **options)
        try:
            yield opened
        except BaseException as error:
            try:
                await self.close_session(opened.session_id)
            except ClientError as close_error:
                note_close_failure(error, close_error, opened.session_id)
            raise
        await self.close_session(opened.session_id)

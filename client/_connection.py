"""A client's channel: made from settings (and then owned and closed) or given by the caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from types import TracebackType
from typing import Self, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message
from paywarden.client._calls import Method, Resp, call_error, refusal_of
from paywarden.client._signing import Pause, Reply, Step
from paywarden.client.settings import ConnectionSettings

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
"""Seconds an unretried call may take."""


def _settings(settings: ConnectionSettings | None) -> ConnectionSettings:
    return settings if settings is not None else ConnectionSettings.from_env()


class Connection:
    """A blocking channel to the signer. Without ``channel``, one is dialled from
    ``settings`` (or, without those, from the ``PAYWARDEN_*`` environment) and closed by
    :meth:`close` or at the end of a ``with`` block; a given channel stays the caller's."""

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._owned = channel is None
        self._channel = channel if channel is not None else _settings(settings).channel()
        self.timeout = timeout

    @property
    def channel(self) -> grpc.Channel:
        """The channel calls are made on."""
        return self._channel

    def close(self) -> None:
        """Closes the channel if this client opened it."""
        if self._owned:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Method[Message, Resp], request: Message) -> Resp:
        """One call, not retried; a refusal raises :class:`~paywarden.client.CallError`."""
        try:
            return method.on(self._channel)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise call_error(err) from None

    def _run(self, steps: Generator[Step, Reply, T]) -> T:
        """Performs ``steps`` (see :func:`paywarden.client._signing.sign_steps`) in turn."""
        step = next(steps)
        while True:
            try:
                step = steps.send(self._perform(step))
            except StopIteration as done:
                result: T = done.value
                return result

    def _perform(self, step: Step) -> Reply:
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        try:
            response: Reply = step.method.on(self._channel)(step.request, timeout=step.timeout)
        except grpc.RpcError as err:
            return refusal_of(err)
        return response


class AioConnection:
    """An asyncio channel to the signer, owned as :class:`Connection` owns its channel
    (``await client.close()`` or ``async with``)."""

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._owned = channel is None
        self._channel = channel if channel is not None else _settings(settings).aio_channel()
        self.timeout = timeout

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel calls are made on."""
        return self._channel

    async def close(self) -> None:
        """Closes the channel if this client opened it."""
        if self._owned:
            await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, method: Method[Message, Resp], request: Message) -> Resp:
        """One call, not retried; a refusal raises :class:`~paywarden.client.CallError`."""
        try:
            return await method.on_aio(self._channel)(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise call_error(err) from None

    async def _run(self, steps: Generator[Step, Reply, T]) -> T:
        """Performs ``steps`` in turn, as :meth:`Connection._run` does, without blocking."""
        step = next(steps)
        while True:
            try:
                step = steps.send(await self._perform(step))
            except StopIteration as done:
                result: T = done.value
                return result

    async def _perform(self, step: Step) -> Reply:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        try:
            call = step.method.on_aio(self._channel)
            response: Reply = await call(step.request, timeout=step.timeout)
        except grpc.RpcError as err:
            return refusal_of(err)
        return response

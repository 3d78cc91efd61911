"""Fixtures the attack modules share (each module gets its own, module-scoped)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from paywarden.v1 import sessions_pb2_grpc, signer_pb2_grpc

from tests.attacks.kit import Api, Dial


@pytest.fixture(scope="module")
def dial(grpc_create_channel: Dial) -> Iterator[Dial]:
    """Channels by (role, principal) to the module's in-process server, closed at the end."""
    with ExitStack() as channels:
        yield lambda role, who: channels.enter_context(grpc_create_channel(role, who))


@pytest.fixture(scope="module")
def api(grpc_create_channel: Dial) -> Iterator[Api]:
    """planner-1 and agent-1 on the module's in-process server."""
    with ExitStack() as stack:
        planner = stack.enter_context(grpc_create_channel("planner", "planner-1"))
        agent = stack.enter_context(grpc_create_channel("agent", "agent-1"))
        yield Api(sessions_pb2_grpc.SessionsStub(planner), signer_pb2_grpc.SignerStub(agent))

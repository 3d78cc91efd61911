"""Requests with fields this version does not know are refused, not ignored."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from paywarden.v1 import sessions_pb2, signer_pb2

from tests.helpers import reason_of

ChannelFactory = Callable[[str, str], grpc.Channel]


def _raw_call(channel: grpc.Channel, method: str, payload: bytes) -> bytes:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    result: bytes = call(payload, timeout=30)
    return result


def _with_unknown_intent_field() -> bytes:
    intent = signer_pb2.PaymentIntent(amount="1.00", asset="USD").SerializeToString()
    intent += bytes([0x50, 0x01])  # field 10 (not in PaymentIntent), varint 1: "approved"
    return bytes([0x0A, len(intent)]) + intent  # SignRequest.intent


def test_unknown_nested_field_in_sign_is_refused(grpc_create_channel: ChannelFactory) -> None:
    with grpc_create_channel("agent", "agent-1") as ch:
        with pytest.raises(grpc.RpcError) as err:
            _raw_call(ch, "/paywarden.v1.Signer/Sign", _with_unknown_intent_field())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "UNKNOWN_FIELD"
    assert "intent" in (err.value.details() or "")


def test_unknown_top_level_field_in_open_session_is_refused(
    grpc_create_channel: ChannelFactory,
) -> None:
    request = sessions_pb2.OpenSessionRequest(
        agent_id="agent-1",
        task_description="t",
        budgets=[sessions_pb2.AssetBudget(asset="USD", amount="1.00")],
        ttl_seconds=60,
    ).SerializeToString() + bytes([0x78, 0x01])  # field 15, varint 1
    with grpc_create_channel("planner", "planner-1") as ch:
        with pytest.raises(grpc.RpcError) as err:
            _raw_call(ch, "/paywarden.v1.Sessions/OpenSession", request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(err.value) == "UNKNOWN_FIELD"
        # the same request without the unknown field is accepted
        ok = _raw_call(ch, "/paywarden.v1.Sessions/OpenSession", request[:-2])
    assert sessions_pb2.OpenSessionResponse.FromString(ok).session.session_id.startswith("ses_")


def test_unknown_field_inside_repeated_message_is_refused(
    grpc_create_channel: ChannelFactory,
) -> None:
    budget = sessions_pb2.AssetBudget(asset="USD", amount="1.00").SerializeToString()
    budget += bytes([0x18, 0x01])  # field 3 of AssetBudget does not exist
    request = (
        sessions_pb2.OpenSessionRequest(
            agent_id="agent-1", task_description="t", ttl_seconds=60
        ).SerializeToString()
        + bytes([0x1A, len(budget)])
        + budget
    )
    with grpc_create_channel("planner", "planner-1") as ch:
        with pytest.raises(grpc.RpcError) as err:
            _raw_call(ch, "/paywarden.v1.Sessions/OpenSession", request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(err.value) == "UNKNOWN_FIELD"
    assert "budgets[0]" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("role", "principal", "code", "reason"),
    [
        ("agent", "agent-1", grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"),
        # a caller who may not call Sign learns nothing about how its body parses
        ("planner", "planner-1", grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"),
    ],
)
@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff\xff",  # not protobuf at all
        bytes([0x0A, 0x05, 0x1A, 0x03, 0xC3, 0x28, 0x41]),  # intent.payee with invalid UTF-8
    ],
    ids=["garbage", "invalid-utf8"],
)
def test_undecodable_request_is_refused_with_a_reason(
    grpc_create_channel: ChannelFactory,
    role: str,
    principal: str,
    code: grpc.StatusCode,
    reason: str,
    body: bytes,
) -> None:
    with grpc_create_channel(role, principal) as ch:
        with pytest.raises(grpc.RpcError) as err:
            _raw_call(ch, "/paywarden.v1.Signer/Sign", body)
    assert err.value.code() == code
    assert reason_of(err.value) == reason

"""The authorisation matrix: every RPC the server registers, for every kind of caller.

The RPCs are not listed by hand: they are read from the running server (its
reflection service, as an operator sees it) and from the descriptors of the
services the signer registers, streaming ones, health and reflection
included. Each must have an entry in :data:`EXPECTED` below, written here and
not imported from the code under test: a new RPC without one fails the suite.
Every RPC is then called with every kind of certificate against a real
``paywarden serve`` and the outcome must be exactly the one expected:
allowed (the call passed authentication and authorisation), or the exact
status and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from paywarden.signer.api.registry import SERVICES
from paywarden.signer.errors import Reason

from tests.attacks.certs import ClientCert, client_cert, intermediate, spiffe
from tests.helpers import Pki, ServeProcess, TestToken, reason_of, serve, write_config

UNARY, SERVER_STREAM, BIDI = "unary", "server-stream", "bidi"
AGENT, PLANNER, APPROVER, OPERATOR = "agent", "planner", "approver", "operator"
PAYEE = "payee"
EVERY_ROLE = frozenset({AGENT, PLANNER, APPROVER, OPERATOR, PAYEE})

# method -> (kind of call, roles allowed). Derived from nothing: a reviewed table.
EXPECTED: dict[str, tuple[str, frozenset[str]]] = {
    "/paywarden.v1.Signer/Sign": (UNARY, frozenset({AGENT})),
    "/paywarden.v1.Signer/GetPublicKeys": (UNARY, EVERY_ROLE),
    "/paywarden.v1.Signer/GetReceipt": (UNARY, frozenset({AGENT, PAYEE, APPROVER, OPERATOR})),
    "/paywarden.v1.Signer/CheckPayment": (UNARY, frozenset({PAYEE, OPERATOR})),
    "/paywarden.v1.Signer/SignX402": (UNARY, frozenset({AGENT})),
    "/paywarden.v1.Sessions/OpenSession": (UNARY, frozenset({PLANNER})),
    "/paywarden.v1.Sessions/GetSession": (UNARY, frozenset({PLANNER, AGENT})),
    "/paywarden.v1.Sessions/CloseSession": (UNARY, frozenset({PLANNER})),
    "/paywarden.v1.Sessions/CommitPlan": (UNARY, frozenset({PLANNER})),
    "/paywarden.v1.Approvals/ListPending": (UNARY, frozenset({APPROVER})),
    "/paywarden.v1.Approvals/GetApproval": (UNARY, frozenset({APPROVER})),
    "/paywarden.v1.Approvals/Approve": (UNARY, frozenset({APPROVER})),
    "/paywarden.v1.Approvals/Deny": (UNARY, frozenset({APPROVER})),
    "/paywarden.v1.Control/Freeze": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/Unfreeze": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/ListFreezes": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/RevokeIdentity": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/ListRevocations": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/RevokeMandate": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/Checkpoint": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/InclusionProof": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/ConsistencyProof": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/ExplainAgent": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/ReloadPolicy": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/ConfirmReload": (UNARY, frozenset({OPERATOR})),
    "/paywarden.v1.Control/GetReload": (UNARY, frozenset({OPERATOR})),
    "/grpc.health.v1.Health/Check": (UNARY, EVERY_ROLE),
    "/grpc.health.v1.Health/Watch": (SERVER_STREAM, EVERY_ROLE),
    # Registered by grpc_health's generated code, not implemented by its servicer
    # and in no role table of ours: refused to everyone.
    "/grpc.health.v1.Health/List": (UNARY, frozenset()),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": (BIDI, frozenset({OPERATOR})),
}

ALLOWED = "allowed"
Outcome = str | tuple[grpc.StatusCode, str | None]
HANDSHAKE_REFUSED: Outcome = (grpc.StatusCode.UNAVAILABLE, None)  # no handler ran
NOT_A_CLIENT: Outcome = (grpc.StatusCode.UNAUTHENTICATED, Reason.CLIENT_CERT_PROFILE.value)
NO_IDENTITY: Outcome = (grpc.StatusCode.UNAUTHENTICATED, Reason.NO_IDENTITY.value)
WRONG_ROLE: Outcome = (grpc.StatusCode.PERMISSION_DENIED, Reason.ROLE_NOT_ALLOWED.value)
TIMEOUT = 10


@dataclass(frozen=True)
class Caller:
    """A kind of certificate, and what every call made with it must get."""

    make: Callable[[Pki, Pki], ClientCert | None]  # (pki, rogue_pki) -> cert, None: no cert
    role: str | None = None  # a valid caller of this role
    refused: Outcome | None = None  # the outcome for every RPC when not a valid caller

    def expected(self, method: str) -> Outcome:
        if self.role is None:
            assert self.refused is not None
            return self.refused
        return ALLOWED if self.role in EXPECTED[method][1] else WRONG_ROLE


def _issued(role: str, principal: str) -> Callable[[Pki, Pki], ClientCert]:
    return lambda pki, _rogue: ClientCert(*pki.cert(role, principal))


def _built(role: str, principal: str, **shape: Any) -> Callable[[Pki, Pki], ClientCert]:
    return lambda pki, _rogue: client_cert(pki, spiffe(pki, role, principal), **shape)


CALLERS: dict[str, Caller] = {
    "agent": Caller(_issued(AGENT, "agent-1"), role=AGENT),
    "planner": Caller(_issued(PLANNER, "planner-1"), role=PLANNER),
    "approver": Caller(_issued(APPROVER, "approver-1"), role=APPROVER),
    "operator": Caller(_issued(OPERATOR, "operator-1"), role=OPERATOR),
    "payee": Caller(_issued(PAYEE, "payee-1"), role=PAYEE),
    "no-certificate": Caller(lambda _pki, _rogue: None, refused=HANDSHAKE_REFUSED),
    "rogue-ca": Caller(
        lambda _pki, rogue: ClientCert(*rogue.cert(OPERATOR, "operator-1")),
        refused=HANDSHAKE_REFUSED,
    ),
    "server-auth-only": Caller(
        _built(OPERATOR, "operator-1", usages=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        refused=HANDSHAKE_REFUSED,
    ),
    "ca-true-leaf": Caller(_built(OPERATOR, "operator-1", ca=True), refused=NOT_A_CLIENT),
    "no-extended-key-usage": Caller(
        _built(OPERATOR, "operator-1", usages=()), refused=NOT_A_CLIENT
    ),
    "leaf-under-intermediate": Caller(
        lambda pki, _rogue: client_cert(
            pki, spiffe(pki, OPERATOR, "operator-1"), issuer=intermediate(pki)
        ),
        refused=NOT_A_CLIENT,
    ),
    "upper-case-id": Caller(_built(OPERATOR, "Operator-1"), refused=NO_IDENTITY),
    "unknown-role": Caller(_built("admin", "operator-1"), refused=NO_IDENTITY),
    "wrong-trust-domain": Caller(
        lambda pki, _rogue: client_cert(pki, "spiffe://paywarden.evil/operator/operator-1"),
        refused=NO_IDENTITY,
    ),
}


# -- the RPC list: from the server and the descriptors, checked against EXPECTED --


def _kind(method: descriptor_pb2.MethodDescriptorProto) -> str:
    if method.client_streaming and method.server_streaming:
        return BIDI
    if method.server_streaming:
        return SERVER_STREAM
    assert not method.client_streaming, f"{method.name}: a client stream, not in the table"
    return UNARY


def _reflected(channel: grpc.Channel) -> dict[str, str]:
    """method -> kind, for every service the running server reflects."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    def ask(
        request: reflection_pb2.ServerReflectionRequest,
    ) -> reflection_pb2.ServerReflectionResponse:
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT))
        return answer

    listed = ask(reflection_pb2.ServerReflectionRequest(list_services=""))
    found: dict[str, str] = {}
    for service in listed.list_services_response.service:
        files = ask(reflection_pb2.ServerReflectionRequest(file_containing_symbol=service.name))
        for raw in files.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for svc in proto.service:
                full = f"{proto.package}.{svc.name}" if proto.package else svc.name
                if full == service.name:
                    for m in svc.method:
                        found[f"/{full}/{m.name}"] = _kind(m)
    return found


def _registered() -> dict[str, str]:
    """method -> kind, from the descriptors of every service the signer registers."""
    services = [*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"]]
    services.append(reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"])
    found: dict[str, str] = {}
    for service in services:
        for m in service.methods:
            proto = descriptor_pb2.MethodDescriptorProto()
            m.CopyToProto(proto)
            found[f"/{service.full_name}/{m.name}"] = _kind(proto)
    return found


# -- the server, and one channel per kind of caller -----------------------------


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki
) -> Iterator[ServeProcess]:
    config = write_config(tmp_path_factory.mktemp("matrix"), token, pki)
    env = {
        "PAYWARDEN_SERVER__REFLECTION": "true",
        # The matrix opens one stream at a time; a cancelled one may take a moment
        # to give its place back: room enough that admission never decides here.
        "PAYWARDEN_SERVER__MAX_STREAMS": "64",
        "PAYWARDEN_SERVER__MAX_STREAMS_PER_PRINCIPAL": "32",
    }
    with serve(config, env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def channels(server: ServeProcess, pki: Pki, rogue_pki: Pki) -> Iterator[dict[str, grpc.Channel]]:
    opened: dict[str, grpc.Channel] = {}
    for name, caller in CALLERS.items():
        cert = caller.make(pki, rogue_pki)
        if cert is None:
            creds = grpc.ssl_channel_credentials(root_certificates=pki.ca)
            opened[name] = grpc.secure_channel(
                server.addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]
            )
        else:
            opened[name] = cert.channel(server.addr, pki)
    yield opened
    for ch in opened.values():
        ch.close()


def test_every_rpc_the_server_registers_has_an_expected_entry(
    channels: dict[str, grpc.Channel],
) -> None:
    expected = {method: kind for method, (kind, _roles) in EXPECTED.items()}
    assert _reflected(channels["operator"]) == expected
    assert _registered() == expected


# -- the matrix -----------------------------------------------------------------


def _message(method: str, which: str) -> type[Message]:
    service, name = method.strip("/").split("/")
    desc = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    cls: type[Message] = message_factory.GetMessageClass(getattr(desc, which))
    return cls


def _call(channel: grpc.Channel, method: str) -> Message:
    """Calls ``method`` with an empty request; returns the (first) response."""
    kind = EXPECTED[method][0]
    request_cls, response_cls = _message(method, "input_type"), _message(method, "output_type")
    serialize, parse = request_cls.SerializeToString, response_cls.FromString
    if kind == UNARY:
        call = channel.unary_unary(
            method, request_serializer=serialize, response_deserializer=parse
        )
        response: Message = call(request_cls(), timeout=TIMEOUT)
        return response
    if kind == SERVER_STREAM:
        stream = channel.unary_stream(
            method, request_serializer=serialize, response_deserializer=parse
        )(request_cls(), timeout=TIMEOUT)
    else:
        stream = channel.stream_stream(
            method, request_serializer=serialize, response_deserializer=parse
        )(iter([request_cls()]), timeout=TIMEOUT)
    try:
        first: Message = next(iter(stream))
        return first
    finally:
        stream.cancel()


# A refusal that says the caller was let through: anything but these.
_NOT_THROUGH_CODES = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
_NOT_THROUGH_REASONS = {Reason.NO_IDENTITY, Reason.CLIENT_CERT_PROFILE, Reason.ROLE_NOT_ALLOWED}


def _call_outcome(channel: grpc.Channel, method: str) -> Outcome:
    try:
        _call(channel, method)
    except grpc.RpcError as err:
        code, reason = err.code(), reason_of(err)
        if reason is not None and code not in _NOT_THROUGH_CODES:
            if reason not in _NOT_THROUGH_REASONS:
                return ALLOWED  # e.g. an empty request is invalid: the handler ran
        return (code, reason)
    return ALLOWED


@pytest.mark.parametrize("caller", list(CALLERS), ids=list(CALLERS))
@pytest.mark.parametrize("method", list(EXPECTED), ids=[m.strip("/") for m in EXPECTED])
def test_every_rpc_for_every_kind_of_caller(
    channels: dict[str, grpc.Channel], method: str, caller: str
) -> None:
    assert _call_outcome(channels[caller], method) == CALLERS[caller].expected(method)

"""Registers our servicers so that requests are parsed after authorisation.

The generated ``add_*_to_server`` functions parse the request before any of
our code runs: a malformed body would fail as INTERNAL with no reason code,
for callers of any role. Here each method receives raw bytes; the ``rpc``
wrapper authorises the caller first, then parses (a decode error is
INVALID_ARGUMENT with the reason MALFORMED_REQUEST).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from paywarden.v1 import approvals_pb2, control_pb2, sessions_pb2, signer_pb2


def request_class(method: str) -> type[Message]:
    """``/paywarden.v1.Signer/Sign`` → ``SignRequest``."""
    service, name = method.strip("/").split("/")
    descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    cls: type[Message] = message_factory.GetMessageClass(descriptor.input_type)
    return cls


SERVICES = (
    signer_pb2.DESCRIPTOR.services_by_name["Signer"],
    sessions_pb2.DESCRIPTOR.services_by_name["Sessions"],
    approvals_pb2.DESCRIPTOR.services_by_name["Approvals"],
    control_pb2.DESCRIPTOR.services_by_name["Control"],
)


def add_servicer(server: Any, servicer: Any, service_name: str) -> None:
    """Adds every method of ``service_name`` with raw-bytes requests."""
    service = next(s for s in SERVICES if s.full_name == service_name)
    handlers = {}
    for method in service.methods:
        response_cls = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=None,  # bytes: parsed by the rpc wrapper after authorisation
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))

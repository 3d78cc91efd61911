"""Which roles may call which RPC, and the one wrapper every handler goes through.

gRPC interceptors cannot see the TLS auth context, so each handler is wrapped:
identity from the client certificate (the servicer's ``auth``, an
:class:`~paywarden.signer.identity.Authenticator`), role check from :data:`RPC_ROLES`, and
the mapping of our exceptions to statuses. A method missing from the table is
refused to everyone.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from paywarden.signer.errors import Forbidden, Internal, InvalidInput, PaywardenError, Reason
from paywarden.signer.identity import Principal, Role
from paywarden.signer.registry import request_class
from paywarden.signer.status import to_grpc_status
from paywarden.signer.wire import reject_unknown_fields

log = logging.getLogger("paywarden.signer.rpc")

_ALL = frozenset(Role)

RPC_ROLES: dict[str, frozenset[Role]] = {
    "/paywarden.v1.Signer/Sign": frozenset({Role.AGENT}),
    "/paywarden.v1.Signer/GetPublicKeys": _ALL,
    "/paywarden.v1.Sessions/OpenSession": frozenset({Role.PLANNER}),
    "/paywarden.v1.Sessions/GetSession": frozenset({Role.PLANNER, Role.AGENT}),
    "/paywarden.v1.Sessions/CloseSession": frozenset({Role.PLANNER}),
    "/paywarden.v1.Sessions/CommitPlan": frozenset({Role.PLANNER}),
    "/paywarden.v1.Approvals/ListPending": frozenset({Role.APPROVER}),
    "/paywarden.v1.Approvals/GetApproval": frozenset({Role.APPROVER}),
    "/paywarden.v1.Approvals/Approve": frozenset({Role.APPROVER}),
    "/paywarden.v1.Approvals/Deny": frozenset({Role.APPROVER}),
    "/paywarden.v1.Control/Freeze": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/Unfreeze": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/ListFreezes": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/Checkpoint": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/InclusionProof": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/ConsistencyProof": frozenset({Role.OPERATOR}),
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Principal, Req], Resp]


def authorize(method: str, principal: Principal) -> None:
    allowed = RPC_ROLES.get(method, frozenset())
    if principal.role not in allowed:
        raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"role {principal.role} may not call {method}")


def rpc(
    method: str,
) -> Callable[[Handler[Req, Resp]], Callable[[Any, Req, grpc.ServicerContext], Resp]]:
    """Decorates a servicer method ``(self, principal, request) -> response``."""

    def decorate(fn: Handler[Req, Resp]) -> Callable[[Any, Req, grpc.ServicerContext], Resp]:
        @functools.wraps(fn)
        def handler(self: Any, request: Req, context: grpc.ServicerContext) -> Resp:
            try:
                principal = self.auth.principal(context.auth_context())
                authorize(method, principal)
                if isinstance(request, bytes):
                    try:
                        request = request_class(method).FromString(request)  # type: ignore[assignment]
                    except DecodeError:
                        raise InvalidInput(
                            Reason.MALFORMED_REQUEST, "the request is not a valid message"
                        ) from None
                if isinstance(request, Message):
                    reject_unknown_fields(request)
                return fn(self, principal, request)
            except PaywardenError as exc:
                log.info(
                    "rpc refused",
                    extra={
                        "rpc": method,
                        "reason": str(exc.reason),
                        "decision_id": exc.decision_id,
                    },
                )
                context.abort_with_status(to_grpc_status(exc))
                raise  # abort_with_status raises; this line is never reached
            except Exception:  # a bug: deny, log the traceback, reveal nothing
                log.exception("rpc failed", extra={"rpc": method})
                context.abort_with_status(
                    to_grpc_status(Internal(Reason.INTERNAL, "internal error; nothing was signed"))
                )
                raise

        return handler

    return decorate

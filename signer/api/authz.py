"""Which roles may call which RPC, and the one wrapper every handler goes through.

gRPC interceptors cannot see the TLS auth context, so each handler is wrapped:
identity from the client certificate (the servicer's :class:`Edge`), role
check from :data:`RPC_ROLES`, and the mapping of our exceptions to statuses. A
method missing from the table is refused to everyone. A bug (any other
exception) is answered INTERNAL and audited, so that every call, failed or
not, leaves its record.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from paywarden.signer.api.registry import request_class
from paywarden.signer.api.status import to_grpc_status
from paywarden.signer.api.wire import reject_unknown_fields
from paywarden.signer.core import audit_events
from paywarden.signer.errors import Forbidden, Internal, InvalidInput, PaywardenError, Reason
from paywarden.signer.identity import Authenticator, Principal, Role
from paywarden.signer.store.protocols import Store
from paywarden.signer.store.records import StoreError

log = logging.getLogger("paywarden.signer.rpc")

_ALL = frozenset(Role)

RPC_ROLES: dict[str, frozenset[Role]] = {
    "/paywarden.v1.Signer/Sign": frozenset({Role.AGENT}),
    "/paywarden.v1.Signer/GetPublicKeys": _ALL,
    "/paywarden.v1.Signer/GetReceipt": frozenset(
        {Role.AGENT, Role.PAYEE, Role.APPROVER, Role.OPERATOR}
    ),
    "/paywarden.v1.Signer/CheckPayment": frozenset({Role.PAYEE, Role.OPERATOR}),
    "/paywarden.v1.Signer/SignX402": frozenset({Role.AGENT}),
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
    "/paywarden.v1.Control/RevokeIdentity": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/ListRevocations": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/RevokeMandate": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/Checkpoint": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/InclusionProof": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/ConsistencyProof": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/ExplainAgent": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/ReloadPolicy": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/ConfirmReload": frozenset({Role.OPERATOR}),
    "/paywarden.v1.Control/GetReload": frozenset({Role.OPERATOR}),
}


@dataclass(frozen=True)
class Edge:
    """What the wrapper of every handler needs: who calls, and where a failure is audited.

    ``clock`` is the services' decision time (:class:`~paywarden.signer.timekeeping.HighWater`),
    never the raw system clock: an ``rpc.error`` record must not go back in time."""

    auth: Authenticator
    store: Store
    clock: Callable[[], float]

    def audit_error(self, method: str, caller: Principal | None) -> int | None:
        """One ``rpc.error`` record: the method and the caller, never the exception's text."""
        fields: dict[str, Any] = {"rpc": method}
        if caller is None:
            fields["authenticated"] = False
        try:
            return self.store.audit_event(
                audit_events.event("rpc.error", caller, int(self.clock()), **fields)
            )
        except StoreError as exc:
            log.error("cannot audit a failed rpc: %s", exc, extra={"rpc": method})
            return None


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Principal, Req], Resp]


# Services the server registers that are not ours (their handlers are not
# wrapped by ``rpc``): the admission layer authorises them from this table.
EXTERNAL_RPC_ROLES: dict[str, frozenset[Role]] = {
    "/grpc.health.v1.Health/Check": _ALL,
    "/grpc.health.v1.Health/Watch": _ALL,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": frozenset({Role.OPERATOR}),
}


def authorize(method: str, principal: Principal) -> None:
    allowed = RPC_ROLES.get(method) or EXTERNAL_RPC_ROLES.get(method, frozenset())
    if principal.role not in allowed:
        raise Forbidden(Reason.ROLE_NOT_ALLOWED, f"role {principal.role} may not call {method}")


def rpc(
    method: str,
) -> Callable[[Handler[Req, Resp]], Callable[[Any, Req, grpc.ServicerContext], Resp]]:
    """Decorates a servicer method ``(self, principal, request) -> response``."""

    def decorate(fn: Handler[Req, Resp]) -> Callable[[Any, Req, grpc.ServicerContext], Resp]:
        @functools.wraps(fn)
        def handler(self: Any, request: Req, context: grpc.ServicerContext) -> Resp:
            edge: Edge = self.edge
            principal: Principal | None = None
            try:
                principal = edge.auth.principal(context.auth_context())
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
            except Exception:  # a bug: deny, log the traceback, audit it, reveal nothing
                log.exception("rpc failed", extra={"rpc": method})
                error = Internal(Reason.INTERNAL, "internal error; nothing was signed")
                error.audit_seq = edge.audit_error(method, principal)
                context.abort_with_status(to_grpc_status(error))
                raise

        return handler

    return decorate

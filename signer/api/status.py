"""The one place where our exceptions become gRPC statuses.

The reason code travels three ways: in the message ("[REASON] text"), in a
``google.rpc.ErrorInfo`` status detail (domain ``paywarden.dev``), and in the
trailing metadata key ``paywarden-reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from paywarden.signer.errors import (
    Cancelled,
    DeadlineExceeded,
    Denied,
    Forbidden,
    Internal,
    InvalidInput,
    KeyNotActive,
    NotAuthenticated,
    NotFound,
    Overloaded,
    PaywardenError,
    PreconditionFailed,
    RateLimited,
    Replayed,
    SessionNotUsable,
    Unavailable,
)

ERROR_DOMAIN = "paywarden.dev"
REASON_KEY = "paywarden-reason"
DECISION_KEY = "paywarden-decision-id"
AUDIT_KEY = "paywarden-audit-seq"
AP2_RECEIPT_KEY = "paywarden-ap2-receipt"

_CODES: dict[type[PaywardenError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotAuthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Denied: grpc.StatusCode.PERMISSION_DENIED,
    SessionNotUsable: grpc.StatusCode.FAILED_PRECONDITION,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    # The request is well formed and the caller may make it; the key version's state
    # refuses it, and naming the active version (or the label) is the fix.
    KeyNotActive: grpc.StatusCode.FAILED_PRECONDITION,
    Replayed: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Internal: grpc.StatusCode.INTERNAL,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def status_code_for(error: PaywardenError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def to_grpc_status(error: PaywardenError) -> grpc.Status:
    code = status_code_for(error)
    info = error_details_pb2.ErrorInfo(reason=str(error.reason), domain=ERROR_DOMAIN)
    if error.decision_id:
        info.metadata["decision_id"] = error.decision_id
    if error.receipt:
        info.metadata["ap2_receipt"] = error.receipt
    detail = any_pb2.Any()
    detail.Pack(info)
    proto = status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.diagnostics(), details=[detail]
    )
    metadata: list[tuple[str, str | bytes]] = [
        ("grpc-status-details-bin", proto.SerializeToString()),
        (REASON_KEY, str(error.reason)),
    ]
    if error.decision_id:
        metadata.append((DECISION_KEY, error.decision_id))
    if error.audit_seq is not None:
        metadata.append((AUDIT_KEY, str(error.audit_seq)))
    if error.receipt:
        metadata.append((AP2_RECEIPT_KEY, error.receipt))
    return _Status(code, error.diagnostics(), tuple(metadata))

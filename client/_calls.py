"""The RPCs the SDK calls, bound without the generated stubs, and refusals decoded.

Every method is a path and its message classes, so the same table serves blocking and asyncio
channels, and a method the generated stubs do not list yet (``GetReceipt``) is called the same
way as the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from paywarden.client.errors import CallError, Refusal
from paywarden.v1 import approvals_pb2, control_pb2, sessions_pb2, signer_pb2

ERROR_DOMAIN = "paywarden.dev"
REASON_KEY = "paywarden-reason"
DECISION_KEY = "paywarden-decision-id"
AUDIT_KEY = "paywarden-audit-seq"
DETAILS_KEY = "grpc-status-details-bin"
AP2_RECEIPT_KEY = "paywarden-ap2-receipt"

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


@dataclass(frozen=True)
class Method(Generic[Req, Resp]):
    """One unary RPC: its full path and the class of its response."""

    path: str
    response: type[Resp]

    def on(self, channel: grpc.Channel) -> Callable[..., Resp]:
        """The RPC on a blocking channel: ``f(request, timeout=...) -> response``."""
        return cast("Callable[..., Resp]", self._bind(channel))

    def on_aio(self, channel: grpc.aio.Channel) -> Callable[..., Awaitable[Resp]]:
        """The RPC on an asyncio channel: ``await f(request, timeout=...)``."""
        return cast("Callable[..., Awaitable[Resp]]", self._bind(channel))

    def _bind(self, channel: grpc.Channel | grpc.aio.Channel) -> object:
        return channel.unary_unary(
            self.path,
            request_serializer=_serialize,
            response_deserializer=self.response.FromString,
        )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _m(service: str, name: str, response: type[Resp]) -> Method[Any, Resp]:
    return Method(f"/paywarden.v1.{service}/{name}", response)


SIGN = _m("Signer", "Sign", signer_pb2.SignResponse)
GET_PUBLIC_KEYS = _m("Signer", "GetPublicKeys", signer_pb2.GetPublicKeysResponse)
GET_RECEIPT = _m("Signer", "GetReceipt", signer_pb2.GetReceiptResponse)
SIGN_X402 = _m("Signer", "SignX402", signer_pb2.SignX402Response)

OPEN_SESSION = _m("Sessions", "OpenSession", sessions_pb2.OpenSessionResponse)
GET_SESSION = _m("Sessions", "GetSession", sessions_pb2.GetSessionResponse)
CLOSE_SESSION = _m("Sessions", "CloseSession", sessions_pb2.CloseSessionResponse)
COMMIT_PLAN = _m("Sessions", "CommitPlan", sessions_pb2.CommitPlanResponse)

LIST_PENDING = _m("Approvals", "ListPending", approvals_pb2.ListPendingResponse)
GET_APPROVAL = _m("Approvals", "GetApproval", approvals_pb2.GetApprovalResponse)
APPROVE = _m("Approvals", "Approve", approvals_pb2.ApproveResponse)
DENY = _m("Approvals", "Deny", approvals_pb2.DenyResponse)

FREEZE = _m("Control", "Freeze", control_pb2.FreezeResponse)
UNFREEZE = _m("Control", "Unfreeze", control_pb2.UnfreezeResponse)
LIST_FREEZES = _m("Control", "ListFreezes", control_pb2.ListFreezesResponse)
REVOKE_IDENTITY = _m("Control", "RevokeIdentity", control_pb2.RevokeIdentityResponse)
LIST_REVOCATIONS = _m("Control", "ListRevocations", control_pb2.ListRevocationsResponse)
CHECKPOINT = _m("Control", "Checkpoint", control_pb2.CheckpointResponse)
INCLUSION_PROOF = _m("Control", "InclusionProof", control_pb2.InclusionProofResponse)
CONSISTENCY_PROOF = _m("Control", "ConsistencyProof", control_pb2.ConsistencyProofResponse)
EXPLAIN_AGENT = _m("Control", "ExplainAgent", control_pb2.ExplainAgentResponse)
RELOAD_POLICY = _m("Control", "ReloadPolicy", control_pb2.ReloadPolicyResponse)
CONFIRM_RELOAD = _m("Control", "ConfirmReload", control_pb2.ReloadPolicyResponse)
GET_RELOAD = _m("Control", "GetReload", control_pb2.ReloadPolicyResponse)


class _Failed(Protocol):
    """What a failed call offers, blocking (``grpc.Call``) or asyncio (``AioRpcError``)."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Any: ...


def refusal_of(err: grpc.RpcError) -> Refusal:
    """The status, message and the signer's reason code, decision id and audit sequence
    number of a failed call; the ``paywarden.dev`` ErrorInfo detail and the trailing metadata
    are both read (the metadata wins where both say something)."""
    failed = cast(_Failed, err)
    items = cast("Iterable[tuple[str, str | bytes]]", failed.trailing_metadata() or ())
    metadata = {str(key): value for key, value in items}
    info = _error_info(metadata.get(DETAILS_KEY))
    reason = _text(metadata.get(REASON_KEY))
    decision = _text(metadata.get(DECISION_KEY))
    domain = None
    if info is not None:
        domain = str(info.domain)
        if info.domain == ERROR_DOMAIN:
            reason = reason or str(info.reason) or None
            decision = decision or str(info.metadata.get("decision_id", "")) or None
    seq = _text(metadata.get(AUDIT_KEY))
    receipt = _text(metadata.get(AP2_RECEIPT_KEY))
    if receipt is None and info is not None and info.domain == ERROR_DOMAIN:
        receipt = str(info.metadata.get("ap2_receipt", "")) or None
    return Refusal(
        code=failed.code(),
        message=failed.details() or "",
        reason=reason,
        decision_id=decision,
        audit_seq=int(seq) if seq is not None and seq.isdigit() else None,
        domain=domain,
        ap2_receipt=receipt,
    )


def call_error(err: grpc.RpcError) -> CallError:
    """``err`` as the SDK's :class:`CallError`."""
    return CallError(refusal_of(err))


def _text(value: str | bytes | None) -> str | None:
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text or None


def _error_info(blob: str | bytes | None) -> Any:
    """The ErrorInfo of a ``grpc-status-details-bin`` value, or None (also when malformed)."""
    if not isinstance(blob, bytes):
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(blob)
    except DecodeError:  # a malformed detail is worth no more than a missing one
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None

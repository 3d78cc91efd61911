from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Approval(_message.Message):
    __slots__ = ("approval_id", "decision_id", "state", "agent_id", "session_id", "planner_id", "canonical_payload", "payee", "amount", "asset", "key_id", "reason", "trace_json", "untrusted_purpose", "approvals_required", "approved_by", "denied_by", "denial_note", "created_at", "expires_at", "pack_id", "pack_version", "pack_sha256")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PLANNER_ID_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TRACE_JSON_FIELD_NUMBER: _ClassVar[int]
    UNTRUSTED_PURPOSE_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    APPROVED_BY_FIELD_NUMBER: _ClassVar[int]
    DENIED_BY_FIELD_NUMBER: _ClassVar[int]
    DENIAL_NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PACK_ID_FIELD_NUMBER: _ClassVar[int]
    PACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACK_SHA256_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    decision_id: str
    state: str
    agent_id: str
    session_id: str
    planner_id: str
    canonical_payload: bytes
    payee: str
    amount: str
    asset: str
    key_id: str
    reason: str
    trace_json: str
    untrusted_purpose: str
    approvals_required: int
    approved_by: _containers.RepeatedScalarFieldContainer[str]
    denied_by: str
    denial_note: str
    created_at: int
    expires_at: int
    pack_id: str
    pack_version: int
    pack_sha256: str
    def __init__(self, approval_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., state: _Optional[str] = ..., agent_id: _Optional[str] = ..., session_id: _Optional[str] = ..., planner_id: _Optional[str] = ..., canonical_payload: _Optional[bytes] = ..., payee: _Optional[str] = ..., amount: _Optional[str] = ..., asset: _Optional[str] = ..., key_id: _Optional[str] = ..., reason: _Optional[str] = ..., trace_json: _Optional[str] = ..., untrusted_purpose: _Optional[str] = ..., approvals_required: _Optional[int] = ..., approved_by: _Optional[_Iterable[str]] = ..., denied_by: _Optional[str] = ..., denial_note: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., pack_id: _Optional[str] = ..., pack_version: _Optional[int] = ..., pack_sha256: _Optional[str] = ...) -> None: ...

class ListPendingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPendingResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class GetApprovalRequest(_message.Message):
    __slots__ = ("approval_id",)
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    def __init__(self, approval_id: _Optional[str] = ...) -> None: ...

class GetApprovalResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class ApproveRequest(_message.Message):
    __slots__ = ("approval_id", "note")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    note: str
    def __init__(self, approval_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ApproveResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class DenyRequest(_message.Message):
    __slots__ = ("approval_id", "note")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    note: str
    def __init__(self, approval_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class DenyResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

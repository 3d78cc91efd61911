from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FreezeScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FREEZE_SCOPE_UNSPECIFIED: _ClassVar[FreezeScope]
    GLOBAL: _ClassVar[FreezeScope]
    AGENT: _ClassVar[FreezeScope]
    SESSION: _ClassVar[FreezeScope]
    KEY: _ClassVar[FreezeScope]

class ReloadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELOAD_STATE_UNSPECIFIED: _ClassVar[ReloadState]
    RELOAD_APPLIED: _ClassVar[ReloadState]
    RELOAD_UNCHANGED: _ClassVar[ReloadState]
    RELOAD_PENDING: _ClassVar[ReloadState]
    RELOAD_SETTLED: _ClassVar[ReloadState]
FREEZE_SCOPE_UNSPECIFIED: FreezeScope
GLOBAL: FreezeScope
AGENT: FreezeScope
SESSION: FreezeScope
KEY: FreezeScope
RELOAD_STATE_UNSPECIFIED: ReloadState
RELOAD_APPLIED: ReloadState
RELOAD_UNCHANGED: ReloadState
RELOAD_PENDING: ReloadState
RELOAD_SETTLED: ReloadState

class FreezeRecord(_message.Message):
    __slots__ = ("scope", "target", "reason", "actor", "at")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    scope: FreezeScope
    target: str
    reason: str
    actor: str
    at: int
    def __init__(self, scope: _Optional[_Union[FreezeScope, str]] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., at: _Optional[int] = ...) -> None: ...

class FreezeRequest(_message.Message):
    __slots__ = ("scope", "target", "reason")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scope: FreezeScope
    target: str
    reason: str
    def __init__(self, scope: _Optional[_Union[FreezeScope, str]] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FreezeResponse(_message.Message):
    __slots__ = ("freeze", "created")
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    freeze: FreezeRecord
    created: bool
    def __init__(self, freeze: _Optional[_Union[FreezeRecord, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class UnfreezeRequest(_message.Message):
    __slots__ = ("scope", "target", "reason")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scope: FreezeScope
    target: str
    reason: str
    def __init__(self, scope: _Optional[_Union[FreezeScope, str]] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UnfreezeResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListFreezesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFreezesResponse(_message.Message):
    __slots__ = ("freezes",)
    FREEZES_FIELD_NUMBER: _ClassVar[int]
    freezes: _containers.RepeatedCompositeFieldContainer[FreezeRecord]
    def __init__(self, freezes: _Optional[_Iterable[_Union[FreezeRecord, _Mapping]]] = ...) -> None: ...

class RevocationRecord(_message.Message):
    __slots__ = ("principal_id", "cert_serial", "reason", "operator", "at")
    PRINCIPAL_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    principal_id: str
    cert_serial: str
    reason: str
    operator: str
    at: int
    def __init__(self, principal_id: _Optional[str] = ..., cert_serial: _Optional[str] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., at: _Optional[int] = ...) -> None: ...

class RevokeIdentityRequest(_message.Message):
    __slots__ = ("principal_id", "cert_serial", "reason")
    PRINCIPAL_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_SERIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    principal_id: str
    cert_serial: str
    reason: str
    def __init__(self, principal_id: _Optional[str] = ..., cert_serial: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeIdentityResponse(_message.Message):
    __slots__ = ("revocation", "created")
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    revocation: RevocationRecord
    created: bool
    def __init__(self, revocation: _Optional[_Union[RevocationRecord, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class RevokeMandateRequest(_message.Message):
    __slots__ = ("mandate_id", "agent_key_thumbprint", "reason")
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_KEY_THUMBPRINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    mandate_id: str
    agent_key_thumbprint: str
    reason: str
    def __init__(self, mandate_id: _Optional[str] = ..., agent_key_thumbprint: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class MandateRevocationRecord(_message.Message):
    __slots__ = ("mandate_id", "agent_key_thumbprint", "reason", "operator", "at")
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_KEY_THUMBPRINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    mandate_id: str
    agent_key_thumbprint: str
    reason: str
    operator: str
    at: int
    def __init__(self, mandate_id: _Optional[str] = ..., agent_key_thumbprint: _Optional[str] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., at: _Optional[int] = ...) -> None: ...

class RevokeMandateResponse(_message.Message):
    __slots__ = ("revocation", "created", "mandates_revoked")
    REVOCATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MANDATES_REVOKED_FIELD_NUMBER: _ClassVar[int]
    revocation: MandateRevocationRecord
    created: bool
    mandates_revoked: int
    def __init__(self, revocation: _Optional[_Union[MandateRevocationRecord, _Mapping]] = ..., created: _Optional[bool] = ..., mandates_revoked: _Optional[int] = ...) -> None: ...

class ListRevocationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRevocationsResponse(_message.Message):
    __slots__ = ("revocations",)
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[RevocationRecord]
    def __init__(self, revocations: _Optional[_Iterable[_Union[RevocationRecord, _Mapping]]] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SignedCheckpoint(_message.Message):
    __slots__ = ("tree_size", "root_hash", "time", "key_id", "body", "signature")
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    tree_size: int
    root_hash: str
    time: int
    key_id: str
    body: str
    signature: str
    def __init__(self, tree_size: _Optional[int] = ..., root_hash: _Optional[str] = ..., time: _Optional[int] = ..., key_id: _Optional[str] = ..., body: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "audit_public_key_pem")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    checkpoint: SignedCheckpoint
    audit_public_key_pem: str
    def __init__(self, checkpoint: _Optional[_Union[SignedCheckpoint, _Mapping]] = ..., audit_public_key_pem: _Optional[str] = ...) -> None: ...

class InclusionProofRequest(_message.Message):
    __slots__ = ("seq", "tree_size")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    tree_size: int
    def __init__(self, seq: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProofResponse(_message.Message):
    __slots__ = ("record", "leaf_hash", "tree_size", "root_hash", "proof")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    record: str
    leaf_hash: str
    tree_size: int
    root_hash: str
    proof: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, record: _Optional[str] = ..., leaf_hash: _Optional[str] = ..., tree_size: _Optional[int] = ..., root_hash: _Optional[str] = ..., proof: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencyProofRequest(_message.Message):
    __slots__ = ("first", "second")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    SECOND_FIELD_NUMBER: _ClassVar[int]
    first: int
    second: int
    def __init__(self, first: _Optional[int] = ..., second: _Optional[int] = ...) -> None: ...

class ConsistencyProofResponse(_message.Message):
    __slots__ = ("first_root", "second_root", "proof")
    FIRST_ROOT_FIELD_NUMBER: _ClassVar[int]
    SECOND_ROOT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    first_root: str
    second_root: str
    proof: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, first_root: _Optional[str] = ..., second_root: _Optional[str] = ..., proof: _Optional[_Iterable[str]] = ...) -> None: ...

class ExplainAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ExplainAgentResponse(_message.Message):
    __slots__ = ("agent_id", "covered", "document")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    COVERED_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    covered: bool
    document: str
    def __init__(self, agent_id: _Optional[str] = ..., covered: _Optional[bool] = ..., document: _Optional[str] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfirmReloadRequest(_message.Message):
    __slots__ = ("reload_id", "new_sha256")
    RELOAD_ID_FIELD_NUMBER: _ClassVar[int]
    NEW_SHA256_FIELD_NUMBER: _ClassVar[int]
    reload_id: str
    new_sha256: str
    def __init__(self, reload_id: _Optional[str] = ..., new_sha256: _Optional[str] = ...) -> None: ...

class GetReloadRequest(_message.Message):
    __slots__ = ("reload_id",)
    RELOAD_ID_FIELD_NUMBER: _ClassVar[int]
    reload_id: str
    def __init__(self, reload_id: _Optional[str] = ...) -> None: ...

class PolicyPackRef(_message.Message):
    __slots__ = ("id", "version", "sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    sha256: str
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("subject", "field", "direction", "description")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    subject: str
    field: str
    direction: str
    description: str
    def __init__(self, subject: _Optional[str] = ..., field: _Optional[str] = ..., direction: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("state", "reload_id", "old_sha256", "new_sha256", "old_packs", "new_packs", "widens", "changes", "needs_second_operator", "expires_at", "proposed_by")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RELOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_SHA256_FIELD_NUMBER: _ClassVar[int]
    NEW_SHA256_FIELD_NUMBER: _ClassVar[int]
    OLD_PACKS_FIELD_NUMBER: _ClassVar[int]
    NEW_PACKS_FIELD_NUMBER: _ClassVar[int]
    WIDENS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    NEEDS_SECOND_OPERATOR_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_BY_FIELD_NUMBER: _ClassVar[int]
    state: ReloadState
    reload_id: str
    old_sha256: str
    new_sha256: str
    old_packs: _containers.RepeatedCompositeFieldContainer[PolicyPackRef]
    new_packs: _containers.RepeatedCompositeFieldContainer[PolicyPackRef]
    widens: bool
    changes: _containers.RepeatedCompositeFieldContainer[PolicyChange]
    needs_second_operator: bool
    expires_at: int
    proposed_by: str
    def __init__(self, state: _Optional[_Union[ReloadState, str]] = ..., reload_id: _Optional[str] = ..., old_sha256: _Optional[str] = ..., new_sha256: _Optional[str] = ..., old_packs: _Optional[_Iterable[_Union[PolicyPackRef, _Mapping]]] = ..., new_packs: _Optional[_Iterable[_Union[PolicyPackRef, _Mapping]]] = ..., widens: _Optional[bool] = ..., changes: _Optional[_Iterable[_Union[PolicyChange, _Mapping]]] = ..., needs_second_operator: _Optional[bool] = ..., expires_at: _Optional[int] = ..., proposed_by: _Optional[str] = ...) -> None: ...

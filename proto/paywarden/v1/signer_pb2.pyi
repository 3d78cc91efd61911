from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGN_STATUS_UNSPECIFIED: _ClassVar[SignStatus]
    SIGNED: _ClassVar[SignStatus]
    PENDING_APPROVAL: _ClassVar[SignStatus]
SIGN_STATUS_UNSPECIFIED: SignStatus
SIGNED: SignStatus
PENDING_APPROVAL: SignStatus

class PaymentIntent(_message.Message):
    __slots__ = ("session_id", "key_id", "payee", "amount", "asset", "reference", "purpose", "nonce", "expires_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    key_id: str
    payee: str
    amount: str
    asset: str
    reference: str
    purpose: str
    nonce: str
    expires_at: int
    def __init__(self, session_id: _Optional[str] = ..., key_id: _Optional[str] = ..., payee: _Optional[str] = ..., amount: _Optional[str] = ..., asset: _Optional[str] = ..., reference: _Optional[str] = ..., purpose: _Optional[str] = ..., nonce: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class SignRequest(_message.Message):
    __slots__ = ("intent",)
    INTENT_FIELD_NUMBER: _ClassVar[int]
    intent: PaymentIntent
    def __init__(self, intent: _Optional[_Union[PaymentIntent, _Mapping]] = ...) -> None: ...

class SignResponse(_message.Message):
    __slots__ = ("status", "approval_id", "jws", "decision_id", "key_id", "canonical_payload", "replayed_result", "audit_seq")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    JWS_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_RESULT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    status: SignStatus
    approval_id: str
    jws: str
    decision_id: str
    key_id: str
    canonical_payload: bytes
    replayed_result: bool
    audit_seq: int
    def __init__(self, status: _Optional[_Union[SignStatus, str]] = ..., approval_id: _Optional[str] = ..., jws: _Optional[str] = ..., decision_id: _Optional[str] = ..., key_id: _Optional[str] = ..., canonical_payload: _Optional[bytes] = ..., replayed_result: _Optional[bool] = ..., audit_seq: _Optional[int] = ...) -> None: ...

class GetPublicKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPublicKeysResponse(_message.Message):
    __slots__ = ("jwks_json", "keys")
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    jwks_json: str
    keys: _containers.RepeatedCompositeFieldContainer[PublicKey]
    def __init__(self, jwks_json: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[PublicKey, _Mapping]]] = ...) -> None: ...

class PublicKey(_message.Message):
    __slots__ = ("key_id", "algorithm", "spki_pem", "state", "revoked_at")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SPKI_PEM_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    algorithm: str
    spki_pem: str
    state: str
    revoked_at: int
    def __init__(self, key_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., spki_pem: _Optional[str] = ..., state: _Optional[str] = ..., revoked_at: _Optional[int] = ...) -> None: ...

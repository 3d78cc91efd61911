from paywarden.v1 import control_pb2 as _control_pb2
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

class PaymentStanding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYMENT_STANDING_UNSPECIFIED: _ClassVar[PaymentStanding]
    VALID: _ClassVar[PaymentStanding]
    VOIDED: _ClassVar[PaymentStanding]
    EXPIRED: _ClassVar[PaymentStanding]
SIGN_STATUS_UNSPECIFIED: SignStatus
SIGNED: SignStatus
PENDING_APPROVAL: SignStatus
PAYMENT_STANDING_UNSPECIFIED: PaymentStanding
VALID: PaymentStanding
VOIDED: PaymentStanding
EXPIRED: PaymentStanding

class X402PaymentRequirements(_message.Message):
    __slots__ = ("x402_version", "scheme", "network", "asset", "pay_to", "amount", "resource", "max_timeout_seconds", "extra_name", "extra_version", "extra_json")
    X402_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    PAY_TO_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_NAME_FIELD_NUMBER: _ClassVar[int]
    EXTRA_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    x402_version: int
    scheme: str
    network: str
    asset: str
    pay_to: str
    amount: str
    resource: str
    max_timeout_seconds: int
    extra_name: str
    extra_version: str
    extra_json: str
    def __init__(self, x402_version: _Optional[int] = ..., scheme: _Optional[str] = ..., network: _Optional[str] = ..., asset: _Optional[str] = ..., pay_to: _Optional[str] = ..., amount: _Optional[str] = ..., resource: _Optional[str] = ..., max_timeout_seconds: _Optional[int] = ..., extra_name: _Optional[str] = ..., extra_version: _Optional[str] = ..., extra_json: _Optional[str] = ...) -> None: ...

class SignX402Request(_message.Message):
    __slots__ = ("session_id", "key_id", "requirements", "reference", "purpose", "nonce", "expires_at")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    key_id: str
    requirements: X402PaymentRequirements
    reference: str
    purpose: str
    nonce: str
    expires_at: int
    def __init__(self, session_id: _Optional[str] = ..., key_id: _Optional[str] = ..., requirements: _Optional[_Union[X402PaymentRequirements, _Mapping]] = ..., reference: _Optional[str] = ..., purpose: _Optional[str] = ..., nonce: _Optional[str] = ..., expires_at: _Optional[int] = ...) -> None: ...

class SignX402Response(_message.Message):
    __slots__ = ("status", "approval_id", "x_payment", "payment_payload_json", "decision_id", "key_id", "from_address", "replayed_result", "audit_seq")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    X_PAYMENT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_RESULT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    status: SignStatus
    approval_id: str
    x_payment: str
    payment_payload_json: str
    decision_id: str
    key_id: str
    from_address: str
    replayed_result: bool
    audit_seq: int
    def __init__(self, status: _Optional[_Union[SignStatus, str]] = ..., approval_id: _Optional[str] = ..., x_payment: _Optional[str] = ..., payment_payload_json: _Optional[str] = ..., decision_id: _Optional[str] = ..., key_id: _Optional[str] = ..., from_address: _Optional[str] = ..., replayed_result: _Optional[bool] = ..., audit_seq: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("jwks_json", "keys", "evm_keys")
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    EVM_KEYS_FIELD_NUMBER: _ClassVar[int]
    jwks_json: str
    keys: _containers.RepeatedCompositeFieldContainer[PublicKey]
    evm_keys: _containers.RepeatedCompositeFieldContainer[EvmKey]
    def __init__(self, jwks_json: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[PublicKey, _Mapping]]] = ..., evm_keys: _Optional[_Iterable[_Union[EvmKey, _Mapping]]] = ...) -> None: ...

class EvmKey(_message.Message):
    __slots__ = ("key_id", "address", "state")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    address: str
    state: str
    def __init__(self, key_id: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

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

class CheckPaymentRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class CheckPaymentResponse(_message.Message):
    __slots__ = ("standing", "reason", "detail", "decision_id", "payee", "amount", "asset", "key_id", "expires_at", "checked_at")
    STANDING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    standing: PaymentStanding
    reason: str
    detail: str
    decision_id: str
    payee: str
    amount: str
    asset: str
    key_id: str
    expires_at: int
    checked_at: int
    def __init__(self, standing: _Optional[_Union[PaymentStanding, str]] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., decision_id: _Optional[str] = ..., payee: _Optional[str] = ..., amount: _Optional[str] = ..., asset: _Optional[str] = ..., key_id: _Optional[str] = ..., expires_at: _Optional[int] = ..., checked_at: _Optional[int] = ...) -> None: ...

class GetReceiptRequest(_message.Message):
    __slots__ = ("decision_id", "audit_seq")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SEQ_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    audit_seq: int
    def __init__(self, decision_id: _Optional[str] = ..., audit_seq: _Optional[int] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("body", "signature", "key_id")
    BODY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    body: str
    signature: str
    key_id: str
    def __init__(self, body: _Optional[str] = ..., signature: _Optional[str] = ..., key_id: _Optional[str] = ...) -> None: ...

class GetReceiptResponse(_message.Message):
    __slots__ = ("receipt", "checkpoint", "inclusion_proof", "audit_public_key_pem")
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INCLUSION_PROOF_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    receipt: Receipt
    checkpoint: _control_pb2.SignedCheckpoint
    inclusion_proof: _containers.RepeatedScalarFieldContainer[str]
    audit_public_key_pem: str
    def __init__(self, receipt: _Optional[_Union[Receipt, _Mapping]] = ..., checkpoint: _Optional[_Union[_control_pb2.SignedCheckpoint, _Mapping]] = ..., inclusion_proof: _Optional[_Iterable[str]] = ..., audit_public_key_pem: _Optional[str] = ...) -> None: ...

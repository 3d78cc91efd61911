from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssetBudget(_message.Message):
    __slots__ = ("asset", "amount")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    asset: str
    amount: str
    def __init__(self, asset: _Optional[str] = ..., amount: _Optional[str] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("agent_id", "task_description", "budgets", "ttl_seconds", "allowed_payees", "plan_bound", "mandate")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_PAYEES_FIELD_NUMBER: _ClassVar[int]
    PLAN_BOUND_FIELD_NUMBER: _ClassVar[int]
    MANDATE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    task_description: str
    budgets: _containers.RepeatedCompositeFieldContainer[AssetBudget]
    ttl_seconds: int
    allowed_payees: _containers.RepeatedScalarFieldContainer[str]
    plan_bound: bool
    mandate: str
    def __init__(self, agent_id: _Optional[str] = ..., task_description: _Optional[str] = ..., budgets: _Optional[_Iterable[_Union[AssetBudget, _Mapping]]] = ..., ttl_seconds: _Optional[int] = ..., allowed_payees: _Optional[_Iterable[str]] = ..., plan_bound: _Optional[bool] = ..., mandate: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class GetSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

class AssetSpend(_message.Message):
    __slots__ = ("asset", "budget", "spent")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    asset: str
    budget: str
    spent: str
    def __init__(self, asset: _Optional[str] = ..., budget: _Optional[str] = ..., spent: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "agent_id", "planner_id", "task_digest", "created_at", "expires_at", "state", "spend", "allowed_payees", "phase", "pack_id", "plan", "mandate_id", "mandate")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PLANNER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_PAYEES_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PACK_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    MANDATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    agent_id: str
    planner_id: str
    task_digest: str
    created_at: int
    expires_at: int
    state: str
    spend: _containers.RepeatedCompositeFieldContainer[AssetSpend]
    allowed_payees: _containers.RepeatedScalarFieldContainer[str]
    phase: str
    pack_id: str
    plan: _containers.RepeatedCompositeFieldContainer[PlanLine]
    mandate_id: str
    mandate: MandateLedger
    def __init__(self, session_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., planner_id: _Optional[str] = ..., task_digest: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., state: _Optional[str] = ..., spend: _Optional[_Iterable[_Union[AssetSpend, _Mapping]]] = ..., allowed_payees: _Optional[_Iterable[str]] = ..., phase: _Optional[str] = ..., pack_id: _Optional[str] = ..., plan: _Optional[_Iterable[_Union[PlanLine, _Mapping]]] = ..., mandate_id: _Optional[str] = ..., mandate: _Optional[_Union[MandateLedger, _Mapping]] = ...) -> None: ...

class MandateLedger(_message.Message):
    __slots__ = ("asset", "budget", "spent", "uses", "max_uses", "expires_at", "revoked")
    ASSET_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    asset: str
    budget: str
    spent: str
    uses: int
    max_uses: int
    expires_at: int
    revoked: bool
    def __init__(self, asset: _Optional[str] = ..., budget: _Optional[str] = ..., spent: _Optional[str] = ..., uses: _Optional[int] = ..., max_uses: _Optional[int] = ..., expires_at: _Optional[int] = ..., revoked: _Optional[bool] = ...) -> None: ...

class PlanLine(_message.Message):
    __slots__ = ("payee", "asset", "max_amount", "count", "used")
    PAYEE_FIELD_NUMBER: _ClassVar[int]
    ASSET_FIELD_NUMBER: _ClassVar[int]
    MAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    payee: str
    asset: str
    max_amount: str
    count: int
    used: int
    def __init__(self, payee: _Optional[str] = ..., asset: _Optional[str] = ..., max_amount: _Optional[str] = ..., count: _Optional[int] = ..., used: _Optional[int] = ...) -> None: ...

class CommitPlanRequest(_message.Message):
    __slots__ = ("session_id", "lines")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    lines: _containers.RepeatedCompositeFieldContainer[PlanLine]
    def __init__(self, session_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[PlanLine, _Mapping]]] = ...) -> None: ...

class CommitPlanResponse(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: Session
    def __init__(self, session: _Optional[_Union[Session, _Mapping]] = ...) -> None: ...

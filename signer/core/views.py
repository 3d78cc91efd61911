"""What the core's use cases answer: plain values the api layer turns into protos."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from paywarden.policy.vocabulary import ApprovalStatus, SessionState
from paywarden.policy.vocabulary import SignStatus as SignStatus
from paywarden.signer.store.records import (
    ApprovalRecord,
    DecisionRecord,
    MandateRecord,
    MandateUse,
    SessionRecord,
)


@dataclass(frozen=True, slots=True)
class SignResult:
    status: SignStatus
    decision_id: str
    key_id: str
    payload: bytes
    replayed: bool
    jws: str = ""
    approval_id: str = ""
    audit_seq: int = 0


@dataclass(frozen=True, slots=True)
class SessionView:
    record: SessionRecord
    state: SessionState
    decimals: Mapping[str, int]
    # the session's mandate and its use now, over every session of it (None: no mandate)
    mandate: tuple[MandateRecord, MandateUse] | None = None


@dataclass(frozen=True, slots=True)
class ApprovalView:
    approval: ApprovalRecord
    state: ApprovalStatus
    decision: DecisionRecord
    session: SessionRecord
    amount: str

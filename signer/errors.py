"""Every failure the signer reports, each with a machine-readable reason code.

Callers catch :class:`PaywardenError`; the gRPC layer maps each subclass to
one status code in :mod:`paywarden.signer.api.status` and nowhere else.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # authentication / authorisation
    NO_IDENTITY = "NO_IDENTITY"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    SESSION_AGENT_MISMATCH = "SESSION_AGENT_MISMATCH"
    SESSION_PLANNER_MISMATCH = "SESSION_PLANNER_MISMATCH"
    # input validation
    FIELD_MISSING = "FIELD_MISSING"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    AMOUNT_MALFORMED = "AMOUNT_MALFORMED"
    AMOUNT_NOT_POSITIVE = "AMOUNT_NOT_POSITIVE"
    AMOUNT_TOO_PRECISE = "AMOUNT_TOO_PRECISE"
    AMOUNT_TOO_LARGE = "AMOUNT_TOO_LARGE"
    STRING_TOO_LONG = "STRING_TOO_LONG"
    STRING_EMPTY = "STRING_EMPTY"
    STRING_CONTROL_CHAR = "STRING_CONTROL_CHAR"
    STRING_INVALID = "STRING_INVALID"
    NONCE_MALFORMED = "NONCE_MALFORMED"
    UNKNOWN_ASSET = "UNKNOWN_ASSET"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    BUDGET_INVALID = "BUDGET_INVALID"
    TTL_INVALID = "TTL_INVALID"
    SESSION_ID_MALFORMED = "SESSION_ID_MALFORMED"
    # replay guard
    EXPIRY_IN_PAST = "EXPIRY_IN_PAST"
    EXPIRY_TOO_FAR = "EXPIRY_TOO_FAR"
    EXPIRY_AFTER_SESSION = "EXPIRY_AFTER_SESSION"
    NONCE_REPLAYED = "NONCE_REPLAYED"
    # sessions and policy
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    SESSION_CLOSED = "SESSION_CLOSED"
    SESSION_EXPIRED = "SESSION_EXPIRED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    ASSET_NOT_IN_SESSION = "ASSET_NOT_IN_SESSION"
    PAYEE_NOT_IN_SESSION = "PAYEE_NOT_IN_SESSION"
    POLICY_NO_RULE_ALLOWED = "POLICY_NO_RULE_ALLOWED"
    # infrastructure
    HSM_UNAVAILABLE = "HSM_UNAVAILABLE"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    # policy packs, approvals and plans (rule reason codes live in paywarden.policy)
    NO_POLICY_PACK = "NO_POLICY_PACK"
    SESSION_PACK_CHANGED = "SESSION_PACK_CHANGED"
    APPROVAL_NOT_FOUND = "APPROVAL_NOT_FOUND"
    APPROVAL_NOT_PENDING = "APPROVAL_NOT_PENDING"
    APPROVAL_DENIED = "APPROVAL_DENIED"
    APPROVAL_EXPIRED = "APPROVAL_EXPIRED"
    APPROVER_IS_REQUESTER = "APPROVER_IS_REQUESTER"
    APPROVER_IS_PLANNER = "APPROVER_IS_PLANNER"
    PLAN_INVALID = "PLAN_INVALID"
    SESSION_NOT_EXPLORING = "SESSION_NOT_EXPLORING"
    FROZEN = "FROZEN"
    PAYMENT_WITHDRAWN = "PAYMENT_WITHDRAWN"
    # the client certificate is not a client leaf issued directly by the client CA
    CLIENT_CERT_PROFILE = "CLIENT_CERT_PROFILE"
    # admission: the worker threads are shared out (signer/api/admission.py)
    SERVER_BUSY = "SERVER_BUSY"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    TOO_MANY_CALLS = "TOO_MANY_CALLS"
    # the principal spent its refusal budget: refused before its request is read
    RATE_LIMITED = "RATE_LIMITED"
    # the caller's deadline passed, or it cancelled: nothing was decided or signed
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CALL_CANCELLED = "CALL_CANCELLED"
    SHUTTING_DOWN = "SHUTTING_DOWN"


class PaywardenError(Exception):
    """Base of every signer failure: a reason code and a message safe to show."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        decision_id: str | None = None,
        audit_seq: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.decision_id = decision_id
        self.audit_seq = audit_seq  # the audit record of this answer, once written

    def diagnostics(self) -> str:
        return f"[{self.reason}] {self.message}"

    def __str__(self) -> str:
        return self.diagnostics()


class InvalidInput(PaywardenError):
    """The request is malformed: nothing was recorded or signed."""


class NotAuthenticated(PaywardenError):
    """The caller presented no usable identity."""


class Forbidden(PaywardenError):
    """The caller's role or identity may not do this."""


class NotFound(PaywardenError):
    """The named object does not exist (or is not visible to the caller)."""


class Denied(PaywardenError):
    """The policy denied the payment (the decision is recorded)."""


class SessionNotUsable(PaywardenError):
    """The session is closed or expired (the decision is recorded)."""


class Replayed(PaywardenError):
    """The nonce was used before, with a different request."""


class Unavailable(PaywardenError):
    """A dependency (HSM, store) cannot be used now; nothing was signed."""


class Internal(PaywardenError):
    """A bug: deny, say nothing more."""


class Overloaded(PaywardenError):
    """The caller has its share of the server in use; nothing was done, retry later."""


class RateLimited(PaywardenError):
    """The caller was refused too often lately; nothing was read or recorded in full."""


class DeadlineExceeded(PaywardenError):
    """The caller gave up (deadline passed or cancelled): nothing was decided or signed."""


class Cancelled(DeadlineExceeded):
    """The caller cancelled the call: nothing was decided or signed."""

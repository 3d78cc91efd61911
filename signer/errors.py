"""Every failure the signer reports, each with a machine-readable reason code.

Callers catch :class:`PaywardenError`; the gRPC layer maps each subclass to
one status code in :mod:`paywarden.signer.api.status` and nowhere else. The
reason codes are :class:`paywarden.policy.vocabulary.Reason`, re-exported here.
"""

from __future__ import annotations

from paywarden.policy.vocabulary import Reason as Reason


class PaywardenError(Exception):
    """Base of every signer failure: a reason code and a message safe to show."""

    def __init__(
        self,
        reason: Reason,
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
        # An AP2 error receipt (compact JWS by the audit key) of a refused mandate.
        self.receipt: str | None = None

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


class PreconditionFailed(PaywardenError):
    """The request does not fit the state as it is now (an invalid policy pack, a reload
    that is stale, expired or settled): nothing changed."""


class Replayed(PaywardenError):
    """The nonce was used before, with a different request."""


class KeyNotActive(PaywardenError):
    """The key version named is verify-only, revoked or destroyed (or the label named
    has no active version): nothing was recorded or signed."""


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

"""Every failure the SDK reports derives from :class:`ClientError`.

Callers catch :class:`ClientError`; each subclass says what went wrong and can explain itself
(:meth:`ClientError.diagnostics`). A refusal by the signer is a :class:`CallError` carrying the
gRPC status code and the signer's machine-readable reason code, decision id and audit sequence
number (from the ``google.rpc.ErrorInfo`` status detail and the trailing metadata).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc

if TYPE_CHECKING:
    from paywarden.client.results import Resumable
    from paywarden.v1 import signer_pb2

Q = TypeVar("Q", bound="Resumable")


class ClientError(Exception):
    """Base of every SDK failure."""

    def diagnostics(self) -> str:
        """A one-line explanation, safe to log (never a key or a PIN)."""
        return str(self)


class SettingsError(ClientError):
    """The connection settings are missing or name a file that cannot be read."""


class UnexpectedAnswer(ClientError):
    """The signer answered something the SDK will not take for a signature (an unknown
    status, a payload that is not this request's): treat the payment as not signed."""


@dataclass(frozen=True)
class Refusal:
    """What the signer said when it refused a call.

    ``reason`` is the machine-readable reason code (``paywarden.policy.vocabulary.Reason``'s
    value, e.g. ``"BUDGET_EXCEEDED"``); ``None`` when the answer came from gRPC itself (a
    connection error) rather than from the signer.
    """

    code: grpc.StatusCode
    message: str
    reason: str | None = None
    decision_id: str | None = None
    audit_seq: int | None = None
    domain: str | None = None
    """The ErrorInfo's domain: ``"paywarden.dev"`` when the signer wrote it."""
    ap2_receipt: str | None = None
    """A refused mandate's AP2 error receipt: a compact JWS signed by the signer's audit
    key (check it with :func:`paywarden.verify.mandate_receipts.verify_mandate_receipt`)."""


class CallError(ClientError):
    """The signer (or the connection to it) refused a call."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self.refusal.code

    @property
    def reason(self) -> str | None:
        """The signer's reason code, or ``None`` for a transport error."""
        return self.refusal.reason

    @property
    def message(self) -> str:
        """The signer's message (``"[REASON] text"``)."""
        return self.refusal.message

    @property
    def ap2_receipt(self) -> str | None:
        """The AP2 error receipt of a refused mandate (a compact JWS), if one came."""
        return self.refusal.ap2_receipt

    @property
    def decision_id(self) -> str | None:
        """The id of the recorded decision, when the refusal was recorded as one."""
        return self.refusal.decision_id

    @property
    def audit_seq(self) -> int | None:
        """The sequence number of the audit record of this answer, when one was written."""
        return self.refusal.audit_seq

    def diagnostics(self) -> str:
        parts = [f"{self.code.name}: {self.message}"]
        if self.decision_id:
            parts.append(f"decision {self.decision_id}")
        if self.audit_seq is not None:
            parts.append(f"audit seq {self.audit_seq}")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.diagnostics()


class OutcomeUnknown(CallError, Generic[Q]):
    """``Sign`` failed without an answer from the signer: the payment may have been decided
    (and signed, and spent) or not.

    ``request`` is the exact request (:class:`~paywarden.client.PreparedPayment`, or
    :class:`~paywarden.client.PreparedX402` for ``sign_x402``): pass it to
    :meth:`paywarden.client.AgentClient.resume` to collect the signer's decision (the same
    nonce and payload: never a second payment). Never call ``sign`` again for this payment:
    a new ``sign`` makes a new nonce, which is a second payment.
    """

    def __init__(self, refusal: Refusal, request: Q, attempts: int = 1) -> None:
        super().__init__(refusal)
        self.request = request
        self.attempts = attempts


class RetriesExhausted(OutcomeUnknown[Q]):
    """Every attempt of a retried call failed with a retryable status (UNAVAILABLE or
    DEADLINE_EXCEEDED), or the overall deadline passed: the last attempt's refusal.

    The outcome is unknown (an attempt may have been decided): resume ``request`` later
    (:meth:`paywarden.client.AgentClient.resume`), which sends the same nonce and payload.
    """

    def diagnostics(self) -> str:
        return f"gave up after {self.attempts} attempt(s): {super().diagnostics()}"


class TransportFailed(OutcomeUnknown[Q]):
    """``Sign`` failed with a status the signer did not write (no ``paywarden.dev``
    ErrorInfo: e.g. INTERNAL or UNKNOWN from a proxy, RST_STREAM, CANCELLED): not a refusal,
    the outcome is unknown; resume ``request``."""


class SignRefused(CallError):
    """``Sign`` was refused by the signer itself (its ``paywarden.dev`` ErrorInfo): nothing
    was signed.

    ``receipt`` is the signer's signed receipt for the decision (``Signer.GetReceipt``), when
    one could be fetched; ``receipt_error`` says why not otherwise.
    """

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal)
        self.receipt: signer_pb2.GetReceiptResponse | None = None
        self.receipt_error: ClientError | None = None


class RequirementsRefused(ClientError, ValueError):
    """A resource server's x402 requirements that the SDK will not send to the signer
    (malformed, another x402 version, a transfer method Paywarden does not sign): nothing
    was asked, nothing signed."""


class ApprovalDenied(SignRefused):
    """A human approver denied the payment (reason ``APPROVAL_DENIED``), or the approval
    lapsed (``APPROVAL_EXPIRED``)."""

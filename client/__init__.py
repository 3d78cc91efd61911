"""Paywarden's Python client SDK: agents, planners, approvers and operators over mutual TLS.

It depends on the generated API (``paywarden.v1``), gRPC and ``paywarden.verify``, never on the
signer's own code, so that an agent platform installs it without running a signer.

Connection settings come from arguments (:class:`ConnectionSettings`) or from the environment
(``PAYWARDEN_ADDR``, ``PAYWARDEN_CA``, ``PAYWARDEN_CERT``, ``PAYWARDEN_KEY`` and optionally
``PAYWARDEN_SERVER_NAME``). Every failure is a :class:`ClientError`; the asyncio clients are in
:mod:`paywarden.client.aio`.
"""

from paywarden.client._requests import PlanItem, SessionOptions
from paywarden.client._signing import Payment, new_nonce
from paywarden.client.agent import AgentClient
from paywarden.client.approver import ApproverClient
from paywarden.client.errors import (
    ApprovalDenied,
    CallError,
    ClientError,
    OutcomeUnknown,
    Refusal,
    RequirementsRefused,
    RetriesExhausted,
    SettingsError,
    SignRefused,
    TransportFailed,
    UnexpectedAnswer,
)
from paywarden.client.operator import OperatorClient, Scope
from paywarden.client.planner import PlannerClient, PlannerSession
from paywarden.client.receipts import check_receipt, receipt_document
from paywarden.client.results import (
    PaymentClaims,
    PendingApproval,
    PreparedPayment,
    Signed,
    SignResult,
)
from paywarden.client.retry import RETRYABLE, RetryPolicy
from paywarden.client.settings import ConnectionSettings
from paywarden.client.x402 import X402Order, X402Requirements, offers
from paywarden.client.x402_results import (
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    PreparedX402,
    X402Authorization,
    X402Pending,
    X402Result,
    X402Signed,
)

__all__ = [
    "PAYMENT_SIGNATURE_HEADER",
    "RETRYABLE",
    "X_PAYMENT_HEADER",
    "AgentClient",
    "ApprovalDenied",
    "ApproverClient",
    "CallError",
    "ClientError",
    "ConnectionSettings",
    "OperatorClient",
    "OutcomeUnknown",
    "Payment",
    "PaymentClaims",
    "PendingApproval",
    "PlanItem",
    "PlannerClient",
    "PlannerSession",
    "PreparedPayment",
    "PreparedX402",
    "Refusal",
    "RequirementsRefused",
    "RetriesExhausted",
    "RetryPolicy",
    "Scope",
    "SessionOptions",
    "SettingsError",
    "SignRefused",
    "SignResult",
    "Signed",
    "TransportFailed",
    "UnexpectedAnswer",
    "X402Authorization",
    "X402Order",
    "X402Pending",
    "X402Requirements",
    "X402Result",
    "X402Signed",
    "check_receipt",
    "new_nonce",
    "offers",
    "receipt_document",
]

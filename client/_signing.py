"""What the blocking and the asyncio agent share: the nonce, the request, reading answers.

No I/O: the two clients differ only in how they send, wait and sleep.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, NotRequired, TypedDict, TypeVar

from google.protobuf.message import Message
from paywarden.client._calls import ERROR_DOMAIN, GET_RECEIPT, SIGN, Method
from paywarden.client.errors import (
    ApprovalDenied,
    CallError,
    ClientError,
    OutcomeUnknown,
    Refusal,
    RetriesExhausted,
    SignRefused,
    TransportFailed,
    UnexpectedAnswer,
)
from paywarden.client.results import (
    PaymentClaims,
    PendingApproval,
    PreparedPayment,
    Resumable,
    Signed,
    SignResult,
)
from paywarden.client.retry import RETRYABLE, Attempts, RetryPolicy
from paywarden.v1 import signer_pb2

NONCE_BYTES = 32
"""Random bytes in a nonce (the signer takes 16 to 64)."""
DEFAULT_EXPIRY = 120
"""Seconds a payment stays valid by default (the signer's default maximum is 300)."""
APPROVAL_REFUSALS = frozenset({"APPROVAL_DENIED", "APPROVAL_EXPIRED"})
PLAIN_DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?")
"""An amount as the signer writes it: digits, optionally a dot and more digits."""
PAYLOAD_TYPE = "paywarden.payment.v1"
"""The ``typ`` claim of a payment payload."""


def new_nonce(size: int = NONCE_BYTES) -> str:
    """``size`` random bytes (16 to 64), base64url without padding."""
    if not 16 <= size <= 64:
        raise ValueError("a nonce is 16 to 64 random bytes")
    return base64.urlsafe_b64encode(secrets.token_bytes(size)).rstrip(b"=").decode("ascii")


class Payment(TypedDict):
    """What an agent asks to pay (``AgentClient.sign``'s keyword arguments)."""

    payee: str
    """The payee's identifier."""
    amount: str
    """A decimal string in the asset's units (``"12.50"``), never a float."""
    reference: str
    """The caller's reference (invoice number, order id)."""
    asset: NotRequired[str]
    """Asset code (default ``"USD"``)."""
    key_id: NotRequired[str]
    """Payment key: a label for its active version (default ``"payments"``) or a key id."""
    purpose: NotRequired[str]
    """Why, in free text: recorded for the audit trail, never decides anything."""
    expires_in: NotRequired[int]
    """Seconds until the signed payment expires (default 120), unless ``expires_at``."""
    expires_at: NotRequired[int]
    """Expiry in seconds since the Unix epoch."""
    nonce: NotRequired[str]
    """A nonce of the caller's (16 to 64 random bytes, base64url); made fresh by default."""


def build_intent(
    session_id: str, payment: Payment, clock: Callable[[], float] = time.time
) -> signer_pb2.PaymentIntent:
    """The one request a ``sign`` sends, however often: a fresh nonce unless one is given, and
    an expiry ``expires_in`` seconds from now unless ``expires_at`` is given. The signer
    validates every field; the SDK only refuses what it could never send (a non-string
    amount)."""
    amount = payment["amount"]
    if not isinstance(amount, str):
        raise TypeError("amount is a decimal string such as '12.50' (never a float)")
    nonce = payment.get("nonce")
    expires_at = payment.get("expires_at")
    if expires_at is None:
        expires_at = int(clock()) + payment.get("expires_in", DEFAULT_EXPIRY)
    return signer_pb2.PaymentIntent(
        session_id=session_id,
        key_id=payment.get("key_id", "payments"),
        payee=payment["payee"],
        amount=amount,
        asset=payment.get("asset", "USD"),
        reference=payment["reference"],
        purpose=payment.get("purpose", ""),
        nonce=new_nonce() if nonce is None else nonce,
        expires_at=expires_at,
    )


def sign_request(intent: signer_pb2.PaymentIntent) -> signer_pb2.SignRequest:
    """The request for ``intent``."""
    return signer_pb2.SignRequest(intent=intent)


def read_answer(
    response: signer_pb2.SignResponse,
    intent: signer_pb2.PaymentIntent,
    attempts: int,
    approval_id: str | None,
) -> SignResult:
    """The answer as a result; an answer that is neither a signature nor a pending approval
    (an unknown status, a signature whose payload is not this request's) is refused: an agent
    never takes a doubtful answer for a signature."""
    if response.status == signer_pb2.PENDING_APPROVAL and response.approval_id:
        return PendingApproval(response.approval_id, intent, response.audit_seq, attempts)
    if response.status != signer_pb2.SIGNED or response.jws.count(".") != 2:
        raise UnexpectedAnswer(f"the signer's answer is not a signature (status {response.status})")
    try:
        claims = PaymentClaims.from_payload(response.canonical_payload)
    except ValueError as exc:
        raise UnexpectedAnswer(f"the signed payload cannot be read: {exc}") from None
    differ = mismatches(claims, intent, response)
    if differ:
        raise UnexpectedAnswer(f"the signed answer is not this request's ({', '.join(differ)})")
    return Signed(
        jws=response.jws,
        decision_id=response.decision_id,
        key_id=response.key_id,
        claims=claims,
        canonical_payload=response.canonical_payload,
        audit_seq=response.audit_seq,
        replayed=response.replayed_result,
        approval_id=approval_id or None,
        attempts=attempts,
    )


def b64url(data: bytes) -> str:
    """base64url without padding, as a JWS segment."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mismatches(
    claims: PaymentClaims, intent: signer_pb2.PaymentIntent, response: signer_pb2.SignResponse
) -> list[str]:
    """What of a signed answer is not the request's: every claim the request fixes, the
    decision id, and the JWS payload segment (it must be the canonical payload itself)."""
    checks = {
        "typ": claims.typ == PAYLOAD_TYPE,
        "sid": claims.session_id == intent.session_id,
        "payee": claims.payee == intent.payee,
        "amount": _same_amount(claims.amount, intent.amount),
        "asset": claims.asset == intent.asset,
        "ref": claims.reference == intent.reference,
        "nonce": claims.nonce == intent.nonce,
        "exp": claims.expires_at == intent.expires_at,
        "jti": claims.decision_id == response.decision_id,
        "jws payload": response.jws.split(".")[1] == b64url(response.canonical_payload),
    }
    return [name for name, same in checks.items() if not same]


def _same_amount(signed: str, asked: str) -> bool:
    """The same amount (the signer writes it with the asset's decimals: "12.5" is signed as
    "12.50"); a claim that is not a plain decimal never matches."""
    if not PLAIN_DECIMAL.fullmatch(signed) or not PLAIN_DECIMAL.fullmatch(asked):
        return False
    return Decimal(signed) == Decimal(asked)


def refused(refusal: Refusal) -> SignRefused:
    """A final refusal of ``Sign`` as its exception."""
    if refusal.reason in APPROVAL_REFUSALS:
        return ApprovalDenied(refusal)
    return SignRefused(refusal)


def failure(
    refusal: Refusal, attempts: Attempts, request: Resumable
) -> SignRefused | OutcomeUnknown[Resumable]:
    """What to raise when an attempt failed and ``attempts`` allows no other: a refusal only
    when the signer wrote it (its ``paywarden.dev`` ErrorInfo); any other status (a proxy's
    INTERNAL, a reset stream, CANCELLED) leaves the outcome unknown, carrying ``request``."""
    if refusal.code in RETRYABLE:
        return RetriesExhausted(refusal, request, attempts.count)
    if refusal.domain != ERROR_DOMAIN:
        return TransportFailed(refusal, request, attempts.count)
    return refused(refusal)


def receipt_request(refusal: Refusal) -> signer_pb2.GetReceiptRequest | None:
    """The receipt request for a refused decision: by decision id, else by audit record;
    ``None`` when the refusal names neither (nothing was recorded)."""
    if refusal.decision_id:
        return signer_pb2.GetReceiptRequest(decision_id=refusal.decision_id)
    if refusal.audit_seq is not None:
        return signer_pb2.GetReceiptRequest(audit_seq=refusal.audit_seq)
    return None


@dataclass(frozen=True)
class Send:
    """Step: send ``request`` to ``method`` with this timeout; the reply is the response or
    the call's :class:`Refusal`."""

    method: Method[Any, Any]
    request: Message
    timeout: float


@dataclass(frozen=True)
class Pause:
    """Step: wait this many seconds (a backoff or an approval poll); the reply is ``None``."""

    seconds: float


Step = Send | Pause
Reply = Message | Refusal | None
Steps = Generator[Step, Reply, SignResult]
R = TypeVar("R")


@dataclass(frozen=True)
class Exchange(Generic[R]):
    """One signing call, whatever its kind (``Sign``, ``SignX402``): the request sent, every
    time the same bytes, how an answer is read, and the request an outcome-unknown failure
    carries for a later resume."""

    method: Method[Any, Any]
    request: Message
    read: Callable[[Any, int, str | None], R]
    """(response, attempts, approval id asked for) -> the result; raises
    :class:`UnexpectedAnswer` for an answer that is not this request's."""
    approval_of: Callable[[R], str | None]
    """The approval a result waits for, or ``None`` when it is final."""
    resumable: Callable[[str | None], Resumable]
    """The request to resume, given the approval asked for."""


def sign_steps(
    intent: signer_pb2.PaymentIntent,
    policy: RetryPolicy,
    *,
    wait_for_approval: float | None,
    approval_id: str | None,
    fetch_receipts: bool,
    receipt_timeout: float,
) -> Steps:
    """Everything one ``sign`` does, as steps that a blocking or an asyncio driver performs
    (see :func:`exchange_steps`)."""
    exchange = Exchange(
        SIGN,
        sign_request(intent),
        lambda response, attempts, asked: read_answer(response, intent, attempts, asked),
        _approval_of,
        lambda asked: PreparedPayment(intent, asked),
    )
    return exchange_steps(
        exchange,
        policy,
        wait_for_approval=wait_for_approval,
        approval_id=approval_id,
        fetch_receipts=fetch_receipts,
        receipt_timeout=receipt_timeout,
    )


def _approval_of(result: SignResult) -> str | None:
    return result.approval_id if isinstance(result, PendingApproval) else None


def exchange_steps(
    exchange: Exchange[R],
    policy: RetryPolicy,
    *,
    wait_for_approval: float | None,
    approval_id: str | None,
    fetch_receipts: bool,
    receipt_timeout: float,
) -> Generator[Step, Reply, R]:
    """Everything one signing call does, as steps that a blocking or an asyncio driver
    performs.

    The request is sent, and retried on UNAVAILABLE / DEADLINE_EXCEEDED within the policy's
    bounds, always the same bytes. A pending answer is asked again, with the same request,
    until it is signed, refused or ``wait_for_approval`` seconds have passed. A refusal is
    raised as :class:`SignRefused` with the decision's receipt when it can be fetched.
    """
    result = yield from _send(exchange, policy, approval_id, fetch_receipts, receipt_timeout)
    if exchange.approval_of(result) is None or wait_for_approval is None:
        return result
    polls = policy.approval_wait(wait_for_approval)
    while (pending := exchange.approval_of(result)) is not None and (
        delay := polls.next_delay()
    ) is not None:
        yield Pause(delay)
        result = yield from _send(exchange, policy, pending, fetch_receipts, receipt_timeout)
    return result


def _send(
    exchange: Exchange[R],
    policy: RetryPolicy,
    approval_id: str | None,
    fetch_receipts: bool,
    receipt_timeout: float,
) -> Generator[Step, Reply, R]:
    attempts = policy.attempts()
    while True:
        reply = yield Send(exchange.method, exchange.request, attempts.start())
        if isinstance(reply, exchange.method.response):
            return exchange.read(reply, attempts.count, approval_id)
        if not isinstance(reply, Refusal):
            raise UnexpectedAnswer(
                "the driver gave the call a reply that is neither answer nor refusal"
            )
        delay = attempts.retry_after(reply.code)
        if delay is not None:
            yield Pause(delay)
            continue
        error = failure(reply, attempts, exchange.resumable(approval_id))
        if isinstance(error, SignRefused) and fetch_receipts:
            yield from _attach_receipt(error, receipt_timeout)
        raise error


def _attach_receipt(error: SignRefused, timeout: float) -> Generator[Step, Reply, None]:
    """Fetches the refused decision's receipt into ``error`` (``receipt_error`` says why
    not): the refusal stands either way."""
    request = receipt_request(error.refusal)
    if request is None:
        error.receipt_error = ClientError("the refusal names no recorded decision")
        return
    reply = yield Send(GET_RECEIPT, request, timeout)
    if isinstance(reply, signer_pb2.GetReceiptResponse):
        error.receipt = reply
    elif isinstance(reply, Refusal):
        error.receipt_error = CallError(reply)

"""The agent's client: sign payments, exactly once however often the network fails."""

from __future__ import annotations

from collections.abc import Generator
from typing import Unpack, overload

import grpc
from paywarden.client._calls import GET_PUBLIC_KEYS, GET_RECEIPT, GET_SESSION
from paywarden.client._connection import DEFAULT_TIMEOUT, Connection
from paywarden.client._signing import Payment, Reply, Step, Steps, build_intent, sign_steps
from paywarden.client.results import PendingApproval, PreparedPayment, SignResult
from paywarden.client.retry import RetryPolicy
from paywarden.client.settings import ConnectionSettings
from paywarden.client.x402 import Requirements, X402Order, prepare_x402, x402_steps
from paywarden.client.x402_results import PreparedX402, X402Pending, X402Result
from paywarden.v1 import sessions_pb2, signer_pb2


class AgentSteps:
    """What the blocking and the asyncio agent clients share: their options and the steps
    of one ``sign``."""

    def __init__(self, retry: RetryPolicy | None, fetch_receipts: bool, timeout: float) -> None:
        self.retry = retry if retry is not None else RetryPolicy()
        self.fetch_receipts = fetch_receipts
        self._receipt_timeout = timeout

    def steps(self, request: PreparedPayment, wait_for_approval: float | None) -> Steps:
        """The steps of signing ``request`` (see :func:`paywarden.client._signing.sign_steps`)."""
        return sign_steps(
            request.intent,
            self.retry,
            wait_for_approval=wait_for_approval,
            approval_id=request.approval_id,
            fetch_receipts=self.fetch_receipts,
            receipt_timeout=self._receipt_timeout,
        )

    def x402_steps(
        self, request: PreparedX402, wait_for_approval: float | None
    ) -> Generator[Step, Reply, X402Result]:
        """The steps of ``sign_x402`` (the same as ``sign``'s, on ``SignX402``)."""
        return x402_steps(
            request,
            self.retry,
            wait_for_approval=wait_for_approval,
            fetch_receipts=self.fetch_receipts,
            receipt_timeout=self._receipt_timeout,
        )


def receipt_query(decision_id: str | None, audit_seq: int | None) -> signer_pb2.GetReceiptRequest:
    """The receipt request naming exactly one of ``decision_id`` and ``audit_seq``."""
    if (decision_id is None) == (audit_seq is None):
        raise ValueError("name exactly one of decision_id and audit_seq")
    if decision_id is not None:
        return signer_pb2.GetReceiptRequest(decision_id=decision_id)
    return signer_pb2.GetReceiptRequest(audit_seq=audit_seq)


class AgentClient(Connection):
    """An agent's connection to the signer (its certificate names the agent).

    ``sign`` makes a fresh nonce, builds the payment intent once and sends that same request
    until it has an answer: retried on UNAVAILABLE and DEADLINE_EXCEEDED only, within
    ``retry``'s bounds, so a lost answer is collected rather than paid twice. Every refusal is
    raised as :class:`~paywarden.client.SignRefused` (reason code, message, decision id, audit
    sequence number) with the decision's signed receipt unless ``fetch_receipts`` is false.

    >>> with AgentClient() as agent:  # PAYWARDEN_ADDR, _CA, _CERT, _KEY  # doctest: +SKIP
    ...     paid = agent.sign(session_id, payee="acme-weather", amount="12.50",
    ...                       asset="USD", reference="inv-1", wait_for_approval=60)
    """

    def __init__(
        self,
        settings: ConnectionSettings | None = None,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        fetch_receipts: bool = True,
    ) -> None:
        super().__init__(settings, channel=channel, timeout=timeout)
        self._agent = AgentSteps(retry, fetch_receipts, timeout)

    def sign(
        self,
        session_id: str,
        *,
        wait_for_approval: float | None = None,
        **payment: Unpack[Payment],
    ) -> SignResult:
        """Asks the signer to sign one payment in ``session_id``.

        Returns :class:`~paywarden.client.Signed`, or :class:`~paywarden.client.PendingApproval`
        when a human must approve and ``wait_for_approval`` (seconds) is not given or passed
        without an answer. Raises :class:`~paywarden.client.SignRefused` (or its
        :class:`~paywarden.client.ApprovalDenied`) when refused and
        :class:`~paywarden.client.OutcomeUnknown` (such as
        :class:`~paywarden.client.RetriesExhausted`) when no answer came: resume its ``request``.
        The payment is given as keyword arguments (:class:`~paywarden.client.Payment`):
        ``payee``, ``amount`` (a decimal string) and ``reference``, optionally ``asset``,
        ``key_id``, ``purpose`` (recorded, never decides anything), ``expires_in`` or
        ``expires_at``, and ``nonce``.
        """
        return self.submit(self.prepare(session_id, **payment), wait_for_approval=wait_for_approval)

    def prepare(self, session_id: str, **payment: Unpack[Payment]) -> PreparedPayment:
        """The exact request :meth:`sign` would send (its nonce and expiry fixed), without
        sending it: persist it (``to_bytes``), then :meth:`submit` it."""
        return PreparedPayment(build_intent(session_id, payment))

    def submit(
        self, request: PreparedPayment, *, wait_for_approval: float | None = None
    ) -> SignResult:
        """Sends a prepared payment; answers as :meth:`sign` does. Sending it again (also
        after an :class:`~paywarden.client.OutcomeUnknown`) collects the same decision."""
        return self._run(self._agent.steps(request, wait_for_approval))

    def sign_x402(
        self,
        session_id: str,
        requirements: Requirements,
        *,
        wait_for_approval: float | None = None,
        **order: Unpack[X402Order],
    ) -> X402Result:
        """Asks the signer to authorise an x402 payment in ``session_id`` (``SignX402``).

        ``requirements`` is what the resource server's 402 answer offers: an ``accepts``
        entry as JSON (a dict, x402 version 2's or 1's; see :func:`~paywarden.client.offers`
        for version 2's ``PAYMENT-REQUIRED`` header and version 1's body),
        :class:`~paywarden.client.X402Requirements` or the proto message. The order
        (:class:`~paywarden.client.X402Order`) names ``key_id`` and ``reference``,
        optionally ``purpose``, ``expires_in`` or ``expires_at``, ``nonce``, ``resource``
        and the key's ``from_address``.

        Returns :class:`~paywarden.client.X402Signed` (send its ``headers`` with the
        retried request) or :class:`~paywarden.client.X402Pending`; raises exactly as
        :meth:`sign` does (:class:`~paywarden.client.SignRefused` with the reason code,
        :class:`~paywarden.client.OutcomeUnknown` carrying the request to resume), and
        :class:`~paywarden.client.UnexpectedAnswer` when the authorisation is not this
        request's (never returned as a payment).
        """
        prepared = self.prepare_x402(session_id, requirements, **order)
        return self.submit_x402(prepared, wait_for_approval=wait_for_approval)

    def prepare_x402(
        self, session_id: str, requirements: Requirements, **order: Unpack[X402Order]
    ) -> PreparedX402:
        """The exact request :meth:`sign_x402` would send (its nonce and expiry fixed),
        without sending it."""
        return prepare_x402(session_id, requirements, order)

    def submit_x402(
        self, request: PreparedX402, *, wait_for_approval: float | None = None
    ) -> X402Result:
        """Sends a prepared x402 payment; answers as :meth:`sign_x402` does. Sending it
        again collects the same decision and the same authorisation."""
        return self._run(self._agent.x402_steps(request, wait_for_approval))

    @overload
    def resume(
        self,
        request: PendingApproval | PreparedPayment,
        *,
        wait_for_approval: float | None = None,
    ) -> SignResult: ...

    @overload
    def resume(
        self, request: X402Pending | PreparedX402, *, wait_for_approval: float | None = None
    ) -> X402Result: ...

    def resume(
        self,
        request: PendingApproval | PreparedPayment | X402Pending | PreparedX402,
        *,
        wait_for_approval: float | None = None,
    ) -> SignResult | X402Result:
        """Asks again for a payment, with the same request (byte for byte): a
        :class:`~paywarden.client.PendingApproval` or :class:`~paywarden.client.X402Pending`,
        or the ``request`` of an :class:`~paywarden.client.OutcomeUnknown` (such as
        :class:`~paywarden.client.RetriesExhausted`). Waits at most ``wait_for_approval``
        seconds for an approver; answers as :meth:`sign` (or :meth:`sign_x402`) does."""
        if isinstance(request, X402Pending | PreparedX402):
            prepared_x402 = request.request if isinstance(request, X402Pending) else request
            return self.submit_x402(prepared_x402, wait_for_approval=wait_for_approval)
        prepared = request.request if isinstance(request, PendingApproval) else request
        return self.submit(prepared, wait_for_approval=wait_for_approval)

    def receipt(
        self, *, decision_id: str | None = None, audit_seq: int | None = None
    ) -> signer_pb2.GetReceiptResponse:
        """The signed receipt of one of this agent's decisions (``Signer.GetReceipt``)."""
        return self._call(GET_RECEIPT, receipt_query(decision_id, audit_seq))

    def public_keys(self) -> signer_pb2.GetPublicKeysResponse:
        """The signer's payment keys (a JWKS and PEMs)."""
        return self._call(GET_PUBLIC_KEYS, signer_pb2.GetPublicKeysRequest())

    def session(self, session_id: str) -> sessions_pb2.Session:
        """One of this agent's sessions, with its state and spend."""
        return self._call(
            GET_SESSION, sessions_pb2.GetSessionRequest(session_id=session_id)
        ).session

"""The one exception of the offline checks: every rejection carries its reason code."""

from __future__ import annotations

from paywarden.policy.vocabulary import Reason


class PaymentRejected(Exception):
    """A payment (or the key set it is checked against) that must not be trusted.

    ``reason`` is a stable, machine-readable code (a :class:`Reason` member:
    ``BAD_SIGNATURE``, ``UNKNOWN_KEY``, ``WRONG_PAYEE`` ...); ``detail`` says what was
    found, in words, and never holds more of the payment than its own claims."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"[{reason}] {detail}")
        self.reason = reason
        self.detail = detail

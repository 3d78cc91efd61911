"""What ``AgentClient.sign`` returns: a signed payment, or one waiting for a human."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from paywarden.client.x402_results import PreparedX402
from paywarden.v1 import signer_pb2


@dataclass(frozen=True)
class PaymentClaims:
    """The signed payload's claims (RFC 8785 JSON, the JWS payload)."""

    typ: str
    session_id: str
    task: str
    agent_id: str
    payee: str
    amount: str
    asset: str
    reference: str
    nonce: str
    issued_at: int
    expires_at: int
    decision_id: str

    @classmethod
    def from_payload(cls, payload: bytes) -> PaymentClaims:
        """The claims of a canonical payload; ValueError if one is missing or mistyped."""
        raw: Any = json.loads(payload)
        if not isinstance(raw, dict):
            raise ValueError("the payload is not a JSON object")
        try:
            return cls(
                typ=_str(raw, "typ"),
                session_id=_str(raw, "sid"),
                task=_str(raw, "task"),
                agent_id=_str(raw, "sub"),
                payee=_str(raw, "payee"),
                amount=_str(raw, "amount"),
                asset=_str(raw, "asset"),
                reference=_str(raw, "ref"),
                nonce=_str(raw, "nonce"),
                issued_at=_int(raw, "iat"),
                expires_at=_int(raw, "exp"),
                decision_id=_str(raw, "jti"),
            )
        except KeyError as exc:
            raise ValueError(f"the payload has no {exc.args[0]!r} claim") from None


def _str(raw: dict[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise ValueError(f"claim {key!r} is not a string")
    return value


def _int(raw: dict[str, Any], key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"claim {key!r} is not an integer")
    return value


@dataclass(frozen=True)
class Signed:
    """The payment is signed: hand ``jws`` to the payee."""

    jws: str
    """JWS compact serialisation (ES256)."""
    decision_id: str
    """The decision that allowed it (the payload's ``jti``)."""
    key_id: str
    """The key version that signed it (``"<label>.v<version>"``, the JWS ``kid``)."""
    claims: PaymentClaims
    canonical_payload: bytes
    audit_seq: int
    """Sequence number of the audit record of this answer."""
    replayed: bool
    """True when the signer repeated an earlier answer to the same request (a retry)."""
    approval_id: str | None
    """The approval it waited for, when a human approved it."""
    attempts: int
    """Sign calls this result took (retries and approval polls included)."""


@dataclass(frozen=True)
class PreparedPayment:
    """The exact request of one payment: send it (``AgentClient.submit``) or send it again
    (``AgentClient.resume``) as often as needed; the signer decides it once.

    Every "outcome unknown" failure (:class:`~paywarden.client.OutcomeUnknown`, the asyncio
    client's :class:`~paywarden.client.aio.SignCancelled`) carries it as ``request``.
    ``to_bytes`` / ``from_bytes`` persist it (e.g. before sending) without changing a byte.
    """

    intent: signer_pb2.PaymentIntent
    """The payment intent: its nonce and expiry are fixed once prepared."""
    approval_id: str | None = None
    """The approval the signer asked for, when it answered pending before."""

    def to_bytes(self) -> bytes:
        """The intent's protobuf encoding (deterministic); the approval id is not needed to
        resume (the signer finds it by the nonce)."""
        return self.intent.SerializeToString(deterministic=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> PreparedPayment:
        """The prepared payment whose :meth:`to_bytes` gave ``data``."""
        intent = signer_pb2.PaymentIntent()
        intent.ParseFromString(data)
        return cls(intent)


@dataclass(frozen=True)
class PendingApproval:
    """The policy asks a human to approve: nothing is signed yet.

    Pass it to ``AgentClient.resume`` to ask again (the same request: same nonce and payload),
    optionally waiting for the approval.
    """

    approval_id: str
    intent: signer_pb2.PaymentIntent
    """The exact request to send again."""
    audit_seq: int
    attempts: int

    @property
    def request(self) -> PreparedPayment:
        """The request to resume, as an outcome-unknown failure carries it."""
        return PreparedPayment(self.intent, self.approval_id)


SignResult = Signed | PendingApproval

Resumable = PreparedPayment | PreparedX402
"""A request that an outcome-unknown failure carries, for ``AgentClient.resume``."""

"""What ``AgentClient.sign_x402`` returns: an x402 payment authorisation, or one waiting for
a human, and the exact request behind either."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paywarden.v1 import signer_pb2

PAYMENT_SIGNATURE_HEADER = "PAYMENT-SIGNATURE"
"""The request header an x402 version 2 client sends the payment in."""
X_PAYMENT_HEADER = "X-PAYMENT"
"""The request header an x402 version 1 client sends the payment in (the value is the
base64 of version 1's ``PaymentPayload``)."""


@dataclass(frozen=True)
class PreparedX402:
    """The exact ``SignX402`` request of one x402 payment: send it
    (``AgentClient.submit_x402``) or send it again (``AgentClient.resume``) as often as
    needed; the signer decides it once and answers the same authorisation.

    ``from_address``, when given, is the key's address the authorisation must name as
    ``from`` (it is not part of the request's bytes)."""

    request: signer_pb2.SignX402Request
    approval_id: str | None = None
    from_address: str | None = None

    def to_bytes(self) -> bytes:
        """The request's protobuf encoding (deterministic)."""
        return self.request.SerializeToString(deterministic=True)

    @classmethod
    def from_bytes(cls, data: bytes, from_address: str | None = None) -> PreparedX402:
        """The prepared payment whose :meth:`to_bytes` gave ``data``."""
        request = signer_pb2.SignX402Request()
        request.ParseFromString(data)
        return cls(request, from_address=from_address)


@dataclass(frozen=True)
class X402Authorization:
    """The EIP-3009 ``TransferWithAuthorization`` the signer signed (x402 ``exact`` on EVM)."""

    from_address: str
    to: str
    value: int
    """Atomic units of the token."""
    valid_after: int
    valid_before: int
    """Unix seconds: the authorisation can be settled on chain until then."""
    nonce: str
    """The EIP-3009 nonce, ``0x`` + 64 hex digits: the chain accepts it once."""


@dataclass(frozen=True)
class X402Signed:
    """The payment is authorised: send ``x_payment`` to the resource server in the
    header of the requirements' x402 version (:attr:`headers`)."""

    x_payment: str
    """The header value: base64 of :attr:`payment_payload_json`."""
    payment_payload_json: str
    """The x402 ``PaymentPayload`` as JSON: version 2 ``{x402Version, accepted, payload}``,
    version 1 ``{x402Version, scheme, network, payload}``."""
    payment_payload: dict[str, Any]
    """The same, parsed."""
    authorization: X402Authorization
    signature: str
    """65 bytes r‖s‖v, ``0x``-prefixed hex."""
    decision_id: str
    key_id: str
    """The key version that signed (``"<label>.v<version>"``)."""
    from_address: str
    """The key's Ethereum address (EIP-55), the authorisation's ``from``."""
    audit_seq: int
    replayed: bool
    """True when the signer repeated an earlier answer to the same request (a retry)."""
    approval_id: str | None
    attempts: int
    """SignX402 calls this result took (retries and approval polls included)."""

    @property
    def x402_version(self) -> int:
        """The x402 protocol version of the payment (the requirements')."""
        return int(self.payment_payload["x402Version"])

    @property
    def headers(self) -> dict[str, str]:
        """The header to add to the retried resource request: ``PAYMENT-SIGNATURE`` in
        x402 version 2, ``X-PAYMENT`` in version 1."""
        name = X_PAYMENT_HEADER if self.x402_version == 1 else PAYMENT_SIGNATURE_HEADER
        return {name: self.x_payment}


@dataclass(frozen=True)
class X402Pending:
    """The policy asks a human to approve: nothing is authorised yet. Pass it to
    ``AgentClient.resume`` to ask again with the same request."""

    approval_id: str
    prepared: PreparedX402
    audit_seq: int
    attempts: int

    @property
    def request(self) -> PreparedX402:
        """The request to resume, with the approval asked for."""
        return PreparedX402(self.prepared.request, self.approval_id, self.prepared.from_address)


X402Result = X402Signed | X402Pending

"""x402: pay a resource server's ``PaymentRequirements`` through the signer (``SignX402``).

An agent that gets HTTP 402 reads the offers (:func:`offers`, from the ``PAYMENT-REQUIRED``
header), asks the signer to authorise one (``AgentClient.sign_x402``) and retries the
resource request with the answer's ``PAYMENT-SIGNATURE`` header. The request is built once
(a fresh agent nonce, a fixed expiry) and sent with the same steps as ``sign``
(:func:`paywarden.client._signing.exchange_steps`): retried on UNAVAILABLE and
DEADLINE_EXCEEDED only, the same bytes each time. A signed answer is taken only when the
authorisation is this request's (payTo, value, token, network, window, the key's address);
anything else is :class:`~paywarden.client.UnexpectedAnswer`, never a payment.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any, NotRequired, TypedDict

from paywarden.client._calls import SIGN_X402
from paywarden.client._signing import (
    DEFAULT_EXPIRY,
    Exchange,
    Reply,
    Step,
    exchange_steps,
    new_nonce,
)
from paywarden.client.errors import RequirementsRefused, UnexpectedAnswer
from paywarden.client.retry import RetryPolicy
from paywarden.client.x402_results import (
    PreparedX402,
    X402Authorization,
    X402Pending,
    X402Result,
    X402Signed,
)
from paywarden.v1 import signer_pb2

X402_VERSION = 2
"""The x402 protocol version the signer pays."""
_REQUIRED = frozenset({"scheme", "network", "asset", "amount", "payTo", "maxTimeoutSeconds"})
_FIELDS = _REQUIRED | {"extra", "resource"}
_TRANSFER_METHOD = "eip3009"
"""The only ``extra.assetTransferMethod`` the signer's authorisation is (also when absent)."""
_ATOMIC = re.compile(r"0|[1-9][0-9]*")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NONCE = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


@dataclass(frozen=True)
class X402Requirements:
    """One x402 v2 ``PaymentRequirements`` (an entry of a 402 answer's ``accepts``), with the
    resource it pays for. The signer validates every field; the SDK refuses only what it
    could not send as given (:class:`~paywarden.client.RequirementsRefused`)."""

    scheme: str
    network: str
    """CAIP-2, ``"eip155:<chain id>"``."""
    asset: str
    """The token contract's address."""
    pay_to: str
    amount: str
    """Atomic units of the token, a decimal integer string."""
    max_timeout_seconds: int
    resource: str = ""
    """The resource's URL (x402 v2 names it in ``PaymentRequired.resource``)."""
    extra_name: str = ""
    """The token's EIP-712 name (``extra.name``)."""
    extra_version: str = ""
    """The token's EIP-712 version (``extra.version``)."""
    extra_json: str = ""
    """The whole ``extra`` object as the server sent it (JSON; empty: none). The signer
    echoes it in ``accepted``, where the server looks for every member it declared."""
    x402_version: int = X402_VERSION

    @classmethod
    def from_dict(cls, accepted: Mapping[str, Any], *, resource: str = "") -> X402Requirements:
        """An ``accepts`` entry as the 402 answer's JSON carries it (camelCase keys; the
        resource's URL in ``resource``, else ``resource=``). An unknown key (such as x402
        v1's ``maxAmountRequired``), a mistyped value or a transfer method other than
        EIP-3009 is refused."""
        unknown = set(accepted) - _FIELDS
        missing = _REQUIRED - set(accepted)
        if unknown or missing:
            raise RequirementsRefused(
                f"x402 requirements: unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        extra = accepted.get("extra") or {}
        if not isinstance(extra, Mapping):
            raise RequirementsRefused("x402 requirements: extra is not an object")
        method = extra.get("assetTransferMethod", _TRANSFER_METHOD)
        if method != _TRANSFER_METHOD:
            raise RequirementsRefused(f"x402 requirements: transfer method {method!r} unsigned")
        timeout = accepted["maxTimeoutSeconds"]
        if isinstance(timeout, bool) or not isinstance(timeout, int):
            raise RequirementsRefused("x402 requirements: maxTimeoutSeconds is not an integer")
        return cls(
            scheme=_text(accepted, "scheme"),
            network=_text(accepted, "network"),
            asset=_text(accepted, "asset"),
            pay_to=_text(accepted, "payTo"),
            amount=_text(accepted, "amount"),
            max_timeout_seconds=timeout,
            resource=_text(accepted, "resource", resource),
            extra_name=_text(extra, "name", ""),
            extra_version=_text(extra, "version", ""),
            extra_json=json.dumps(dict(extra), separators=(",", ":")) if extra else "",
        )

    @classmethod
    def from_proto(cls, message: signer_pb2.X402PaymentRequirements) -> X402Requirements:
        """The requirements of a ``SignX402`` request's message."""
        return cls(
            scheme=message.scheme,
            network=message.network,
            asset=message.asset,
            pay_to=message.pay_to,
            amount=message.amount,
            max_timeout_seconds=message.max_timeout_seconds,
            resource=message.resource,
            extra_name=message.extra_name,
            extra_version=message.extra_version,
            extra_json=message.extra_json,
            x402_version=message.x402_version,
        )

    def to_proto(self) -> signer_pb2.X402PaymentRequirements:
        """The message ``SignX402`` carries."""
        return signer_pb2.X402PaymentRequirements(
            x402_version=self.x402_version,
            scheme=self.scheme,
            network=self.network,
            asset=self.asset,
            pay_to=self.pay_to,
            amount=self.amount,
            resource=self.resource,
            max_timeout_seconds=self.max_timeout_seconds,
            extra_name=self.extra_name,
            extra_version=self.extra_version,
            extra_json=self.extra_json,
        )


def _text(raw: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise RequirementsRefused(f"x402 requirements: {key} is not a string")
    return value


def offers(payment_required: str | bytes | Mapping[str, Any]) -> list[X402Requirements]:
    """The requirements a 402 answer offers: its ``PAYMENT-REQUIRED`` header value (base64
    of the JSON ``PaymentRequired``) or that JSON parsed, each with the resource's URL."""
    document: Any = payment_required
    if isinstance(payment_required, str | bytes):
        try:
            document = json.loads(base64.b64decode(payment_required, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise RequirementsRefused(f"PAYMENT-REQUIRED is not base64 JSON: {exc}") from None
    if not isinstance(document, Mapping) or document.get("x402Version") != X402_VERSION:
        raise RequirementsRefused(f"PAYMENT-REQUIRED is not an x402 v{X402_VERSION} answer")
    resource = document.get("resource") or {}
    url = resource.get("url", "") if isinstance(resource, Mapping) else ""
    accepts = document.get("accepts")
    if not isinstance(accepts, list) or not all(isinstance(a, Mapping) for a in accepts):
        raise RequirementsRefused("PAYMENT-REQUIRED has no list of accepted requirements")
    return [X402Requirements.from_dict(a, resource=str(url)) for a in accepts]


Requirements = X402Requirements | Mapping[str, Any] | signer_pb2.X402PaymentRequirements
"""What ``sign_x402`` takes: the SDK's type, an ``accepts`` entry as JSON, or the message."""


class X402Order(TypedDict):
    """How an agent pays x402 requirements (``AgentClient.sign_x402``'s keyword arguments)."""

    key_id: str
    """The x402-exact-evm key that pays: a label (its active version) or a key id."""
    reference: str
    """The caller's reference (an order id)."""
    purpose: NotRequired[str]
    """Why, in free text: recorded for the audit trail, never decides anything."""
    expires_in: NotRequired[int]
    """Seconds until the payment expires (default 120), unless ``expires_at``; the
    authorisation's validBefore is never later."""
    expires_at: NotRequired[int]
    """Expiry in seconds since the Unix epoch."""
    nonce: NotRequired[str]
    """A nonce of the caller's (16 to 64 random bytes, base64url); made fresh by default."""
    resource: NotRequired[str]
    """The resource's URL, when the requirements do not carry it."""
    from_address: NotRequired[str]
    """The key's address, when known: an authorisation from any other is refused."""


def prepare_x402(
    session_id: str,
    requirements: Requirements,
    order: X402Order,
    clock: Callable[[], float] = time.time,
) -> PreparedX402:
    """The one request a ``sign_x402`` sends, however often: a fresh 32-byte nonce unless
    one is given, and an expiry ``expires_in`` seconds from now unless ``expires_at``."""
    if isinstance(requirements, signer_pb2.X402PaymentRequirements):
        requirements = X402Requirements.from_proto(requirements)
    elif not isinstance(requirements, X402Requirements):
        requirements = X402Requirements.from_dict(requirements)
    resource = order.get("resource")
    if resource is not None and not requirements.resource:
        requirements = replace(requirements, resource=resource)
    expires_at = order.get("expires_at")
    if expires_at is None:
        expires_at = int(clock()) + order.get("expires_in", DEFAULT_EXPIRY)
    nonce = order.get("nonce")
    request = signer_pb2.SignX402Request(
        session_id=session_id,
        key_id=order["key_id"],
        requirements=requirements.to_proto(),
        reference=order["reference"],
        purpose=order.get("purpose", ""),
        nonce=new_nonce() if nonce is None else nonce,
        expires_at=expires_at,
    )
    return PreparedX402(request, from_address=order.get("from_address"))


def x402_steps(
    prepared: PreparedX402,
    policy: RetryPolicy,
    *,
    wait_for_approval: float | None,
    fetch_receipts: bool,
    receipt_timeout: float,
) -> Generator[Step, Reply, X402Result]:
    """Everything one ``sign_x402`` does: the steps of ``sign``, on ``SignX402``."""
    exchange = Exchange(
        SIGN_X402,
        prepared.request,
        lambda response, attempts, asked: read_x402_answer(response, prepared, attempts, asked),
        lambda result: result.approval_id if isinstance(result, X402Pending) else None,
        lambda asked: PreparedX402(prepared.request, asked, prepared.from_address),
    )
    return exchange_steps(
        exchange,
        policy,
        wait_for_approval=wait_for_approval,
        approval_id=prepared.approval_id,
        fetch_receipts=fetch_receipts,
        receipt_timeout=receipt_timeout,
    )


def read_x402_answer(
    response: signer_pb2.SignX402Response,
    prepared: PreparedX402,
    attempts: int,
    approval_id: str | None,
) -> X402Result:
    """The answer as a result; a signed answer whose authorisation is not this request's
    (or cannot be read) is refused: an agent never pays with a doubtful authorisation."""
    if response.status == signer_pb2.PENDING_APPROVAL and response.approval_id:
        return X402Pending(response.approval_id, prepared, response.audit_seq, attempts)
    if response.status != signer_pb2.SIGNED:
        raise UnexpectedAnswer(f"the signer's answer is not a signature (status {response.status})")
    try:
        document = json.loads(response.payment_payload_json)
        body = document["payload"]
        a = body["authorization"]
        authorization = X402Authorization(
            from_address=a["from"],
            to=a["to"],
            value=_atomic(a["value"]),
            valid_after=_atomic(a["validAfter"]),
            valid_before=_atomic(a["validBefore"]),
            nonce=a["nonce"],
        )
        differ = x402_mismatches(document, authorization, response, prepared)
    except (KeyError, TypeError, ValueError) as exc:
        raise UnexpectedAnswer(f"the authorisation cannot be read: {exc!r}") from None
    if differ:
        raise UnexpectedAnswer(f"the authorisation is not this request's ({', '.join(differ)})")
    return X402Signed(
        x_payment=response.x_payment,
        payment_payload_json=response.payment_payload_json,
        payment_payload=document,
        authorization=authorization,
        signature=body["signature"],
        decision_id=response.decision_id,
        key_id=response.key_id,
        from_address=response.from_address,
        audit_seq=response.audit_seq,
        replayed=response.replayed_result,
        approval_id=approval_id or None,
        attempts=attempts,
    )


def _atomic(value: Any) -> int:
    if not isinstance(value, str) or not _ATOMIC.fullmatch(value):
        raise ValueError(f"{value!r} is not a decimal integer string")
    return int(value)


def x402_mismatches(
    document: dict[str, Any],
    authorization: X402Authorization,
    response: signer_pb2.SignX402Response,
    prepared: PreparedX402,
) -> list[str]:
    """What of a signed answer is not the request's: the header is the payload's base64,
    the accepted requirements are the ones asked, and the authorisation pays exactly them
    from the key's address, within the payment's expiry."""
    request = prepared.request
    asked = request.requirements
    accepted = document["accepted"]
    extra = accepted.get("extra") or {}
    a = authorization
    key = response.key_id
    checks = {
        "header": _header_of(response.x_payment) == response.payment_payload_json,
        "x402Version": document["x402Version"] == asked.x402_version,
        "scheme": accepted["scheme"] == asked.scheme,
        "network": accepted["network"] == asked.network,
        "asset": accepted["asset"] == asked.asset,  # as written: servers compare strings
        "payTo": accepted["payTo"] == asked.pay_to,
        "amount": accepted["amount"] == asked.amount,
        "maxTimeoutSeconds": accepted["maxTimeoutSeconds"] == asked.max_timeout_seconds,
        "extra.name": not asked.extra_name or extra.get("name") == asked.extra_name,
        "extra.version": not asked.extra_version or extra.get("version") == asked.extra_version,
        "extra": _holds(extra, asked.extra_json),
        "to": _same_address(a.to, asked.pay_to),
        "value": _ATOMIC.fullmatch(asked.amount) is not None and a.value == int(asked.amount),
        "from": _same_address(a.from_address, response.from_address)
        and (prepared.from_address is None or _same_address(a.from_address, prepared.from_address)),
        "validBefore": a.valid_after < a.valid_before <= request.expires_at,
        "nonce": _NONCE.fullmatch(a.nonce) is not None,
        "signature": _SIGNATURE.fullmatch(str(document["payload"].get("signature"))) is not None,
        "decision": bool(response.decision_id),
        "key": key == request.key_id or key.startswith(request.key_id + ".v"),
    }
    return [name for name, same in checks.items() if not same]


def _holds(extra: Any, asked_json: str) -> bool:
    """Whether the answer's ``extra`` holds every member the server sent."""
    if not isinstance(extra, dict):
        return False
    asked: dict[str, Any] = json.loads(asked_json) if asked_json else {}
    return all(k in extra and extra[k] == v and type(extra[k]) is type(v) for k, v in asked.items())


def _header_of(x_payment: str) -> str | None:
    try:
        return base64.b64decode(x_payment, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def _same_address(a: Any, b: str) -> bool:
    """The same 20 bytes, however each is cased (the signer refuses a bad EIP-55 checksum
    before it signs anything)."""
    return (
        isinstance(a, str)
        and _ADDRESS.fullmatch(a) is not None
        and _ADDRESS.fullmatch(b) is not None
        and a.lower() == b.lower()
    )

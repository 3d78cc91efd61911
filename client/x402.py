"""x402: pay a resource server's ``PaymentRequirements`` through the signer (``SignX402``).

An agent that gets HTTP 402 reads the offers (:func:`offers`: x402 version 2 sends them in
the ``PAYMENT-REQUIRED`` header, version 1 as the JSON body), asks the signer to authorise
one (``AgentClient.sign_x402``) and retries the resource request with the answer's header
(``X402Signed.headers``: ``PAYMENT-SIGNATURE`` in version 2, ``X-PAYMENT`` in version 1).
The request is built once
(a fresh agent nonce, a fixed expiry) and sent with the same steps as ``sign``
(:func:`paywarden.client._signing.exchange_steps`): retried on UNAVAILABLE and
DEADLINE_EXCEEDED only, the same bytes each time. A signed answer is taken only when the
authorisation is this request's (:mod:`paywarden.client.x402_answers`).
"""

from __future__ import annotations

import base64
import binascii
import json
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
from paywarden.client.errors import RequirementsRefused
from paywarden.client.retry import RetryPolicy
from paywarden.client.x402_answers import read_x402_answer
from paywarden.client.x402_results import PreparedX402, X402Pending, X402Result
from paywarden.v1 import signer_pb2

X402_VERSION = 2
"""The x402 protocol version of requirements that do not say otherwise."""
X402_VERSIONS = (1, 2)
"""The x402 protocol versions the signer pays."""
_COMMON = frozenset({"scheme", "network", "asset", "payTo", "maxTimeoutSeconds"})
_REQUIRED = {1: _COMMON | {"maxAmountRequired", "resource"}, 2: _COMMON | {"amount"}}
"""The members of an ``accepts`` entry, by x402 version: these must be there ..."""
_FIELDS = {
    1: _REQUIRED[1] | {"description", "mimeType", "outputSchema", "extra"},
    2: _REQUIRED[2] | {"extra", "resource"},
}
"""... and these may be."""
_AMOUNT = {1: "maxAmountRequired", 2: "amount"}
_TRANSFER_METHOD = "eip3009"
"""The only ``extra.assetTransferMethod`` the signer's authorisation is (also when absent)."""


@dataclass(frozen=True)
class X402Requirements:
    """One x402 ``PaymentRequirements`` (an entry of a 402 answer's ``accepts``), version 2
    or 1, with the resource it pays for. The signer validates every field; the SDK refuses
    only what it could not send as given (:class:`~paywarden.client.RequirementsRefused`)."""

    scheme: str
    network: str
    """Version 2: CAIP-2, ``"eip155:<chain id>"``; version 1: a name such as ``"base"``."""
    asset: str
    """The token contract's address."""
    pay_to: str
    amount: str
    """Atomic units of the token, a decimal integer string (version 1's
    ``maxAmountRequired``: the exact value paid)."""
    max_timeout_seconds: int
    resource: str = ""
    """The resource's URL (x402 v2 names it in ``PaymentRequired.resource``, v1 in each
    ``accepts`` entry)."""
    extra_name: str = ""
    """The token's EIP-712 name (``extra.name``)."""
    extra_version: str = ""
    """The token's EIP-712 version (``extra.version``)."""
    extra_json: str = ""
    """The whole ``extra`` object as the server sent it (JSON; empty: none). The signer
    echoes it in ``accepted``, where the server looks for every member it declared."""
    x402_version: int = X402_VERSION
    """The x402 protocol version of the 402 answer: 2, or 1."""

    @classmethod
    def from_dict(
        cls, accepted: Mapping[str, Any], *, resource: str = "", x402_version: int | None = None
    ) -> X402Requirements:
        """An ``accepts`` entry as the 402 answer's JSON carries it (camelCase keys), of
        ``x402_version`` (by default 1 when the entry has ``maxAmountRequired``, else 2).
        Version 2's entry has ``amount`` and the resource's URL in ``resource`` (else
        ``resource=``); version 1's has ``maxAmountRequired`` and ``resource``, and may
        have ``description``, ``mimeType`` and ``outputSchema`` (read, not sent: the
        signer records the resource). A key unknown to the version (such as
        ``maxAmountRequired`` in version 2), a mistyped value or a transfer method other
        than EIP-3009 is refused."""
        version = x402_version
        if version is None:
            version = 1 if "maxAmountRequired" in accepted else X402_VERSION
        if version not in X402_VERSIONS:
            raise RequirementsRefused(f"x402 requirements: version {version!r} is not paid")
        unknown = set(accepted) - _FIELDS[version]
        missing = _REQUIRED[version] - set(accepted)
        if unknown or missing:
            raise RequirementsRefused(
                f"x402 v{version} requirements: unknown {sorted(unknown)},"
                f" missing {sorted(missing)}"
            )
        if version == 1:
            _described(accepted)
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
            amount=_text(accepted, _AMOUNT[version]),
            max_timeout_seconds=timeout,
            resource=_text(accepted, "resource", resource),
            extra_name=_text(extra, "name", ""),
            extra_version=_text(extra, "version", ""),
            extra_json=json.dumps(dict(extra), separators=(",", ":")) if extra else "",
            x402_version=version,
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


def _described(accepted: Mapping[str, Any]) -> None:
    """Refuses version 1's descriptive members when mistyped (each may be null)."""
    for key, kind in (("description", str), ("mimeType", str), ("outputSchema", Mapping)):
        value = accepted.get(key)
        if value is not None and not isinstance(value, kind):
            raise RequirementsRefused(f"x402 requirements: {key} is not a {kind.__name__}")


def offers(payment_required: str | bytes | Mapping[str, Any]) -> list[X402Requirements]:
    """The requirements a 402 answer offers, each with the resource's URL: x402 version 2's
    ``PAYMENT-REQUIRED`` header value (base64 of the JSON ``PaymentRequired``), version 1's
    JSON body (``{"x402Version": 1, "accepts": [...]}``), or either JSON parsed. Each entry
    is read as the answer's version writes it (:meth:`X402Requirements.from_dict`)."""
    document: Any = payment_required
    if isinstance(payment_required, str | bytes):
        document = _parsed(payment_required)
    version = document.get("x402Version") if isinstance(document, Mapping) else None
    if type(version) is not int or version not in X402_VERSIONS:
        raise RequirementsRefused("the 402 answer is not an x402 version 1 or 2 answer")
    resource = document.get("resource") or {}
    url = resource.get("url", "") if isinstance(resource, Mapping) else ""
    accepts = document.get("accepts")
    if not isinstance(accepts, list) or not all(isinstance(a, Mapping) for a in accepts):
        raise RequirementsRefused("the 402 answer has no list of accepted requirements")
    return [X402Requirements.from_dict(a, resource=str(url), x402_version=version) for a in accepts]


def _parsed(text: str | bytes) -> Any:
    """A 402 answer's JSON: a body as it is (``{`` is not in the base64 alphabet), else
    the base64 of the ``PAYMENT-REQUIRED`` header."""
    try:
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        if raw.lstrip().startswith(b"{"):
            return json.loads(raw)
        return json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise RequirementsRefused(f"the 402 answer is not JSON nor base64 JSON: {exc}") from None


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

"""Reading the signer's ``SignX402`` answer: a signed answer is taken only when its
``PaymentPayload`` has the shape of the requirements' x402 version and its authorisation
is the request's; anything else is :class:`~paywarden.client.UnexpectedAnswer`, never a
payment.

x402 version 2's payload is ``{x402Version, accepted, payload}`` (``accepted`` echoes the
requirements); version 1's is ``{x402Version, scheme, network, payload}`` (the resource
server knows its requirements; the payload names only scheme and network of them).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from paywarden.client.errors import UnexpectedAnswer
from paywarden.client.x402_results import (
    PreparedX402,
    X402Authorization,
    X402Pending,
    X402Result,
    X402Signed,
)
from paywarden.v1 import signer_pb2

_MEMBERS = {
    1: frozenset({"x402Version", "scheme", "network", "payload"}),
    2: frozenset({"x402Version", "accepted", "payload"}),
}
"""The members of a ``PaymentPayload``, by x402 version."""
_ATOMIC = re.compile(r"0|[1-9][0-9]*")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NONCE = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


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
    the payload has the shape of the request's x402 version and names the requirements
    asked, and the authorisation pays exactly them from the key's address, within the
    payment's expiry."""
    request = prepared.request
    asked = request.requirements
    a = authorization
    key = response.key_id
    checks = {
        "header": _header_of(response.x_payment) == response.payment_payload_json,
        "x402Version": document["x402Version"] == asked.x402_version
        and type(document["x402Version"]) is int,
        "shape": frozenset(document) == _MEMBERS.get(asked.x402_version, frozenset()),
        **_requirements_checks(document, asked),
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


def _requirements_checks(
    document: dict[str, Any], asked: signer_pb2.X402PaymentRequirements
) -> dict[str, bool]:
    """Whether the requirements the payload names are the ones asked: version 1's scheme
    and network, version 2's whole ``accepted`` (addresses as written: servers compare
    strings; ``extra`` holding every member the server sent)."""
    if asked.x402_version == 1:
        return {
            "scheme": document.get("scheme") == asked.scheme,
            "network": document.get("network") == asked.network,
        }
    accepted = document["accepted"]
    extra = accepted.get("extra") or {}
    return {
        "scheme": accepted["scheme"] == asked.scheme,
        "network": accepted["network"] == asked.network,
        "asset": accepted["asset"] == asked.asset,
        "payTo": accepted["payTo"] == asked.pay_to,
        "amount": accepted["amount"] == asked.amount,
        "maxTimeoutSeconds": accepted["maxTimeoutSeconds"] == asked.max_timeout_seconds,
        "extra.name": not asked.extra_name or extra.get("name") == asked.extra_name,
        "extra.version": not asked.extra_version or extra.get("version") == asked.extra_version,
        "extra": _holds(extra, asked.extra_json),
    }


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

"""SignX402: a resource server's x402 ``PaymentRequirements`` mapped onto a payment
(the same policy facts as Sign), the EIP-3009 authorisation the signer builds for it,
and the payment header's value (X-PAYMENT in x402 version 1, PAYMENT-SIGNATURE in 2).

Requirements are validated strictly: scheme ``exact`` and x402 version 1 or 2 only,
the network (as that version writes it: :mod:`~paywarden.signer.core.x402_networks`)
and token must be a configured x402 asset's, the EIP-712 name and version, when
given, must be the configured ones (never a domain the resource server chose), payTo is
an address (a mixed-case one must carry its EIP-55 checksum; it is kept checksummed).
The payee the policy sees is payTo in EIP-55 form; the amount is the atomic units as
minor units of the asset; the resource is recorded like a purpose and never decides.
The answer's ``accepted`` echoes payTo, the token's address and ``extra`` as the
resource server wrote them (:mod:`~paywarden.signer.core.x402_extra`): x402 servers
find their requirements by comparing strings.

Version 1's requirements carry ``maxAmountRequired`` where version 2 has ``amount``
(both arrive as ``amount``, the exact value the authorisation pays), and its
``PaymentPayload`` names scheme and network at the top instead of ``accepted``; the
version and the network as written are recorded and a retry must repeat them.

The authorisation's nonce is 32 random bytes drawn once, when the decision is recorded
(it is in the recorded payload): a retry answers the same authorisation and signature.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from paywarden.hsm import Eip712Domain, TransferWithAuthorization
from paywarden.hsm.evm import checksum_address, parse_address
from paywarden.policy.vocabulary import format_amount
from paywarden.signer.core.payments import Intent, IntentFields, claims
from paywarden.signer.core.validation import clean_text
from paywarden.signer.core.x402_extra import MAX_EXTRA_BYTES, parse_extra
from paywarden.signer.core.x402_networks import chain_id_of
from paywarden.signer.core.x402_terms import X402Terms
from paywarden.signer.encoding import jcs
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.signer.store.records import DecisionRecord
from paywarden.signer.x402_config import X402AssetConfig

PAYLOAD_TYPE = "paywarden.x402.v1"
X402_VERSIONS = (1, 2)
MAX_RESOURCE = 2048
MAX_TIMEOUT_SECONDS = 86_400
MIN_WINDOW_SECONDS = 6  # x402's facilitators refuse a validBefore closer than this
VALID_AFTER_SLACK = 60  # validAfter lies this far back: clocks of chains differ
_ATOMIC = re.compile(r"(0|[1-9][0-9]{0,77})")


@dataclass(frozen=True, slots=True)
class X402Fields:
    """The agent's SignX402 request as it arrived."""

    session_id: str
    key_id: str
    x402_version: int
    scheme: str
    network: str
    asset: str  # the token contract's address
    pay_to: str
    amount: str  # atomic units
    resource: str
    max_timeout_seconds: int
    extra_name: str
    extra_version: str
    extra_json: str
    reference: str
    purpose: str
    nonce: str
    expires_at: int

    def as_arrived(self) -> IntentFields:
        """The request as a Sign intent's raw fields, for refusal records (nothing
        validated: payee and amount as given, the asset as network/contract)."""
        return IntentFields(
            session_id=self.session_id,
            key_id=self.key_id,
            payee=self.pay_to,
            amount=self.amount,
            asset=f"{self.network}/{self.asset}",
            reference=self.reference,
            purpose=self.purpose,
            nonce=self.nonce,
            expires_at=self.expires_at,
            x402={  # what an x402 refusal's record shows of the requirements (bounded)
                "x402_version": self.x402_version,
                "scheme": self.scheme[:100],
                "network": self.network[:100],
                "asset": self.asset[:100],
                "pay_to": self.pay_to[:100],
                "amount": self.amount[:100],
                "resource": self.resource[:MAX_RESOURCE],
                "max_timeout_seconds": _json_int(self.max_timeout_seconds),
                "extra_name": self.extra_name[:100],
                "extra_version": self.extra_version[:100],
                "extra_json": self.extra_json[:MAX_EXTRA_BYTES],
            },
        )


def _json_int(value: int) -> int | str:
    """An integer as the audit's JSON takes it: beyond 2^53 - 1, its decimal text."""
    return value if abs(value) <= 2**53 - 1 else str(value)


def _address(field: str, text: str) -> str:
    if not text:
        raise InvalidInput(Reason.FIELD_MISSING, f"{field} is required")
    try:
        raw = parse_address(text)
    except ValueError as exc:
        raise InvalidInput(Reason.STRING_INVALID, f"{field}: {exc}") from None
    if raw == bytes(20):
        raise InvalidInput(Reason.STRING_INVALID, f"{field} is the zero address")
    return checksum_address(raw)


def _asset(fields: X402Fields, x402: Mapping[str, X402AssetConfig]) -> tuple[str, Eip712Domain]:
    """The configured asset the network and token name, and its domain."""
    chain_id = chain_id_of(fields.x402_version, fields.network)
    contract = _address("asset", fields.asset)
    for code, config in x402.items():
        domain = config.domain()
        if domain.chain_id == chain_id and domain.verifying_contract == contract:
            return code, domain
    raise InvalidInput(Reason.UNKNOWN_ASSET, "network and asset are not an x402 asset it knows")


def map_requirements(
    fields: X402Fields, x402: Mapping[str, X402AssetConfig], decimals: Mapping[str, int]
) -> tuple[IntentFields, X402Terms]:
    """The request as a Sign intent's fields and its x402 terms; raises
    :class:`InvalidInput` with a precise reason for the first problem."""
    if fields.x402_version not in X402_VERSIONS:
        raise InvalidInput(Reason.X402_UNSUPPORTED, "x402_version must be 1 or 2")
    if fields.scheme != "exact":
        raise InvalidInput(Reason.X402_UNSUPPORTED, "scheme must be exact")
    code, domain = _asset(fields, x402)
    extra = parse_extra(fields.extra_json, fields.extra_name, fields.extra_version, domain)
    pay_to = _address("pay_to", fields.pay_to)
    if not _ATOMIC.fullmatch(fields.amount):
        raise InvalidInput(Reason.AMOUNT_MALFORMED, "amount is atomic units, a decimal integer")
    if not 0 < fields.max_timeout_seconds <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(
            Reason.MALFORMED_REQUEST, f"max_timeout_seconds is 1 to {MAX_TIMEOUT_SECONDS}"
        )
    resource = clean_text("resource", fields.resource, max_len=MAX_RESOURCE, required=False)
    terms = X402Terms(
        fields.x402_version,
        fields.network,  # as written: version 1's name or version 2's eip155:<chain id>
        domain,
        pay_to,
        fields.amount,
        resource,
        fields.max_timeout_seconds,
        fields.pay_to,
        fields.asset,
        extra,
    )
    intent = IntentFields(
        session_id=fields.session_id,
        key_id=fields.key_id,
        payee=pay_to,
        amount=format_amount(int(fields.amount), decimals[code]),
        asset=code,
        reference=fields.reference,
        purpose=fields.purpose,
        nonce=fields.nonce,
        expires_at=fields.expires_at,
    )
    return intent, terms


def authorization_payload(
    intent: Intent, terms: X402Terms, *, agent_id: str, task_digest: str, now: int, decision_id: str
) -> bytes:
    """The payload recorded with an allowed x402 decision: the authorisation (its
    nonce drawn here, once) and what binds it to the session, the agent and the
    decision. Raises :class:`InvalidInput` when the window left is too short."""
    valid_before = min(intent.expires_at, now + terms.max_timeout_seconds)
    if valid_before < now + MIN_WINDOW_SECONDS:
        raise InvalidInput(
            Reason.EXPIRY_IN_PAST,
            f"the authorisation would be valid for less than {MIN_WINDOW_SECONDS} s",
        )
    authorization = TransferWithAuthorization(
        terms.from_address,
        terms.pay_to,
        int(terms.amount),
        max(0, now - VALID_AFTER_SLACK),
        valid_before,
        secrets.token_bytes(32),
    )
    common = claims(
        intent, agent_id=agent_id, task_digest=task_digest, issued_at=now, decision_id=decision_id
    )
    return jcs(
        {
            **common,  # a JWS payment's claims, under the x402 payload's own typ
            "typ": PAYLOAD_TYPE,
            "resource": terms.resource,
            "x402Version": terms.x402_version,
            "accepted": terms.accepted(),
            "chainId": terms.domain.chain_id,
            "authorization": _authorization_json(authorization),
        }
    )


def _authorization_json(a: TransferWithAuthorization) -> dict[str, str]:
    return {
        "from": a.from_address,
        "to": a.to,
        "value": str(a.value),
        "validAfter": str(a.valid_after),
        "validBefore": str(a.valid_before),
        "nonce": "0x" + a.nonce.hex(),
    }


def is_x402(payload: bytes) -> bool:
    """Is this recorded payload an x402 authorisation's (not a JWS payment's)?"""
    document = json.loads(payload)
    return isinstance(document, dict) and document.get("typ") == PAYLOAD_TYPE


def signable(payload: bytes) -> tuple[Eip712Domain, TransferWithAuthorization]:
    """The domain and authorisation of a recorded x402 payload, for the HSM to sign."""
    document: dict[str, Any] = json.loads(payload)
    accepted, a = document["accepted"], document["authorization"]
    domain = Eip712Domain(
        accepted["extra"]["name"],
        accepted["extra"]["version"],
        int(document["chainId"]),
        checksum_address(parse_address(accepted["asset"])),  # as the server wrote it
    )
    authorization = TransferWithAuthorization(
        a["from"],
        a["to"],
        int(a["value"]),
        int(a["validAfter"]),
        int(a["validBefore"]),
        bytes.fromhex(a["nonce"].removeprefix("0x")),
    )
    return domain, authorization


def matches_decision(
    record: DecisionRecord,
    domain: Eip712Domain,
    authorization: TransferWithAuthorization,
    x402: Mapping[str, X402AssetConfig],
) -> bool:
    """Whether a recorded authorisation pays what its decision's own columns say (payee,
    atomic amount, within the expiry) under its asset's configured domain (chain, token,
    name, version): one changed in the store is never signed."""
    configured = x402.get(record.asset)
    return (
        configured is not None
        and domain == configured.domain()
        and authorization.to == record.payee
        and authorization.value == record.amount_minor
        and authorization.valid_before <= record.expires_at
    )


def signable_until(record: DecisionRecord) -> int:
    """The first second at which a recorded decision can no longer be signed: its exp,
    or for an x402 authorisation, if earlier, the second from which its validBefore is
    closer than x402's facilitators take (its hold and approval end then too)."""
    payload = record.payload or b""
    if not payload or not is_x402(payload):
        return record.expires_at
    return min(record.expires_at, signable(payload)[1].valid_before - MIN_WINDOW_SECONDS + 1)


def from_address_of(payload: bytes) -> str:
    """The authorisation's ``from`` (the key's address) in a recorded x402 payload."""
    document: dict[str, Any] = json.loads(payload)
    return str(document["authorization"]["from"])


def payment_payload(payload: bytes, signature: str) -> tuple[str, str]:
    """The x402 ``PaymentPayload`` (JSON text) of a signed x402 decision, in the
    shape of its version, and its base64 (the payment header's value: X-PAYMENT in
    version 1, PAYMENT-SIGNATURE in version 2)."""
    document: dict[str, Any] = json.loads(payload)
    accepted = document["accepted"]
    body = {"authorization": document["authorization"], "signature": signature}
    answer: dict[str, Any] = {"x402Version": document["x402Version"], "payload": body}
    if document["x402Version"] == 1:  # version 1 names scheme and network at the top
        answer |= {"scheme": accepted["scheme"], "network": accepted["network"]}
    else:
        answer["accepted"] = accepted
    text = json.dumps(answer, separators=(",", ":"), sort_keys=True)
    return text, base64.b64encode(text.encode("utf-8")).decode("ascii")

"""Signer.SignX402 with x402 version 1 requirements (``maxAmountRequired``, networks by
name), through the in-process server over mutual TLS, with an ``x402-exact-evm`` key made
on the real SoftHSM2 token.

The answer is judged by the x402 SDK's own version 1 code, never only by ours: its
exact-EVM v1 facilitator (``ExactEvmSchemeV1``, over tests/support/x402_chain.py, a local
stand-in for the chain) with its v1 schemas, its header decoder and its HTTP client's
reading of a v1 402 body; and by eth-account's typed-data recovery. The x402 SDK's
resource server speaks version 2 only (it reads the ``PAYMENT-SIGNATURE`` header), so
the v1 payment is checked by the facilitator directly, not end to end over HTTP: the
Paywarden SDK reads the v1 body, pays it through the signer, and x402's v1 facilitator
verifies what it would send.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from paywarden.client import AgentClient, X402Requirements, X402Signed, offers
from paywarden.hsm import KeyRef, TransferWithAuthorization
from paywarden.hsm.eip712 import transfer_digest
from paywarden.hsm.provision import delete_key, export_evm_public_key, generate_key
from paywarden.policy.vocabulary import KeyProfile
from paywarden.signer.core.x402_networks import V1_NETWORK_CHAIN_IDS, chain_id_of
from paywarden.signer.errors import InvalidInput
from paywarden.v1 import signer_pb2
from x402.http.utils import decode_payment_signature_header
from x402.http.x402_http_client_base import x402HTTPClientBase
from x402.mechanisms.evm.constants import (
    ERR_INVALID_SIGNATURE,
    ERR_NONCE_ALREADY_USED,
    ERR_TRANSACTION_SIMULATION_FAILED,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.mechanisms.evm.exact.v1.facilitator import ExactEvmSchemeV1
from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS as SDK_V1_NETWORKS
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequiredV1, PaymentRequirementsV1

from tests.helpers import MODULE, Pki, Stack, TestToken, new_nonce
from tests.support.clients import Api
from tests.support.evm import USDC_BASE, eip3009_typed_data, usdc_x402_config
from tests.support.refusals import assert_refused
from tests.support.sdk import settings_for
from tests.support.sessions import open_session
from tests.support.x402_chain import LocalEip3009Chain, SettlingEip3009Chain

V1_KEY = KeyRef("x402-legacy", 1)
MERCHANT = "0x2222222222222222222222222222222222222222"  # no letters: its own EIP-55 form
V1_CONFIG = usdc_x402_config(V1_KEY)
V1_PACK = f"""
id = "x402-v1-shop"
version = 1
agents = ["agent-1"]

[assets.USDC]
keys = ["{V1_KEY.label}"]
max_per_payment = "5"

[payees]
allow = ["{MERCHANT}"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USDC = "100" }}
"""
# What a version 1 resource server answers with HTTP 402, as its JSON body: 1.25 USDC on
# Base ("base", chain 8453, the configured asset) to MERCHANT.
V1_ACCEPTS: dict[str, Any] = {
    "scheme": "exact",
    "network": "base",
    "maxAmountRequired": "1250000",
    "resource": "https://api.example/forecast",
    "description": "tomorrow's forecast",
    "mimeType": "application/json",
    "payTo": MERCHANT,
    "maxTimeoutSeconds": 120,
    "asset": USDC_BASE.verifying_contract,
    "extra": {"name": USDC_BASE.name, "version": USDC_BASE.version},
}

pytestmark = [
    pytest.mark.both_backends,
    pytest.mark.stack(packs={"x402-v1.toml": V1_PACK}, extra=V1_CONFIG),
]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
REPLAYED = grpc.StatusCode.ALREADY_EXISTS


@pytest.fixture(scope="module", autouse=True)
def legacy_payer(token: TestToken) -> Iterator[str]:
    """The module's x402 key's address: the key is generated on the session token before
    the module's stack opens it, and destroyed afterwards."""
    made, status = generate_key(MODULE, token.label, token.pin, V1_KEY, KeyProfile.X402_EXACT_EVM)
    assert made and status.profile is KeyProfile.X402_EXACT_EVM
    try:
        yield export_evm_public_key(MODULE, token.label, token.pin, V1_KEY).address
    finally:
        assert delete_key(MODULE, token.label, token.pin, V1_KEY) == 2


def v1_request(
    stack: Stack, session_id: str, *, nonce: str | None = None, **changes: Any
) -> signer_pb2.SignX402Request:
    """SignX402 for V1_ACCEPTS (version 1), with ``changes`` to its requirements."""
    fields: dict[str, Any] = {
        "x402_version": 1,
        "scheme": "exact",
        "network": "base",
        "asset": USDC_BASE.verifying_contract,
        "pay_to": MERCHANT,
        "amount": "1250000",  # maxAmountRequired
        "resource": "https://api.example/forecast",
        "max_timeout_seconds": 120,
        "extra_name": USDC_BASE.name,
        "extra_version": USDC_BASE.version,
    }
    return signer_pb2.SignX402Request(
        session_id=session_id,
        key_id=V1_KEY.label,
        requirements=signer_pb2.X402PaymentRequirements(**{**fields, **changes}),
        reference="inv-legacy",
        purpose="the forecast",
        nonce=nonce or new_nonce(),
        expires_at=int(stack.clock.now()) + 240,
    )


def v1_paid(x_payment: str) -> tuple[PaymentPayloadV1, TransferWithAuthorization, bytes]:
    """The X-PAYMENT header as the x402 SDK decodes it (version 1's PaymentPayload), and
    its authorisation and signature as typed values."""
    payload = decode_payment_signature_header(x_payment)
    assert isinstance(payload, PaymentPayloadV1)
    a = payload.payload["authorization"]
    auth = TransferWithAuthorization(
        a["from"], a["to"], int(a["value"]), int(a["validAfter"]), int(a["validBefore"]),
        bytes.fromhex(a["nonce"][2:]),
    )  # fmt: skip
    return payload, auth, bytes.fromhex(payload.payload["signature"][2:])


def legacy_chain(stack: Stack, address: str, later: int = 0) -> LocalEip3009Chain:
    return SettlingEip3009Chain(
        USDC_BASE, {address: 10**12}, clock=lambda: int(stack.clock.now()) + later
    )


def v1_verdict(chain: LocalEip3009Chain, payload: PaymentPayloadV1) -> str | None:
    """What x402's v1 facilitator says of ``payload`` for the server's V1_ACCEPTS."""
    result = ExactEvmSchemeV1(chain).verify(payload, PaymentRequirementsV1(**V1_ACCEPTS))
    return None if result.is_valid else result.invalid_reason


def v1_settled(chain: LocalEip3009Chain, payload: PaymentPayloadV1) -> str | None:
    """What x402's v1 facilitator says when it settles ``payload`` on ``chain``."""
    result = ExactEvmSchemeV1(chain).settle(payload, PaymentRequirementsV1(**V1_ACCEPTS))
    assert result.success or not result.transaction
    return None if result.success else result.error_reason


# -- what x402's version 1 code and eth-account make of it ----------------------------------


def test_x402_v1_verification_accepts_the_authorisation_and_recovers_the_key(
    api: Api, stack: Stack, legacy_payer: str
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    answer = api.signer.SignX402(v1_request(stack, session))
    assert answer.status == signer_pb2.SIGNED and answer.from_address == legacy_payer
    # Version 1's PaymentPayload: scheme and network (as the server wrote it) at the top,
    # no "accepted"; x_payment is its base64, the X-PAYMENT header's value.
    document = json.loads(answer.payment_payload_json)
    assert set(document) == {"x402Version", "scheme", "network", "payload"}
    assert (document["x402Version"], document["scheme"], document["network"]) == (
        1,
        "exact",
        "base",
    )
    assert set(document["payload"]) == {"authorization", "signature"}
    assert json.loads(base64.b64decode(answer.x_payment, validate=True)) == document
    payload, auth, signature = v1_paid(answer.x_payment)
    assert (auth.from_address, auth.to, auth.value) == (legacy_payer, MERCHANT, 1_250_000)
    assert auth.valid_before <= int(stack.clock.now()) + 120
    # x402's own version 1 facilitator accepts it and settles it once on the stand-in chain.
    chain = legacy_chain(stack, legacy_payer)
    assert v1_verdict(chain, payload) is None
    assert v1_settled(chain, payload) is None
    assert chain.balances[MERCHANT.lower()] == 1_250_000
    assert v1_settled(chain, payload) == ERR_NONCE_ALREADY_USED  # settled once only
    # eth-account recovers the key's address from the EIP-712 typed data (chain 8453).
    typed = encode_typed_data(full_message=eip3009_typed_data(USDC_BASE, auth))
    assert Account.recover_message(typed, signature=signature) == legacy_payer


def test_x402_v1_rejects_a_changed_byte_another_signer_an_expired_window_and_a_used_nonce(
    api: Api, stack: Stack, legacy_payer: str
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    payload, auth, signature = v1_paid(api.signer.SignX402(v1_request(stack, session)).x_payment)
    chain = legacy_chain(stack, legacy_payer)
    assert v1_verdict(chain, payload) is None

    def with_signature(sig: bytes) -> PaymentPayloadV1:
        return payload.model_copy(
            update={"payload": {**payload.payload, "signature": "0x" + sig.hex()}}
        )

    def with_authorization(**changes: str) -> PaymentPayloadV1:
        a = {**payload.payload["authorization"], **changes}
        return payload.model_copy(update={"payload": {**payload.payload, "authorization": a}})

    changed = signature[:9] + bytes([signature[9] ^ 1]) + signature[10:]
    assert v1_verdict(chain, with_signature(changed)) == ERR_INVALID_SIGNATURE
    # A changed byte of what was signed: the value (also refused as not the price), the
    # nonce, the window.
    assert v1_verdict(chain, with_authorization(value=str(auth.value - 1))) is not None
    other_nonce = "0x" + bytes([auth.nonce[0] ^ 1]).hex() + auth.nonce[1:].hex()
    assert v1_verdict(chain, with_authorization(nonce=other_nonce)) == ERR_INVALID_SIGNATURE
    longer = str(auth.valid_before + 1)
    assert v1_verdict(chain, with_authorization(validBefore=longer)) == ERR_INVALID_SIGNATURE
    stranger = Account.create().unsafe_sign_hash(transfer_digest(USDC_BASE, auth)).signature
    assert v1_verdict(chain, with_signature(bytes(stranger))) == ERR_INVALID_SIGNATURE
    # The same authorisation under version 2's name for the network is not the server's.
    assert v1_verdict(chain, payload.model_copy(update={"network": "eip155:8453"})) is not None
    # The token refuses it from validBefore on, and once its nonce is used. x402's v1
    # verification names either a failed simulation (the stand-in chain has no Multicall3
    # for its diagnosis; its own window check reads the wall clock, which a test cannot
    # move, so the chain's clock is moved); its settlement names the token's reason.
    ahead = auth.valid_before - int(stack.clock.now())
    assert v1_verdict(legacy_chain(stack, legacy_payer, later=ahead - 1), payload) is None
    late = legacy_chain(stack, legacy_payer, later=ahead)
    assert v1_verdict(late, payload) == ERR_TRANSACTION_SIMULATION_FAILED
    assert v1_settled(late, payload) == ERR_VALID_BEFORE_EXPIRED
    chain.spend(legacy_payer, auth.nonce)
    assert v1_verdict(chain, payload) == ERR_TRANSACTION_SIMULATION_FAILED
    assert v1_settled(chain, payload) == ERR_NONCE_ALREADY_USED


# -- exactly once ------------------------------------------------------------------------------


def test_a_v1_retry_returns_the_identical_header_and_the_nonce_under_v2_is_a_replay(
    api: Api, stack: Stack
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    request = v1_request(stack, session)
    first = api.signer.SignX402(request)
    again = api.signer.SignX402(request)
    assert (first.replayed_result, again.replayed_result) == (False, True)
    assert (again.x_payment, again.decision_id) == (first.x_payment, first.decision_id)
    # The decision's audit record keeps the version and the network as the server wrote them.
    recorded = json.loads(json.loads(stack.store.audit_record(first.audit_seq))["payload"])
    assert (recorded["x402Version"], recorded["accepted"]["network"]) == (1, "base")
    assert recorded["chainId"] == USDC_BASE.chain_id
    # The same agent nonce for the same payment under version 2 (its network written as
    # CAIP-2) is another request: the version and the network as written are its digest.
    as_v2 = v1_request(stack, session, nonce=request.nonce, x402_version=2, network="eip155:8453")
    as_v2.expires_at = request.expires_at
    assert_refused(api.signer.SignX402, as_v2, REPLAYED, "NONCE_REPLAYED")
    # The same requirements under version 2 with a nonce of their own are paid, in
    # version 2's shape.
    paid_v2 = api.signer.SignX402(v1_request(stack, session, x402_version=2, network="eip155:8453"))
    document = json.loads(paid_v2.payment_payload_json)
    assert (document["x402Version"], document["accepted"]["network"]) == (2, "eip155:8453")
    assert set(document) == {"x402Version", "accepted", "payload"}


# -- networks: each version's own form, a configured asset's ----------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        pytest.param({"network": "eip155:8453"}, "UNKNOWN_ASSET", id="v1-caip2"),
        pytest.param({"x402_version": 2, "network": "base"}, "UNKNOWN_ASSET", id="v2-name"),
        pytest.param({"network": "basechain"}, "UNKNOWN_ASSET", id="v1-unknown-name"),
        pytest.param({"network": "Base"}, "UNKNOWN_ASSET", id="v1-name-cased"),
        pytest.param({"network": "base-sepolia"}, "UNKNOWN_ASSET", id="v1-unconfigured-chain"),
        pytest.param({"network": "polygon"}, "UNKNOWN_ASSET", id="v1-another-chain"),
        pytest.param({"network": ""}, "UNKNOWN_ASSET", id="v1-no-network"),
        pytest.param({"x402_version": 0}, "X402_UNSUPPORTED", id="v0"),
        pytest.param({"scheme": "upto"}, "X402_UNSUPPORTED", id="v1-upto"),
        pytest.param({"extra_name": "USD Coin (fake)"}, "X402_DOMAIN_MISMATCH", id="v1-domain"),
        pytest.param({"amount": "1.25"}, "AMOUNT_MALFORMED", id="v1-amount-decimal"),
    ],
)
def test_v1_requirements_it_does_not_pay_are_refused(
    api: Api, stack: Stack, changes: dict[str, Any], reason: str
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    assert_refused(api.signer.SignX402, v1_request(stack, session, **changes), INVALID, reason)


def test_the_v1_network_table_is_the_x402_sdks_and_each_version_reads_its_own_form() -> None:
    assert dict(V1_NETWORK_CHAIN_IDS) == SDK_V1_NETWORKS
    assert (chain_id_of(1, "base"), chain_id_of(1, "base-sepolia")) == (8453, 84532)
    assert chain_id_of(2, "eip155:8453") == 8453
    for version, network, words in [
        (1, "eip155:8453", "version 1 names its network"),
        (2, "base", "not a version 1 name"),
        (1, "solana", "not an x402 version 1 EVM network"),
        (2, "eip155:08453", "not an eip155 network"),
    ]:
        with pytest.raises(InvalidInput, match=words) as refused:
            chain_id_of(version, network)
        assert refused.value.reason == "UNKNOWN_ASSET"


# -- the SDK: a version 1 402 body read and paid through the signer ----------------------------


def test_the_sdk_reads_a_v1_402_body_and_pays_it_in_the_x_payment_header(
    grpc_addr: str, pki: Pki, api: Api, stack: Stack, legacy_payer: str
) -> None:
    body = json.dumps(PaymentRequiredV1(accepts=[PaymentRequirementsV1(**V1_ACCEPTS)]).model_dump())
    # x402's own HTTP client reads the same body as version 1's PaymentRequired.
    required = x402HTTPClientBase().get_payment_required_response(lambda _: None, body.encode())
    assert isinstance(required, PaymentRequiredV1)
    (offer,) = offers(body.encode())
    assert offer == X402Requirements(
        scheme="exact", network="base", asset=USDC_BASE.verifying_contract, pay_to=MERCHANT,
        amount="1250000", max_timeout_seconds=120, resource="https://api.example/forecast",
        extra_name="USD Coin", extra_version="2", extra_json='{"name":"USD Coin","version":"2"}',
        x402_version=1,
    )  # fmt: skip
    assert offers(json.loads(body)) == [offer]
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    with AgentClient(settings_for(pki, grpc_addr, "agent", "agent-1")) as agent:
        paid = agent.sign_x402(
            session, offer, key_id=V1_KEY.label, reference="inv-sdk", from_address=legacy_payer
        )
    assert isinstance(paid, X402Signed) and paid.x402_version == 1
    # The header x402's own client sends a version 1 payload in, and the same payload:
    # nothing lost or added when the SDK reads and writes it again.
    payload, auth, _ = v1_paid(paid.x_payment)
    (theirs,) = x402HTTPClientBase().encode_payment_signature_header(payload).items()
    assert paid.headers == {"X-PAYMENT": paid.x_payment} and theirs[0] == "X-PAYMENT"
    assert json.loads(base64.b64decode(theirs[1])) == json.loads(paid.payment_payload_json)
    assert (paid.authorization.to, paid.authorization.value) == (MERCHANT, 1_250_000)
    chain = legacy_chain(stack, legacy_payer)
    result = ExactEvmSchemeV1(chain).verify(payload, required.accepts[0])
    assert result.is_valid is True, (result.invalid_reason, result.invalid_message)
    assert result.payer == legacy_payer == auth.from_address

"""Signer.SignX402 through the in-process server over mutual TLS, with an
``x402-exact-evm`` key made on the real SoftHSM2 token.

What it returns is checked with the x402 SDK's own exact-EVM facilitator verification
(over tests/support/x402_chain.py, a local stand-in for the chain) and with
eth-account's typed-data recovery, never only with our code.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address
from paywarden.hsm import KeyRef, TransferWithAuthorization
from paywarden.hsm.eip712 import transfer_digest
from paywarden.hsm.provision import delete_key, generate_key
from paywarden.policy.vocabulary import KeyProfile, Verdict
from paywarden.signer.api.startup import StartupError, load_packs
from paywarden.signer.config import Config
from paywarden.signer.config_file import load_config
from paywarden.signer.core.x402 import matches_decision
from paywarden.signer.store.records import DecisionRecord
from paywarden.v1 import approvals_pb2, control_pb2, signer_pb2
from pydantic import ValidationError
from x402.mechanisms.evm.constants import (
    ERR_INVALID_SIGNATURE,
    ERR_NONCE_ALREADY_USED,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.mechanisms.evm.exact.facilitator import ExactEvmScheme
from x402.schemas import PaymentPayload, PaymentRequirements

from tests.helpers import (
    MODULE,
    Pki,
    Stack,
    TestToken,
    new_nonce,
    trailing_metadata,
    write_config,
)
from tests.support.clients import Api
from tests.support.evm import USDC_BASE, eip3009_typed_data, usdc_x402_config
from tests.support.refusals import assert_refused, decision_id_of
from tests.support.sessions import open_session, spent
from tests.support.x402_chain import LocalEip3009Chain

X402_KEY = KeyRef("x402-pay", 1)
PAYEE = "0x2222222222222222222222222222222222222222"  # no letters: its own EIP-55 form
SHOP = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"  # EIP-55 (the EIP's own example)
# More of EIP-55's examples: one the pack allows in lower case, one it allows in EIP-55
# form and also denies with a lower-case pattern.
LOWER_ENTRY = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
DENIED_BY_PATTERN = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
CONFIG = usdc_x402_config(X402_KEY)
PACK = f"""
id = "x402-shop"
version = 1
agents = ["agent-1", "agent-2"]

[assets.USDC]
keys = ["{X402_KEY.label}"]
max_per_payment = "5"
approval_above = "3"

[payees]
allow = ["{PAYEE}", "{SHOP}", "{LOWER_ENTRY.lower()}", "{DENIED_BY_PATTERN}"]
deny_patterns = ["{DENIED_BY_PATTERN.lower()[:18]}.*"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USDC = "100" }}
"""

# Every test runs on SQLite and on PostgreSQL (the module's stack is made once per backend).
pytestmark = [pytest.mark.both_backends, pytest.mark.stack(packs={"x402.toml": PACK}, extra=CONFIG)]

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
REPLAYED = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module", autouse=True)
def x402_address(token: TestToken) -> Iterator[str]:
    """The x402 key, generated on the session token before the module's stack opens
    it; destroyed afterwards so that the token is again what other modules expect."""
    made, status = generate_key(MODULE, token.label, token.pin, X402_KEY, KeyProfile.X402_EXACT_EVM)
    assert made and status.profile is KeyProfile.X402_EXACT_EVM
    from paywarden.hsm.provision import export_evm_public_key

    try:
        yield export_evm_public_key(MODULE, token.label, token.pin, X402_KEY).address
    finally:
        assert delete_key(MODULE, token.label, token.pin, X402_KEY) == 2


def requirements(**changes: Any) -> signer_pb2.X402PaymentRequirements:
    """What the resource server asks for: 1.25 USDC on Base to PAYEE, unless told."""
    fields: dict[str, Any] = {
        "x402_version": 2,
        "scheme": "exact",
        "network": f"eip155:{USDC_BASE.chain_id}",
        "asset": USDC_BASE.verifying_contract,
        "pay_to": PAYEE,
        "amount": "1250000",
        "resource": "https://api.example/weather",
        "max_timeout_seconds": 120,
        "extra_name": USDC_BASE.name,
        "extra_version": USDC_BASE.version,
    }
    fields.update(changes)
    return signer_pb2.X402PaymentRequirements(**fields)


def x402_request(
    stack: Stack,
    session_id: str,
    *,
    nonce: str | None = None,
    expires_in: int = 240,
    **changes: Any,
) -> signer_pb2.SignX402Request:
    return signer_pb2.SignX402Request(
        session_id=session_id,
        key_id=X402_KEY.label,
        requirements=requirements(**changes),
        reference="inv-x402",
        purpose="weather for the forecast",
        nonce=nonce or new_nonce(),
        expires_at=int(stack.clock.now()) + expires_in,
    )


def paid(
    answer: signer_pb2.SignX402Response,
) -> tuple[PaymentPayload, PaymentRequirements, TransferWithAuthorization, bytes]:
    """The X-PAYMENT header read as the x402 SDK reads it, the requirements it answers,
    and its authorisation and signature as typed values."""
    assert answer.status == signer_pb2.SIGNED
    text = base64.b64decode(answer.x_payment, validate=True).decode("utf-8")
    assert json.loads(text) == json.loads(answer.payment_payload_json)
    payload = PaymentPayload.model_validate_json(text)
    a = payload.payload["authorization"]
    auth = TransferWithAuthorization(
        a["from"], a["to"], int(a["value"]), int(a["validAfter"]), int(a["validBefore"]),
        bytes.fromhex(a["nonce"][2:]),
    )  # fmt: skip
    return payload, payload.accepted, auth, bytes.fromhex(payload.payload["signature"][2:])


def chain_at(stack: Stack, address: str, later: int = 0) -> LocalEip3009Chain:
    return LocalEip3009Chain(
        USDC_BASE, {address: 10**12}, clock=lambda: int(stack.clock.now()) + later
    )


def verdict(chain: LocalEip3009Chain, payload: PaymentPayload, req: PaymentRequirements) -> Any:
    result = ExactEvmScheme(chain).verify(payload, req)
    return None if result.is_valid else result.invalid_reason


# -- what x402 and eth-account make of it --------------------------------------


def test_x402_verification_accepts_the_authorisation_and_recovers_the_key(
    api: Api, stack: Stack, x402_address: str
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    now = int(stack.clock.now())
    answer = api.signer.SignX402(x402_request(stack, session))
    payload, req, auth, signature = paid(answer)

    assert answer.key_id == X402_KEY.key_id and answer.decision_id.startswith("dec_")
    assert answer.from_address == auth.from_address == x402_address
    assert (auth.to, auth.value) == (PAYEE, 1_250_000)
    assert req.pay_to == PAYEE and req.amount == "1250000" and req.scheme == "exact"
    assert req.extra == {"name": USDC_BASE.name, "version": USDC_BASE.version}
    # validAfter a minute back; validBefore now + max_timeout (before the expiry here).
    assert now - 60 <= auth.valid_after <= int(stack.clock.now()) - 60
    assert now + 120 <= auth.valid_before <= int(stack.clock.now()) + 120
    # x402's own facilitator check accepts it, and names the key's address as payer.
    result = ExactEvmScheme(chain_at(stack, x402_address)).verify(payload, req)
    assert result.is_valid is True, (result.invalid_reason, result.invalid_message)
    assert result.payer == x402_address
    # eth-account recovers the key's address from the EIP-712 typed data.
    typed = encode_typed_data(full_message=eip3009_typed_data(USDC_BASE, auth))
    assert Account.recover_message(typed, signature=signature) == x402_address
    # GetPublicKeys lists the key with its address; the JWKS stays P-256 only.
    keys = api.signer.GetPublicKeys(signer_pb2.GetPublicKeysRequest())
    assert [(k.key_id, k.address, k.state) for k in keys.evm_keys] == [
        (X402_KEY.key_id, x402_address, "active")
    ]
    assert X402_KEY.key_id not in keys.jwks_json


def test_x402_rejects_a_changed_byte_another_signer_an_expired_window_and_a_replay(
    api: Api, stack: Stack, x402_address: str
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    payload, req, auth, signature = paid(api.signer.SignX402(x402_request(stack, session)))
    chain = chain_at(stack, x402_address)
    assert verdict(chain, payload, req) is None

    def with_signature(sig: bytes) -> PaymentPayload:
        body = {**payload.payload, "signature": "0x" + sig.hex()}
        return payload.model_copy(update={"payload": body})

    def with_value(value: int) -> PaymentPayload:
        a = {**payload.payload["authorization"], "value": str(value)}
        return payload.model_copy(update={"payload": {**payload.payload, "authorization": a}})

    changed = signature[:7] + bytes([signature[7] ^ 1]) + signature[8:]
    assert verdict(chain, with_signature(changed), req) == ERR_INVALID_SIGNATURE
    assert verdict(chain, with_value(auth.value - 1), req) is not None
    stranger = Account.create().unsafe_sign_hash(transfer_digest(USDC_BASE, auth)).signature
    assert verdict(chain, with_signature(bytes(stranger)), req) == ERR_INVALID_SIGNATURE
    late = chain_at(stack, x402_address, later=auth.valid_before - int(stack.clock.now()))
    assert verdict(late, payload, req) == ERR_VALID_BEFORE_EXPIRED
    chain.spend(x402_address, auth.nonce)
    assert verdict(chain, payload, req) == ERR_NONCE_ALREADY_USED


# -- exactly once ----------------------------------------------------------------


def test_a_retry_returns_the_same_authorisation_and_a_replay_is_refused(
    api: Api, stack: Stack
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    request = x402_request(stack, session)
    first = api.signer.SignX402(request)
    again = api.signer.SignX402(request)
    assert (first.replayed_result, again.replayed_result) == (False, True)
    assert again.x_payment == first.x_payment  # same nonce, same signature: not signed again
    assert again.decision_id == first.decision_id
    # The same agent nonce for another payment is a replay, refused.
    other = x402_request(stack, session, nonce=request.nonce, amount="1250001")
    assert_refused(api.signer.SignX402, other, REPLAYED, "NONCE_REPLAYED")
    # Two payments draw two EIP-3009 nonces.
    second = api.signer.SignX402(x402_request(stack, session))
    assert paid(second)[2].nonce != paid(first)[2].nonce


def test_the_window_never_outlives_the_payment_and_is_refused_when_too_short(
    api: Api, stack: Stack
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    request = x402_request(stack, session, expires_in=30, max_timeout_seconds=600)
    assert paid(api.signer.SignX402(request))[2].valid_before == request.expires_at
    short = x402_request(stack, session, expires_in=4)
    assert_refused(api.signer.SignX402, short, INVALID, "EXPIRY_IN_PAST")


# -- policy: the same facts as Sign -------------------------------------------------


def test_policy_denials_give_no_authorisation(api: Api, stack: Stack) -> None:
    session = open_session(api.planner, "agent-2", "2", asset="USDC")
    signer = api.signer_of("agent-2")
    stranger = "0x3333333333333333333333333333333333333333"
    err = assert_refused(
        signer.SignX402, x402_request(stack, session, pay_to=stranger), DENIED, "PAYEE_NOT_ALLOWED"
    )
    assert "0x" not in (err.details() or "")
    assert_refused(
        signer.SignX402,
        x402_request(stack, session, amount="2000001"),
        DENIED,
        "BUDGET_EXCEEDED",
    )
    # A look-alike of an allowed payee with one letter's case flipped: its checksum fails.
    confusable = "0xa" + SHOP[3:]  # 0xAb58... -> 0xab58...: still mixed case
    assert confusable != SHOP and confusable.lower() == SHOP.lower()
    assert_refused(
        signer.SignX402, x402_request(stack, session, pay_to=confusable), INVALID, "STRING_INVALID"
    )
    # Lower case carries no checksum: accepted, and paid in EIP-55 form.
    answer = signer.SignX402(x402_request(stack, session, pay_to=SHOP.lower()))
    assert paid(answer)[2].to == SHOP


def test_payee_entries_and_patterns_match_an_address_whatever_its_case(
    api: Api, stack: Stack
) -> None:
    # An x402 asset's payees are addresses: the pack's lower-case entry admits the
    # EIP-55 payTo, and its lower-case deny pattern refuses one (it once let it pass).
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    answer = api.signer.SignX402(x402_request(stack, session, pay_to=LOWER_ENTRY))
    assert paid(answer)[2].to == LOWER_ENTRY
    for spelling in (DENIED_BY_PATTERN, DENIED_BY_PATTERN.lower()):
        request = x402_request(stack, session, pay_to=spelling)
        assert_refused(api.signer.SignX402, request, DENIED, "PAYEE_DENYLISTED")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"network": "eip155:1"}, "UNKNOWN_ASSET"),
        ({"network": "solana:mainnet"}, "UNKNOWN_ASSET"),
        ({"asset": "0x" + "44" * 20}, "UNKNOWN_ASSET"),
        ({"scheme": "upto"}, "X402_UNSUPPORTED"),
        ({"x402_version": 3}, "X402_UNSUPPORTED"),
        ({"extra_name": "USD Coin (fake)"}, "X402_DOMAIN_MISMATCH"),
        ({"extra_version": "1"}, "X402_DOMAIN_MISMATCH"),
        ({"amount": "1.5"}, "AMOUNT_MALFORMED"),
        ({"amount": "0"}, "AMOUNT_NOT_POSITIVE"),
        ({"pay_to": "0x" + "00" * 20}, "STRING_INVALID"),
        ({"max_timeout_seconds": 0}, "MALFORMED_REQUEST"),
        # The server's whole extra: strict JSON, flat, bounded; its domain the token's.
        ({"extra_json": '{"name":"USD Coin (fake)"}'}, "X402_DOMAIN_MISMATCH"),
        ({"extra_json": '{"version":2}'}, "X402_DOMAIN_MISMATCH"),
        ({"extra_json": '{"assetTransferMethod":"permit2"}'}, "X402_UNSUPPORTED"),
        ({"extra_json": '{"a":"1","a":"2"}'}, "MALFORMED_REQUEST"),
        ({"extra_json": '{"fee":0.5}'}, "MALFORMED_REQUEST"),
        ({"extra_json": '{"n":NaN}'}, "MALFORMED_REQUEST"),
        ({"extra_json": '{"nested":{"a":1}}'}, "MALFORMED_REQUEST"),
        ({"extra_json": '{"big":9007199254740992}'}, "MALFORMED_REQUEST"),
        ({"extra_json": '["name"]'}, "MALFORMED_REQUEST"),
        ({"extra_json": '{"name":'}, "MALFORMED_REQUEST"),
        ({"extra_json": '{"pad":"' + "x" * 1020 + '"}'}, "MALFORMED_REQUEST"),
        ({"extra_json": '{"note":"a\\u0000b"}'}, "STRING_CONTROL_CHAR"),
        ({"extra_json": '{"\\u202ex":"1"}'}, "STRING_CONTROL_CHAR"),
        ({"extra_json": '{"note":"line\\nbreak"}'}, "STRING_CONTROL_CHAR"),
        ({"extra_json": '{"":1}'}, "FIELD_MISSING"),
        ({"extra_json": '{"note":" padded"}'}, "STRING_INVALID"),
        ({"extra_json": '{"note":"e\\u0301"}'}, "STRING_INVALID"),
    ],
)
def test_requirements_it_does_not_pay_are_refused(
    api: Api, stack: Stack, changes: dict[str, Any], reason: str
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    assert_refused(api.signer.SignX402, x402_request(stack, session, **changes), INVALID, reason)


def test_a_refusal_records_the_whole_network_and_token_asked_for(api: Api, stack: Stack) -> None:
    # agent-2: agent-1's refusals of this kind in other tests are only counted meanwhile
    session = open_session(api.planner, "agent-2", "50", asset="USDC")
    request = x402_request(stack, session, scheme="upto")
    err = assert_refused(api.signer_of("agent-2").SignX402, request, INVALID, "X402_UNSUPPORTED")
    seq = int(trailing_metadata(err)["paywarden-audit-seq"])
    record = json.loads(stack.store.audit_record(seq))
    assert record["action"] == "sign.refused"
    asked = f"eip155:{USDC_BASE.chain_id}/{USDC_BASE.verifying_contract}"
    assert record["untrusted"]["request"]["asset"] == asked
    # what was refused is shown: the requirements as they arrived
    shown = record["untrusted"]["request"]["x402"]
    assert (shown["scheme"], shown["x402_version"], shown["network"]) == (
        "upto", 2, f"eip155:{USDC_BASE.chain_id}"
    )  # fmt: skip
    assert shown["resource"] == request.requirements.resource
    # an integer no JSON reader keeps exactly is recorded as its text, and still audited
    huge = x402_request(stack, session, max_timeout_seconds=2**62)
    err = assert_refused(api.signer_of("agent-2").SignX402, huge, INVALID, "MALFORMED_REQUEST")
    record = json.loads(
        stack.store.audit_record(int(trailing_metadata(err)["paywarden-audit-seq"]))
    )
    assert record["untrusted"]["request"]["x402"]["max_timeout_seconds"] == str(2**62)


def test_accepted_echoes_the_servers_addresses_and_extra_and_a_retry_must_repeat_them(
    api: Api, stack: Stack
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    extra = '{"assetTransferMethod":"eip3009","name":"USD Coin","tier":2,"test":true}'
    request = x402_request(stack, session, pay_to=SHOP.lower(), extra_json=extra)
    request.requirements.asset = request.requirements.asset.lower()
    answer = api.signer.SignX402(request)
    accepted = json.loads(answer.payment_payload_json)["accepted"]
    assert (accepted["payTo"], accepted["asset"]) == (SHOP.lower(), request.requirements.asset)
    assert accepted["extra"] == {
        "assetTransferMethod": "eip3009", "name": "USD Coin", "tier": 2, "test": True,
        "version": "2",
    }  # fmt: skip
    assert paid(answer)[2].to == SHOP  # the authorisation and the policy: EIP-55
    again = api.signer.SignX402(request)
    assert again.replayed_result and again.x_payment == answer.x_payment
    # The same nonce with the addresses or the extra written otherwise is another request.
    for change in ("pay_to", "asset", "extra_json"):
        other = signer_pb2.SignX402Request()
        other.CopyFrom(request)
        if change == "extra_json":
            other.requirements.extra_json = '{"name":"USD Coin","tier":3}'
        else:
            written = getattr(request.requirements, change)
            setattr(other.requirements, change, to_checksum_address(written))
        assert_refused(api.signer.SignX402, other, REPLAYED, "NONCE_REPLAYED")


def test_sign_and_sign_x402_keep_to_their_own_keys_and_assets(api: Api, stack: Stack) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    jws_key = x402_request(stack, session)
    jws_key.key_id = "payments.v1"
    assert_refused(api.signer.SignX402, jws_key, INVALID, "UNKNOWN_KEY")
    intent = signer_pb2.PaymentIntent(
        session_id=session, key_id=X402_KEY.label, payee=PAYEE, amount="1", asset="USDC",
        reference="r", nonce=new_nonce(), expires_at=int(stack.clock.now()) + 60,
    )  # fmt: skip
    request = signer_pb2.SignRequest(intent=intent)
    assert_refused(api.signer.Sign, request, INVALID, "UNKNOWN_KEY")
    request.intent.key_id = "payments.v1"
    assert_refused(api.signer.Sign, request, INVALID, "UNKNOWN_ASSET")


def test_a_pack_may_grant_an_x402_key_only_on_an_x402_asset(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    def load(pack: str) -> None:
        path = write_config(tmp_path, token, pki, packs={"x402.toml": pack}, extra=CONFIG)
        load_packs(load_config(path, environ={}), [])

    load(PACK)  # the module's own pack loads
    wrong = PACK.replace('keys = ["x402-pay"]', 'keys = ["payments"]')
    with pytest.raises(StartupError, match="grants key payments, a jws-es256 key"):
        load(wrong)
    usd = PACK.replace("[assets.USDC]", "[assets.USD]").replace('USDC = "100"', 'USD = "100"')
    with pytest.raises(StartupError, match="grants key x402-pay, a x402-exact-evm key"):
        load(usd)


def _x402_asset(**changes: Any) -> dict[str, Any]:
    x402 = {"chain_id": 8453, "contract": USDC_BASE.verifying_contract}
    x402 |= {"eip712_name": "USD Coin", "eip712_version": "2", **changes}
    return {"decimals": 6, "x402": x402}


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"assets": {"USDC": _x402_asset(contract="0x833589fcD6eDb6E08f4c7C32D4f71b54bdA02913")}},
         "checksum"),
        ({"assets": {"USDC": _x402_asset(chain_id=0)}}, "chain_id"),
        ({"assets": {"USDC": _x402_asset(), "USDX": _x402_asset()}}, "the same x402 token"),
        ({"keys": [{"label": "pay", "version": 1},
                   {"label": "pay", "version": 2, "profile": "x402-exact-evm"}]},
         "under two profiles"),
        ({"keys": [{"label": "pay", "version": 1, "profile": "x402"}]}, "profile"),
        ({"assets": {"USDC": {**_x402_asset(), "case_insensitive_payees": False}}},
         "case_insensitive_payees must be true"),
    ],
)  # fmt: skip
def test_the_config_refuses_an_unusable_x402_asset_or_key(
    settings: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        Config.model_validate(settings)


def test_a_recorded_authorisation_is_signed_only_if_it_pays_what_its_decision_says() -> None:
    # Before the HSM signs a recorded x402 payload (a retry after approval or after an
    # HSM failure), it is compared with the decision's own columns: a payload changed
    # in the store (another payTo, value or a later window) is never signed.
    record = DecisionRecord(
        id="dec_1", created_at=1_000, agent_id="agent-1", session_id="ses_1", nonce="n",
        request_hash="h", outcome=Verdict.NEEDS_APPROVAL, reason="APPROVAL_REQUIRED",
        message="", key_id=X402_KEY.key_id, asset="USDC", amount_minor=4_000_000,
        payee=SHOP, expires_at=1_240,
    )  # fmt: skip
    own = TransferWithAuthorization(PAYEE, SHOP, 4_000_000, 940, 1_240, bytes(32))
    config = Config.model_validate({"assets": {"USDC": _x402_asset()}})
    x402 = {code: a.x402 for code, a in config.assets.items() if a.x402 is not None}
    assert matches_decision(record, USDC_BASE, own, x402)
    for changed in (
        dataclasses.replace(own, to=PAYEE),
        dataclasses.replace(own, value=4_000_001),
        dataclasses.replace(own, valid_before=1_241),
    ):
        assert not matches_decision(record, USDC_BASE, changed, x402)
    for domain in (
        dataclasses.replace(USDC_BASE, chain_id=1),
        dataclasses.replace(USDC_BASE, verifying_contract=PAYEE),
        dataclasses.replace(USDC_BASE, name="USD Coin (fake)"),
        dataclasses.replace(USDC_BASE, version="1"),
    ):
        assert not matches_decision(record, domain, own, x402)
    assert not matches_decision(dataclasses.replace(record, asset="USDX"), USDC_BASE, own, x402)


def test_a_payment_held_for_approval_is_authorised_once_approved(
    api: Api, stack: Stack, x402_address: str
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    request = x402_request(stack, session, amount="4000000")
    held = api.signer.SignX402(request)
    assert held.status == signer_pb2.PENDING_APPROVAL and held.approval_id.startswith("apr_")
    assert (held.x_payment, held.payment_payload_json) == ("", "")
    assert held.from_address == x402_address
    approve = approvals_pb2.ApproveRequest(approval_id=held.approval_id, note="ok")
    assert api.approver("approver-1").Approve(approve).approval.approval_id == held.approval_id
    signed = api.signer.SignX402(request)
    assert signed.decision_id == held.decision_id
    payload, req, auth, _ = paid(signed)
    assert (auth.to, auth.value, auth.from_address) == (PAYEE, 4_000_000, x402_address)
    assert verdict(chain_at(stack, x402_address), payload, req) is None


def held_until(api: Api, approval_id: str) -> int:
    """When the approval expires, as approvers see it."""
    request = approvals_pb2.GetApprovalRequest(approval_id=approval_id)
    return int(api.approver("approver-1").GetApproval(request).approval.expires_at)


def recorded_window(stack: Stack, decision_id: str) -> int:
    """The validBefore of the authorisation recorded with a decision."""
    payload = stack.store.get_decision(decision_id).payload
    return int(json.loads(payload)["authorization"]["validBefore"])


def test_an_approval_granted_after_the_window_closed_gives_no_authorisation(
    api: Api, stack: Stack
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    request = x402_request(stack, session, amount="4000000", max_timeout_seconds=10)
    held = api.signer.SignX402(request)
    assert held.status == signer_pb2.PENDING_APPROVAL
    # The approval lasts while the authorisation can still be signed: until validBefore
    # is less than x402's 6 s ahead (not until the payment's exp, 230 s later).
    assert held_until(api, held.approval_id) == recorded_window(stack, held.decision_id) - 5
    stack.clock.advance(5)  # validBefore is now 5 s ahead
    approve = approvals_pb2.ApproveRequest(approval_id=held.approval_id, note="late")
    approver = api.approver("approver-1")
    assert_refused(approver.Approve, approve, PRECONDITION, "APPROVAL_NOT_PENDING")
    err = assert_refused(api.signer.SignX402, request, DENIED, "APPROVAL_EXPIRED")
    assert decision_id_of(err) == held.decision_id
    # The hold is released with it, and a later retry neither signs nor spends.
    assert spent(api.agent_sessions, session) == {"USDC": "0.000000"}
    assert_refused(api.signer.SignX402, request, DENIED, "APPROVAL_EXPIRED")
    assert spent(api.agent_sessions, session) == {"USDC": "0.000000"}


def test_a_key_freeze_voids_an_issued_authorisation_and_refuses_new_ones(
    api: Api, stack: Stack
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    answer = api.signer.SignX402(x402_request(stack, session))
    operator = api.signer_as("operator", "operator-1")
    check = signer_pb2.CheckPaymentRequest(decision_id=answer.decision_id)
    standing = operator.CheckPayment(check)
    assert (standing.standing, standing.payee, standing.amount) == (
        signer_pb2.VALID, PAYEE, "1.250000"
    )  # fmt: skip
    key = control_pb2.FreezeRequest(
        scope=control_pb2.KEY, target=X402_KEY.key_id, reason="x402 key suspected"
    )
    api.control().Freeze(key)
    try:
        # The kill switch stops new authorisations; one already issued stays valid on
        # chain until its validBefore, and CheckPayment says it is voided.
        request = x402_request(stack, session)
        assert_refused(api.signer.SignX402, request, PRECONDITION, "FROZEN")
        assert operator.CheckPayment(check).standing == signer_pb2.VOIDED
    finally:
        lift = control_pb2.UnfreezeRequest(
            scope=control_pb2.KEY, target=X402_KEY.key_id, reason="all clear"
        )
        api.control().Unfreeze(lift)
    assert paid(api.signer.SignX402(x402_request(stack, session)))[2].to == PAYEE


def test_check_payment_says_expired_once_the_authorisation_window_closed(
    api: Api, stack: Stack
) -> None:
    session = open_session(api.planner, "agent-1", "50", asset="USDC")
    answer = api.signer.SignX402(x402_request(stack, session, max_timeout_seconds=30))
    valid_before = paid(answer)[2].valid_before
    operator = api.signer_as("operator", "operator-1")
    check = signer_pb2.CheckPaymentRequest(decision_id=answer.decision_id)
    standing = operator.CheckPayment(check)
    assert (standing.standing, standing.expires_at) == (signer_pb2.VALID, valid_before)
    stack.clock.advance(valid_before - int(stack.clock.now()))  # exp is 210 s later
    standing = operator.CheckPayment(check)
    assert (standing.standing, standing.reason) == (signer_pb2.EXPIRED, "PAYMENT_EXPIRED")
    assert standing.detail == "the authorisation is past its validBefore"


def test_a_version_the_view_forgets_is_no_longer_held_by_the_hsm(
    stack: Stack, x402_address: str
) -> None:
    """A version that stopped signing is dropped by the HSM client (so that a reopen
    never needs it once destroyed): x402 keys too. Last in the module: the module's
    HSM client no longer holds the key afterwards."""
    assert [k.address for k in stack.hsm.evm_public_keys()] == [x402_address]
    stack.hsm.forget([X402_KEY.key_id])
    assert stack.hsm.evm_public_keys() == []

"""What the x402 attack tests (tests/attacks/test_x402_attacks.py) use: an
``x402-exact-evm`` key made on the run's token, two x402 assets (USDC on Base and on
Base Sepolia), the requests an agent sends, how an answer's authorisation is read
(checked with eth-account, never only with our code), and how the store is asked
whether anything was signed.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar
from unittest import mock

import grpc
from eth_account import Account
from eth_account.messages import encode_typed_data
from paywarden.hsm import Eip712Domain, KeyRef, TransferWithAuthorization
from paywarden.hsm.evm import checksum_address
from paywarden.hsm.provision import delete_key, export_evm_public_key, generate_key
from paywarden.policy.vocabulary import KeyProfile
from paywarden.signer.api.x402_rpcs import request_fields
from paywarden.signer.core.x402 import X402Fields
from paywarden.signer.store.records import DecisionRecord
from paywarden.v1 import signer_pb2
from x402.mechanisms.evm.exact import facilitator as exact_facilitator
from x402.schemas import PaymentPayload

from tests.helpers import MODULE, Stack, TestToken, new_nonce
from tests.support.evm import USDC_BASE, eip3009_typed_data, x402_asset_toml, x402_key_toml
from tests.support.x402_chain import LocalEip3009Chain

T = TypeVar("T")

ATK_KEY = KeyRef("x402-atk", 1)
# USDC on Base Sepolia: a second x402 asset, so that "another network and token" is
# a payment the signer would make, not one it refuses as unknown.
USDC_SEPOLIA = Eip712Domain(
    "USDC", "2", 84532, checksum_address(bytes.fromhex("036cbd53842c5426634e7929541ec2318f3dcf7e"))
)

ATK_CONFIG = (
    x402_asset_toml("USDC", USDC_BASE)
    + x402_asset_toml("TUSDC", USDC_SEPOLIA)
    + x402_key_toml(ATK_KEY)
)


@contextmanager
def atk_key_address(token: TestToken) -> Iterator[str]:
    """The attack key, generated on the session token (before a stack opens it), and
    destroyed afterwards so that the token is again what other modules expect."""
    made, status = generate_key(MODULE, token.label, token.pin, ATK_KEY, KeyProfile.X402_EXACT_EVM)
    assert made and status.profile is KeyProfile.X402_EXACT_EVM
    try:
        yield export_evm_public_key(MODULE, token.label, token.pin, ATK_KEY).address
    finally:
        assert delete_key(MODULE, token.label, token.pin, ATK_KEY) == 2


def x402_asks(pay_to: str, amount: str, **changes: Any) -> signer_pb2.X402PaymentRequirements:
    """What a resource server asks: ``amount`` atomic units of USDC on Base to
    ``pay_to``, unless ``changes`` say otherwise."""
    fields: dict[str, Any] = {
        "x402_version": 2,
        "scheme": "exact",
        "network": f"eip155:{USDC_BASE.chain_id}",
        "asset": USDC_BASE.verifying_contract,
        "pay_to": pay_to,
        "amount": amount,
        "resource": "https://api.example/weather",
        "max_timeout_seconds": 120,
        "extra_name": USDC_BASE.name,
        "extra_version": USDC_BASE.version,
    }
    fields.update(changes)
    return signer_pb2.X402PaymentRequirements(**fields)


def on_sepolia(**changes: Any) -> dict[str, Any]:
    """The requirement fields that move a payment to USDC on Base Sepolia."""
    return {
        "network": f"eip155:{USDC_SEPOLIA.chain_id}",
        "asset": USDC_SEPOLIA.verifying_contract,
        "extra_name": USDC_SEPOLIA.name,
        "extra_version": USDC_SEPOLIA.version,
        **changes,
    }


def x402_pay(
    stack: Stack,
    session_id: str,
    pay_to: str,
    amount: str,
    *,
    expires_in: int = 240,
    **fields: Any,
) -> signer_pb2.SignX402Request:
    """The SignX402 request an agent sends for ``x402_asks(pay_to, amount, ...)``,
    expiring ``expires_in`` seconds from the stack's clock (see :func:`x402_pay_until`)."""
    expires_at = int(stack.clock.now()) + expires_in
    return x402_pay_until(expires_at, session_id, pay_to, amount, **fields)


def x402_pay_until(
    expires_at: int,
    session_id: str,
    pay_to: str,
    amount: str,
    *,
    nonce: str | None = None,
    purpose: str = "weather for the forecast",
    reference: str = "inv-x402",
    **changes: Any,
) -> signer_pb2.SignX402Request:
    """The SignX402 request for ``x402_asks(pay_to, amount, **changes)`` expiring at
    ``expires_at`` (a fresh nonce unless one is given)."""
    return signer_pb2.SignX402Request(
        session_id=session_id,
        key_id=ATK_KEY.label,
        requirements=x402_asks(pay_to, amount, **changes),
        reference=reference,
        purpose=purpose,
        nonce=nonce or new_nonce(),
        expires_at=expires_at,
    )


def x402_fields(
    session_id: str, pay_to: str, amount: str, *, expires_at: int, nonce: str | None = None
) -> X402Fields:
    """``x402_pay``'s request as the service takes it in process (USDC on Base)."""
    request = signer_pb2.SignX402Request(
        session_id=session_id,
        key_id=ATK_KEY.label,
        requirements=x402_asks(pay_to, amount),
        reference="inv-x402",
        purpose="weather for the forecast",
        nonce=nonce or new_nonce(),
        expires_at=expires_at,
    )
    return request_fields(request)  # as the RPC maps it


@dataclass(frozen=True, slots=True)
class Paid:
    """An answer's X-PAYMENT read back: the PaymentPayload JSON, its authorisation, and
    the address eth-account recovers from the signature over the typed data."""

    document: dict[str, Any]
    authorization: TransferWithAuthorization
    signer: str


def paid_by(answer: signer_pb2.SignX402Response, domain: Eip712Domain = USDC_BASE) -> Paid:
    """The authorisation ``answer`` carries (it must be SIGNED, with the X-PAYMENT
    header the base64 of its PaymentPayload JSON)."""
    assert answer.status == signer_pb2.SIGNED, signer_pb2.SignStatus.Name(answer.status)
    text = base64.b64decode(answer.x_payment, validate=True).decode("utf-8")
    document: dict[str, Any] = json.loads(text)
    assert document == json.loads(answer.payment_payload_json)
    return read_payment(document, domain)


def read_payment(document: dict[str, Any], domain: Eip712Domain = USDC_BASE) -> Paid:
    """A PaymentPayload document's authorisation, and who eth-account says signed it."""
    a = document["payload"]["authorization"]
    auth = TransferWithAuthorization(
        a["from"], a["to"], int(a["value"]), int(a["validAfter"]), int(a["validBefore"]),
        bytes.fromhex(a["nonce"].removeprefix("0x")),
    )  # fmt: skip
    typed = encode_typed_data(full_message=eip3009_typed_data(domain, auth))
    signer = Account.recover_message(typed, signature=document["payload"]["signature"])
    return Paid(document, auth, signer)


def facilitator_verdicts(
    stack: Stack, address: str, answers: Sequence[signer_pb2.SignX402Response]
) -> list[str | None]:
    """What x402's own exact-EVM facilitator verification says of each answer's
    X-PAYMENT (None: valid), each settled on the stand-in chain once verified, so that
    a second authorisation with a used nonce would be refused.

    The facilitator reads its own clock (``time.time()`` in its module): it is given the
    stack's, which the module's tests move forward (time is an input, as for the chain)."""
    chain = LocalEip3009Chain(USDC_BASE, {address: 10**12}, clock=lambda: int(stack.clock.now()))
    verdicts: list[str | None] = []
    with mock.patch.object(exact_facilitator, "time", SimpleNamespace(time=stack.clock.now)):
        for answer in answers:
            text = base64.b64decode(answer.x_payment, validate=True).decode("utf-8")
            payload = PaymentPayload.model_validate_json(text)
            result = exact_facilitator.ExactEvmScheme(chain).verify(payload, payload.accepted)
            verdicts.append(None if result.is_valid else result.invalid_reason)
            nonce = payload.payload["authorization"]["nonce"]
            chain.spend(address, bytes.fromhex(nonce.removeprefix("0x")))
    return verdicts


def by_nonce(stack: Stack, agent: str, nonce: str) -> DecisionRecord | None:
    """The decision the store holds for ``agent``'s ``nonce`` (None: nothing was decided)."""
    with stack.store.payment_tx() as tx:
        record: DecisionRecord | None = tx.decision_for_nonce(agent, nonce)
        return record


def assert_nothing_signed(stack: Stack, agent: str, nonce: str) -> DecisionRecord | None:
    """``agent``'s ``nonce`` has no signed decision: none at all, or a denial that
    holds no payload and no signature. Returns what the store holds."""
    record = by_nonce(stack, agent, nonce)
    if record is not None:
        assert (record.outcome, record.payload, record.jws) == ("deny", None, None), record
    return record


def decisions_since(stack: Stack, after: int) -> list[dict[str, Any]]:
    """The ``sign.decision`` audit records written after audit record ``after``."""
    size, _root = stack.store.audit_head()
    records = [json.loads(stack.store.audit_record(seq)) for seq in range(after + 1, size + 1)]
    return [r for r in records if r["action"] == "sign.decision"]


def refusals_since(stack: Stack, after: int) -> list[str]:
    """The messages of the ``sign.refused`` audit records after ``after`` (a refusal is
    recorded in full when it is the first of its reason in the summary window)."""
    size, _root = stack.store.audit_head()
    records = [json.loads(stack.store.audit_record(seq)) for seq in range(after + 1, size + 1)]
    return [str(r["message"]) for r in records if r["action"] == "sign.refused"]


def allowed_since(stack: Stack, after: int) -> list[dict[str, Any]]:
    """The ``sign.decision`` audit records after ``after`` that allow or hold a payment."""
    return [r for r in decisions_since(stack, after) if r["decision"]["outcome"] != "deny"]


def atk_log_size(stack: Stack) -> int:
    size, _root = stack.store.audit_head()
    return int(size)


def all_at_once(calls: Sequence[Callable[[], T]]) -> list[T | grpc.RpcError]:
    """Runs every call at the same moment (a thread each, released together): each
    one's answer, or the error it raised, in order."""
    barrier = threading.Barrier(len(calls))

    def attempt(call: Callable[[], T]) -> T | grpc.RpcError:
        barrier.wait()
        try:
            return call()
        except grpc.RpcError as err:
            return err

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(attempt, calls))

"""x402 end to end without a chain: an agent using the SDK pays a resource server's HTTP 402
through a real ``paywarden serve`` (mutual TLS, the real SoftHSM2 token, a secp256k1 key).

The resource server is the x402 SDK's own HTTP server logic on 127.0.0.1, and the payment
is verified and settled by the SDK's own exact-EVM facilitator over a local stand-in for the
chain (tests/support/x402_server.py, x402_chain.py): nothing of Paywarden's judges the
authorisation. Policy denials give no authorisation, so the resource server never sees a
payment header; a lost answer is collected again (the same authorisation, paid once); a
payment header sent twice is refused the second time by the facilitator (nonce used).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from paywarden.client import (
    AgentClient,
    ApproverClient,
    ConnectionSettings,
    PlannerClient,
    PreparedX402,
    RetryPolicy,
    SignRefused,
    X402Pending,
    X402Requirements,
    X402Signed,
    offers,
)
from paywarden.client.aio import AgentClient as AioAgentClient
from paywarden.hsm import KeyRef
from paywarden.hsm.provision import delete_key, export_evm_public_key, generate_key
from paywarden.policy.vocabulary import KeyProfile
from paywarden.signer.config import StoreConfig
from paywarden.signer.config_file import load_config
from paywarden.signer.store.offline_reads import read_audit_log, table_rows
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.mechanisms.evm.constants import ERR_NONCE_ALREADY_USED
from x402.schemas import PaymentRequired

from tests.helpers import MODULE, Pki, ServeProcess, TestToken, serve, write_config
from tests.support.evm import USDC_BASE, usdc_x402_config
from tests.support.faults import answer_dropping_proxy
from tests.support.sdk import settings_for, upstream_of
from tests.support.x402_chain import SettlingEip3009Chain
from tests.support.x402_server import CONTENT, X402Shop, x402_shop

E2E_KEY = KeyRef("x402-e2e", 1)
SHOP = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"  # EIP-55, mixed case (the EIP's example)
PRICE = "1250000"  # 1.25 USDC
E2E_CONFIG = usdc_x402_config(E2E_KEY)
E2E_PACK = f"""
id = "x402-e2e"
version = 1
agents = ["agent-1"]

[assets.USDC]
keys = ["{E2E_KEY.label}"]
max_per_payment = "5"
approval_above = "3"

[payees]
allow = ["{SHOP}"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USDC = "100" }}
"""
QUICK = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, approval_poll=0.05)


@dataclass(frozen=True)
class X402Signer:
    """The running signer, its store and the address of its x402 key."""

    process: ServeProcess
    store: StoreConfig
    address: str

    def settings(self, role: str, principal: str, pki: Pki) -> ConnectionSettings:
        return settings_for(pki, self.process.addr, role, principal)

    def decisions(self, session_id: str) -> list[dict[str, Any]]:
        return [r for r in table_rows(self.store, "decisions") if r["session_id"] == session_id]

    def audit(self) -> list[dict[str, Any]]:
        rows, _ = read_audit_log(self.store)
        return [json.loads(body) for _seq, body, _leaf in rows]


@pytest.fixture(scope="module")
def x402_signer(
    tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki
) -> Iterator[X402Signer]:
    """``paywarden serve`` with an x402 key made on the session's token before it starts;
    the key is destroyed once it stopped, so the token is again what other modules expect."""
    made, _ = generate_key(MODULE, token.label, token.pin, E2E_KEY, KeyProfile.X402_EXACT_EVM)
    assert made
    try:
        address = export_evm_public_key(MODULE, token.label, token.pin, E2E_KEY).address
        directory = tmp_path_factory.mktemp("x402-e2e")
        config = write_config(
            directory, token, pki, packs={"x402.toml": E2E_PACK}, extra=E2E_CONFIG
        )
        with serve(config) as process:
            yield X402Signer(process, load_config(config, environ={}).store, address)
    finally:
        assert delete_key(MODULE, token.label, token.pin, E2E_KEY) == 2


@pytest.fixture
def agent(x402_signer: X402Signer, pki: Pki) -> Iterator[AgentClient]:
    with AgentClient(x402_signer.settings("agent", "agent-1", pki), retry=QUICK) as client:
        yield client


@pytest.fixture
def planner(x402_signer: X402Signer, pki: Pki) -> Iterator[PlannerClient]:
    with PlannerClient(x402_signer.settings("planner", "planner-1", pki)) as client:
        yield client


@pytest.fixture
def chain(x402_signer: X402Signer) -> SettlingEip3009Chain:
    """A fresh chain on which the key's address holds a million USDC."""
    return SettlingEip3009Chain(USDC_BASE, {x402_signer.address: 10**12})


def usdc_session(planner: PlannerClient, budget: str = "10") -> str:
    return planner.open_session("agent-1", task="weather", budgets={"USDC": budget}).session_id


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """GET ``url``: status, headers, body (a 4xx answer is an answer, not an error)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.headers, answer.read()


def payment_required(url: str) -> str:
    """The resource's 402 answer: its PAYMENT-REQUIRED header value."""
    status, headers, _ = http_get(url)
    assert status == 402
    header: str = headers["PAYMENT-REQUIRED"]
    return header


def pay(agent: AgentClient, session: str, shop: X402Shop, **order: Any) -> X402Signed:
    """What an agent does on a 402: read the offer, have the signer authorise it."""
    [offer] = offers(payment_required(shop.url))
    answer = agent.sign_x402(
        session, offer, key_id=E2E_KEY.label, reference="order-1", purpose="forecast", **order
    )
    assert isinstance(answer, X402Signed)
    return answer


def test_an_agent_pays_a_402_through_paywarden_and_gets_the_resource(
    x402_signer: X402Signer,
    agent: AgentClient,
    planner: PlannerClient,
    chain: SettlingEip3009Chain,
) -> None:
    session = usdc_session(planner)
    with x402_shop(chain, SHOP, PRICE) as shop:
        header = payment_required(shop.url)
        # The 402 is x402 v2 as the SDK writes it: what the agent reads is what was sent.
        required = decode_payment_required_header(header)
        assert isinstance(required, PaymentRequired) and required.resource is not None
        [offer] = offers(header)
        assert offer == X402Requirements(
            scheme="exact", network="eip155:8453", asset=USDC_BASE.verifying_contract,
            pay_to=SHOP, amount=PRICE, max_timeout_seconds=60, resource=shop.url,
            extra_name=USDC_BASE.name, extra_version=USDC_BASE.version,
            extra_json=json.dumps(
                {"name": USDC_BASE.name, "version": USDC_BASE.version}, separators=(",", ":")
            ),
        )  # fmt: skip
        paid = agent.sign_x402(
            session, json.loads(base64.b64decode(header))["accepts"][0], key_id=E2E_KEY.label,
            reference="order-1", purpose="forecast", resource=shop.url,
            from_address=x402_signer.address,
        )  # fmt: skip
        assert isinstance(paid, X402Signed) and not paid.replayed and paid.attempts == 1
        assert (paid.authorization.to, paid.authorization.value) == (SHOP, 1_250_000)
        assert paid.from_address == paid.authorization.from_address == x402_signer.address
        status, headers, body = http_get(shop.url, paid.headers)
    assert (status, json.loads(body)) == (200, CONTENT)
    settled = decode_payment_response_header(headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.payer == x402_signer.address
    assert shop.payments() == [paid.x_payment]
    # The chain moved the money once, and the authorisation's nonce is spent.
    assert chain.balances[SHOP.lower()] == 1_250_000 and len(chain.receipts) == 1
    nonce = bytes.fromhex(paid.authorization.nonce[2:])
    assert (x402_signer.address.lower(), nonce) in chain.used
    # The signer's audit shows the decision that allowed it, and the session's spend.
    audit = x402_signer.audit()
    [record] = [r for r in audit if r.get("decision", {}).get("id") == paid.decision_id]
    assert record["decision"]["outcome"] == "allow"
    assert record["decision"]["payee"] == SHOP and record["decision"]["asset"] == "USDC"
    assert {s.asset: s.spent for s in agent.session(session).spend} == {"USDC": "1.250000"}


def test_a_server_that_writes_pay_to_in_lower_case_and_more_extra_finds_its_requirements(
    agent: AgentClient, planner: PlannerClient, chain: SettlingEip3009Chain
) -> None:
    # x402's resource server matches the payment's accepted requirements with its own
    # by string (payTo, asset) and by subset (extra): the signer echoes them as written.
    session = usdc_session(planner)
    extra = {"assetTransferMethod": "eip3009", "shop": "weather", "tier": 2}
    with x402_shop(chain, SHOP.lower(), PRICE, extra=extra) as shop:
        paid = pay(agent, session, shop)
        accepted = json.loads(paid.payment_payload_json)["accepted"]
        assert accepted["payTo"] == SHOP.lower()
        assert accepted["extra"] == {"name": USDC_BASE.name, "version": USDC_BASE.version, **extra}
        assert paid.authorization.to == SHOP  # the chain and the policy see EIP-55
        status, _, body = http_get(shop.url, paid.headers)
    assert (status, json.loads(body)) == (200, CONTENT)
    assert chain.balances[SHOP.lower()] >= 1_250_000


def test_the_log_holds_the_x402_keys_fingerprint_and_address_before_it_signs(
    x402_signer: X402Signer, token: TestToken
) -> None:
    # No authorisation is signed with a key whose fingerprint the log does not hold.
    key = export_evm_public_key(MODULE, token.label, token.pin, E2E_KEY)
    loads = [r for r in x402_signer.audit() if r["action"] == "keys.load"]
    assert loads and all(
        {
            "key_id": E2E_KEY.key_id,
            "spki_sha256": hashlib.sha256(key.spki_der).hexdigest(),
            "address": x402_signer.address,
        }
        in r["keys"]
        for r in loads
    )


def cases() -> list[Any]:
    raw = bytes.fromhex(SHOP[2:])
    neighbour = to_checksum_address(raw[:19] + bytes([raw[19] ^ 0x01]))  # one nibble off
    flipped = "0xa" + SHOP[3:]  # 0xAb58... -> 0xab58...: still mixed case, checksum broken
    assert flipped.lower() == SHOP.lower() and flipped != SHOP
    assert neighbour != SHOP and neighbour.lower()[:-1] == SHOP.lower()[:-1]
    # (payTo, the session's budget, the reason, whether the policy decided it)
    return [
        pytest.param("0x" + "33" * 20, "10", "PAYEE_NOT_ALLOWED", True, id="payee-not-allowed"),
        pytest.param(SHOP, "1", "BUDGET_EXCEEDED", True, id="over-budget"),
        pytest.param(flipped, "10", "STRING_INVALID", False, id="confusable-checksum"),
        pytest.param(neighbour, "10", "PAYEE_NOT_ALLOWED", True, id="one-nibble-off"),
        pytest.param(neighbour.lower(), "10", "PAYEE_NOT_ALLOWED", True, id="one-nibble-off-lower"),
    ]


@pytest.mark.parametrize(("pay_to", "budget", "reason", "decided"), cases())
def test_policy_denials_give_no_authorisation_and_send_no_payment(
    x402_signer: X402Signer,
    agent: AgentClient,
    planner: PlannerClient,
    chain: SettlingEip3009Chain,
    pay_to: str,
    budget: str,
    reason: str,
    decided: bool,
) -> None:
    session = usdc_session(planner, budget)
    with x402_shop(chain, pay_to, PRICE) as shop:
        with pytest.raises(SignRefused) as refused:
            pay(agent, session, shop)
        assert shop.payments() == []  # the resource server was never sent a header
        assert [s.status for s in shop.seen] == [402]
    error = refused.value
    assert error.reason == reason
    assert chain.used == set() and chain.receipts == {}
    assert [d["outcome"] for d in x402_signer.decisions(session)] == (["deny"] if decided else [])
    assert all(Decimal(s.spent or "0") == 0 for s in agent.session(session).spend)
    if decided:  # a policy denial is on record, with its signed receipt
        [record] = [r for r in x402_signer.audit() if r.get("seq") == error.audit_seq]
        assert record["action"] == "sign.decision"
        assert record["decision"]["id"] == error.decision_id
        assert (record["decision"]["outcome"], record["decision"]["reason"]) == ("deny", reason)
        assert error.receipt is not None
    else:  # refused as invalid before the policy saw it: no decision to name
        assert error.decision_id is None


def test_a_lost_answer_is_collected_again_and_the_authorisation_pays_once(
    x402_signer: X402Signer,
    agent: AgentClient,
    planner: PlannerClient,
    chain: SettlingEip3009Chain,
    pki: Pki,
) -> None:
    session = usdc_session(planner)
    settings = x402_signer.settings("agent", "agent-1", pki)
    decided = lambda: bool(x402_signer.decisions(session))  # noqa: E731
    with x402_shop(chain, SHOP, PRICE) as shop:
        [offer] = offers(payment_required(shop.url))
        prepared = agent.prepare_x402(session, offer, key_id=E2E_KEY.label, reference="order-2")
        with answer_dropping_proxy(upstream_of(x402_signer.process.addr), decided) as proxy:
            via_proxy = ConnectionSettings(
                addr=proxy.addr, ca=settings.ca, cert=settings.cert, key=settings.key,
                server_name="localhost",
            )  # fmt: skip
            with AgentClient(via_proxy, retry=QUICK) as lossy:
                first = lossy.submit_x402(prepared)
        assert proxy.cut.is_set() and proxy.withheld > 0  # the first answer never arrived
        assert isinstance(first, X402Signed) and first.attempts == 2 and first.replayed
        # Sent again later (the bytes kept), the same decision and the same authorisation.
        again = agent.resume(PreparedX402.from_bytes(prepared.to_bytes()))
        assert isinstance(again, X402Signed) and again.replayed
        assert (again.x_payment, again.decision_id) == (first.x_payment, first.decision_id)
        assert [d["id"] for d in x402_signer.decisions(session)] == [first.decision_id]
        # The facilitator accepts it once; the same header again is a used nonce.
        assert http_get(shop.url, first.headers)[0] == 200
        status, headers, _ = http_get(shop.url, again.headers)
        assert status == 402
        refusal = decode_payment_required_header(headers["PAYMENT-REQUIRED"])
        assert refusal.error == ERR_NONCE_ALREADY_USED
    assert chain.balances[SHOP.lower()] == 1_250_000 and len(chain.receipts) == 1
    assert {s.asset: s.spent for s in agent.session(session).spend} == {"USDC": "1.250000"}


def test_a_payment_held_for_approval_pays_once_a_human_approves(
    x402_signer: X402Signer,
    agent: AgentClient,
    planner: PlannerClient,
    chain: SettlingEip3009Chain,
    pki: Pki,
) -> None:
    session = usdc_session(planner)
    with x402_shop(chain, SHOP, "4000000") as shop:  # 4 USDC: above approval_above
        [offer] = offers(payment_required(shop.url))
        held = agent.sign_x402(session, offer, key_id=E2E_KEY.label, reference="order-3")
        assert isinstance(held, X402Pending)
        assert shop.payments() == []
        with ApproverClient(x402_signer.settings("approver", "approver-1", pki)) as approver:
            approver.approve(held.approval_id, note="forecast is worth it")
        paid = agent.resume(held, wait_for_approval=30)
        assert isinstance(paid, X402Signed) and paid.approval_id == held.approval_id
        assert http_get(shop.url, paid.headers)[0] == 200
    assert chain.balances[SHOP.lower()] == 4_000_000


def test_the_asyncio_agent_pays_the_same_way(
    x402_signer: X402Signer, planner: PlannerClient, chain: SettlingEip3009Chain, pki: Pki
) -> None:
    session = usdc_session(planner)
    with x402_shop(chain, SHOP, PRICE) as shop:
        [offer] = offers(payment_required(shop.url))

        async def authorise() -> Any:
            settings = x402_signer.settings("agent", "agent-1", pki)
            async with AioAgentClient(settings, retry=QUICK) as aio_agent:
                return await aio_agent.sign_x402(
                    session, offer, key_id=E2E_KEY.label, reference="order-4",
                    from_address=x402_signer.address,
                )  # fmt: skip

        paid = asyncio.run(authorise())
        assert isinstance(paid, X402Signed)
        assert http_get(shop.url, paid.headers)[0] == 200
    assert chain.balances[SHOP.lower()] == 1_250_000

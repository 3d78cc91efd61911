"""Sessions opened from a human-signed mandate, through the in-process server over mutual
TLS, on SQLite and on PostgreSQL.

The chains are made with the ``sd-jwt`` reference implementation (tests/support/mandates.py);
every refusal's AP2 error receipt is checked with joserfc (an independent JOSE library)
against the audit public key the signer publishes, and with paywarden.verify.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import grpc
import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from paywarden.client import CallError, PlannerClient
from paywarden.signer.core.disclosure import AGENT_MESSAGES
from paywarden.v1 import approvals_pb2, control_pb2, sessions_pb2, signer_pb2
from paywarden.verify.mandate_receipts import verify_mandate_receipt
from paywarden.verify.mandates import jwk_thumbprint

from tests.helpers import Pki, Stack, new_nonce, reason_of, trailing_metadata
from tests.support.clients import Api
from tests.support.intents import payment_intent
from tests.support.mandates import (
    ISSUER_KID,
    MandateParties,
    allowed_payees,
    amount_range,
    budget,
    decoded_disclosures,
    hop_hash,
    issue_closed_hop,
    issue_credential,
    issue_user_mandate,
    join_hops,
    mandate_id_of,
    mandate_key,
    merchant,
    open_mandate,
    public_jwk,
    recurrence,
    reference,
    with_jws_header,
    withhold,
)
from tests.support.sdk import settings_for

PARTIES = MandateParties()
SECOND_AGENT_KEY = mandate_key()  # agent-2's registered key
ROGUE = MandateParties()  # keys nobody registered or trusts
ORDER = "order-7"

ISSUER = public_jwk(PARTIES.issuer)
MANDATES = f"""
[[mandates.issuers]]
kid = "{ISSUER_KID}"
jwk = {{ kty = "EC", crv = "P-256", x = "{ISSUER["x"]}", y = "{ISSUER["y"]}" }}

[mandates.agent_keys]
"agent-1" = ["{jwk_thumbprint(public_jwk(PARTIES.agent))}"]
"agent-2" = ["{jwk_thumbprint(public_jwk(SECOND_AGENT_KEY))}"]
"""
PACK = """
id = "mandated"
version = 1
agents = ["agent-1", "agent-2"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "500"
approval_above = "100"

[payees]
allow = ["m1", "m2", "m3"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000" }
"""

pytestmark = [
    pytest.mark.both_backends,
    pytest.mark.stack(packs={"mandated.toml": PACK}, extra=MANDATES),
]

# pytest-grpc's in-process server: enough workers for the 50 concurrent calls.
grpc_max_workers = 64

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
REPLAYED = grpc.StatusCode.ALREADY_EXISTS


def standard_terms(**overrides: Any) -> list[Any]:
    """100.00 USD in all, at most 3 payments of at most 50.00, to m1 or m2, for ORDER."""
    terms = {
        "range": amount_range(5_000),
        "budget": budget(100.00),
        "recurrence": recurrence("ON_DEMAND", 3),
        "payees": allowed_payees(merchant("m1"), merchant("m2")),
        "reference": reference(ORDER),
    }
    terms.update(overrides)
    return [t for t in terms.values() if t is not None]


def chain_of(
    stack: Stack,
    constraints: list[Any] | None = None,
    *,
    parties: MandateParties = PARTIES,
    agent_key: Any = None,
    closed: bool = False,
    nonce: str = "n-agent-1",
    ttl: int | None = 1800,
    kid: str = ISSUER_KID,
    vct: str = "mandate.payment.open.1",
    iat_ahead: int = 0,
) -> tuple[str, str]:
    """A user-credential chain made now on the stack's clock (its mandate issued
    ``iat_ahead`` seconds in the future), and its mandate id."""
    now = int(stack.clock.now())
    agent = agent_key if agent_key is not None else parties.agent
    credential = issue_credential(parties.issuer, parties.user, now=now, kid=kid)
    item = open_mandate(agent, constraints or standard_terms(), now=now, ttl=ttl, vct=vct)
    item["iat"] += iat_ahead
    hop1 = issue_user_mandate(parties.user, credential, item, now=now)
    hops = [credential, hop1]
    if closed:
        hops.append(issue_closed_hop(agent, hop1, now=now, nonce=nonce))
    return join_hops(*hops), mandate_id_of(hop1)


def open_from(api: Api, chain: str, agent: str = "agent-1", ttl: int = 0) -> sessions_pb2.Session:
    request = sessions_pb2.OpenSessionRequest(
        agent_id=agent, task_description="restock the shelves", mandate=chain, ttl_seconds=ttl
    )
    session: sessions_pb2.Session = (
        api.sessions("planner", "planner-1").OpenSession(request, timeout=30).session
    )
    return session


def pay_under_mandate(
    api: Api,
    stack: Stack,
    session_id: str,
    amount: str,
    *,
    payee: str = "m1",
    ref: str = ORDER,
) -> signer_pb2.SignResponse | grpc.RpcError:
    """The agent asks to pay; the answer, or the refusal. The payment expires a minute
    from now on the stack's clock (which a test may have moved)."""
    expires_at = int(stack.clock.now()) + 60
    intent = payment_intent(
        session_id, payee=payee, amount=amount, reference=ref, expires_at=expires_at
    )
    try:
        return api.sign(intent)
    except grpc.RpcError as err:
        return err


def audit_key_pem(api: Api) -> str:
    pem: str = api.control().Checkpoint(control_pb2.CheckpointRequest()).audit_public_key_pem
    return pem


def receipt_of(api: Api, err: grpc.RpcError) -> dict[str, Any]:
    """The refusal's AP2 error receipt, verified by joserfc and by paywarden.verify against
    the audit public key; its claims."""
    token = trailing_metadata(err).get("paywarden-ap2-receipt")
    assert token is not None, f"no AP2 receipt with {reason_of(err)}"
    pem = audit_key_pem(api)
    verified = jws.deserialize_compact(token, ECKey.import_key(pem), algorithms=["ES256"])
    claims: dict[str, Any] = json.loads(verified.payload)
    assert verified.headers()["typ"] == "JWT"
    assert dict(verify_mandate_receipt(token, pem)) == claims
    assert (claims["iss"], claims["result"], claims["reason"]) == (
        "paywarden",
        "error",
        reason_of(err),
    )
    return claims


def refused_open(
    api: Api, chain: str, code: grpc.StatusCode, reason: str, agent: str = "agent-1"
) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as caught:
        open_from(api, chain, agent)
    err = caught.value
    assert (err.code(), reason_of(err)) == (code, reason), err.details()
    return receipt_of(api, err)


# --- opening ---------------------------------------------------------------------------------


def test_a_session_from_a_mandate_takes_its_bounds_and_names_it(api: Api, stack: Stack) -> None:
    chain, mandate_id = chain_of(stack)
    session = open_from(api, chain)
    assert session.mandate_id == mandate_id
    assert [(s.asset, s.budget, s.spent) for s in session.spend] == [("USD", "100.00", "0.00")]
    assert list(session.allowed_payees) == ["m1", "m2"]
    assert session.expires_at <= int(stack.clock.now()) + 1800
    # The agent reads it too; the mandate's id is the hash of the user-signed JWT's
    # signed part (hop 1), never of the disclosures presented.
    seen = api.sessions("agent", "agent-1").GetSession(
        sessions_pb2.GetSessionRequest(session_id=session.session_id)
    )
    assert seen.session.mandate_id == mandate_id


def test_the_pack_cuts_the_session_down_never_the_other_way(api: Api, stack: Stack) -> None:
    big = standard_terms(
        budget=budget(5000.00),
        payees=allowed_payees(merchant("m1"), merchant("evil")),
    )
    chain, _ = chain_of(stack, big)
    session = open_from(api, chain, ttl=600)
    assert [(s.asset, s.budget) for s in session.spend] == [("USD", "1000.00")]
    assert list(session.allowed_payees) == ["m1"]  # the pack refuses "evil"
    assert session.expires_at <= int(stack.clock.now()) + 600
    only_evil = standard_terms(payees=allowed_payees(merchant("evil")))
    chain, _ = chain_of(stack, only_evil)
    refused_open(api, chain, DENIED, "MANDATE_PAYEES_OUTSIDE_PACK")


def test_budgets_or_payees_beside_a_mandate_are_refused(api: Api, stack: Stack) -> None:
    chain, _ = chain_of(stack)
    request = sessions_pb2.OpenSessionRequest(
        agent_id="agent-1",
        task_description="restock",
        mandate=chain,
        budgets=[sessions_pb2.AssetBudget(asset="USD", amount="1")],
    )
    with pytest.raises(grpc.RpcError) as caught:
        api.sessions("planner", "planner-1").OpenSession(request)
    assert (caught.value.code(), reason_of(caught.value)) == (INVALID, "BUDGET_INVALID")


# --- the acceptance: one ledger per mandate, whatever the concurrency ------------------------


@pytest.mark.parametrize(("amount", "signed"), [("30.00", 3), ("45.00", 2)])
def test_fifty_concurrent_signs_across_two_sessions_stay_inside_the_mandate(
    api: Api, stack: Stack, amount: str, signed: int
) -> None:
    """Budget 100.00 and max_occurrences 3: 30.00 each stops at three uses (90.00), 45.00
    at the budget (90.00); never a fourth payment, never past 100.00."""
    chain, mandate_id = chain_of(stack)
    first = open_from(api, chain)
    second = open_from(api, chain)
    assert first.mandate_id == second.mandate_id == mandate_id
    sessions = [first.session_id, second.session_id]
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(
            pool.map(lambda i: pay_under_mandate(api, stack, sessions[i % 2], amount), range(50))
        )
    ok = [a for a in answers if isinstance(a, signer_pb2.SignResponse)]
    refused = [a for a in answers if isinstance(a, grpc.RpcError)]
    assert len(ok) == signed
    assert sum(Decimal(amount) for _ in ok) <= Decimal("100.00")
    expected = "MANDATE_USES_EXHAUSTED" if signed == 3 else "MANDATE_BUDGET_EXCEEDED"
    reasons = {reason_of(e) for e in refused}
    # A session's own budget (100.00 each) may say no first to 45.00 past 90.00 in it.
    assert expected in reasons and reasons <= {expected, "BUDGET_EXCEEDED"}
    by_mandate = next(e for e in refused if reason_of(e) == expected)
    claims = receipt_of(api, by_mandate)
    assert (claims["error"], claims["mandate_id"]) == ("invalid_mandate", mandate_id)
    spent = [
        api.sessions("planner", "planner-1")
        .GetSession(sessions_pb2.GetSessionRequest(session_id=s))
        .session.spend[0]
        .spent
        for s in sessions
    ]
    assert sum(Decimal(s) for s in spent) == Decimal(amount) * signed
    ledger = (
        api.sessions("agent", "agent-1")
        .GetSession(sessions_pb2.GetSessionRequest(session_id=sessions[0]))
        .session.mandate
    )
    assert (ledger.asset, ledger.budget, ledger.max_uses, ledger.revoked) == (
        "USD",
        "100.00",
        3,
        False,
    )
    assert (Decimal(ledger.spent), ledger.uses) == (Decimal(amount) * signed, signed)
    # A third session from the same mandate shares the ledger: 10.00 more is a fourth
    # use (refused), or the third and the budget's last 10.00 (then nothing more).
    third = open_from(api, chain).session_id
    last = pay_under_mandate(api, stack, third, "10.00")
    if signed == 2:
        assert isinstance(last, signer_pb2.SignResponse)
        last = pay_under_mandate(api, stack, third, "0.01")
    assert isinstance(last, grpc.RpcError) and reason_of(last) == "MANDATE_USES_EXHAUSTED"


# --- payments held to the mandate ----------------------------------------------------------


def test_each_bound_of_the_mandate_denies_a_payment_outside_it(api: Api, stack: Stack) -> None:
    terms = standard_terms(range=amount_range(5_000, 500), recurrence=recurrence("DAILY", 2))
    chain, mandate_id = chain_of(stack, terms, ttl=3 * 86_400)
    session = open_from(api, chain).session_id
    cases: list[tuple[dict[str, str], str]] = [
        ({"amount": "4.99"}, "MANDATE_AMOUNT_OUT_OF_RANGE"),
        ({"amount": "50.01"}, "MANDATE_AMOUNT_OUT_OF_RANGE"),
        ({"amount": "10.00", "ref": "order-8"}, "MANDATE_REFERENCE_MISMATCH"),
        ({"amount": "10.00", "payee": "m3"}, "PAYEE_NOT_IN_SESSION"),
    ]
    for changes, reason in cases:
        answer = pay_under_mandate(api, stack, session, **changes)
        assert isinstance(answer, grpc.RpcError) and reason_of(answer) == reason, changes
        if reason.startswith("MANDATE_"):
            claims = receipt_of(api, answer)
            assert claims["mandate_id"] == mandate_id
            assert claims["reference"] == _b64e(bytes.fromhex(mandate_id))
            # the agent's fixed sentence, never the recorded detail
            assert claims["error_description"] == AGENT_MESSAGES[reason]
    assert isinstance(pay_under_mandate(api, stack, session, "10.00"), signer_pb2.SignResponse)
    too_soon = pay_under_mandate(api, stack, session, "10.00")
    assert isinstance(too_soon, grpc.RpcError) and reason_of(too_soon) == "MANDATE_TOO_SOON"
    # A day later (the session is over by then: a new one from the same mandate) the
    # second use is allowed, and a third day finds the two uses spent.
    stack.clock.advance(86_400)
    tomorrow = open_from(api, chain).session_id
    assert isinstance(pay_under_mandate(api, stack, tomorrow, "10.00"), signer_pb2.SignResponse)
    stack.clock.advance(86_400)
    last = open_from(api, chain).session_id
    used_up = pay_under_mandate(api, stack, last, "10.00")
    assert isinstance(used_up, grpc.RpcError)
    assert reason_of(used_up) == "MANDATE_USES_EXHAUSTED"


# --- refusals of the chain, each with its receipt -------------------------------------------


def _tampered(chain: str) -> str:
    """The chain with one disclosure of the mandate hop edited (its digest no longer
    matches)."""
    hops = chain.split("~~")
    parts = hops[1].split("~")
    disclosure = json.loads(_b64d(parts[1]))
    disclosure[0] = disclosure[0] + "x"
    parts[1] = _b64e(json.dumps(disclosure).encode())
    hops[1] = "~".join(parts)
    return "~~".join(hops)


def _b64d(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_every_refused_chain_is_answered_with_a_signed_ap2_receipt(api: Api, stack: Stack) -> None:
    good, _ = chain_of(stack)
    cases: list[tuple[str, str, grpc.StatusCode, str, str]] = [
        ("tampered disclosure", _tampered(good), INVALID, "MANDATE_DISCLOSURE_INVALID",
         "invalid_credential"),
        ("forged issuer", chain_of(stack, parties=ROGUE, agent_key=PARTIES.agent)[0],
         DENIED, "MANDATE_SIGNATURE_INVALID", "invalid_credential"),
        ("untrusted issuer",
         chain_of(stack, parties=ROGUE, agent_key=PARTIES.agent, kid="rogue-issuer")[0],
         DENIED, "MANDATE_ISSUER_UNTRUSTED", "invalid_credential"),
        ("rogue agent key", chain_of(stack, agent_key=ROGUE.agent)[0], DENIED,
         "MANDATE_HOLDER_MISMATCH", "invalid_mandate"),
        ("another agent's key", chain_of(stack, agent_key=SECOND_AGENT_KEY)[0], DENIED,
         "MANDATE_HOLDER_MISMATCH", "invalid_mandate"),
        ("no exp", chain_of(stack, ttl=None)[0], DENIED, "MANDATE_NO_EXPIRY", "invalid_mandate"),
        ("unknown constraint",
         chain_of(stack, [*standard_terms(), {"type": "payment.loyalty_points", "max": 1}])[0],
         DENIED, "MANDATE_CONSTRAINT_UNKNOWN", "unresolved_constraint"),
        ("instruments", chain_of(stack, [*standard_terms(), {
            "type": "payment.allowed_payment_instruments", "allowed": [{"id": "c", "type": "card"}]
        }])[0], DENIED, "MANDATE_CONSTRAINT_UNKNOWN", "unresolved_constraint"),
        ("withheld allow-list", _withheld(stack), DENIED, "MANDATE_ALLOWLIST_WITHHELD",
         "unresolved_constraint"),
        ("unbounded", chain_of(stack, standard_terms(budget=None, recurrence=None))[0], DENIED,
         "MANDATE_UNBOUNDED", "unresolved_constraint"),
        ("closed vct", chain_of(stack, vct="mandate.payment.1")[0], DENIED,
         "MANDATE_VCT_MISMATCH", "invalid_mandate"),
        ("self-delegated",
         chain_of(stack, parties=MandateParties(PARTIES.issuer, PARTIES.provider, PARTIES.agent,
                                                PARTIES.agent))[0],
         DENIED, "MANDATE_SELF_DELEGATED", "invalid_mandate"),
        ("held by another agent's key",
         chain_of(stack, parties=MandateParties(PARTIES.issuer, PARTIES.provider,
                                                SECOND_AGENT_KEY, PARTIES.agent))[0],
         DENIED, "MANDATE_SELF_DELEGATED", "invalid_mandate"),
        ("30 KB vct", chain_of(stack, vct="x" * 30_000)[0], DENIED, "MANDATE_VCT_MISMATCH",
         "invalid_mandate"),
        ("issued in the future", chain_of(stack, iat_ahead=3600)[0], PRECONDITION,
         "MANDATE_NOT_YET_VALID", "invalid_mandate"),
        ("alg none", _unsigned(good), DENIED, "MANDATE_SIGNATURE_INVALID", "invalid_credential"),
        ("spliced hop", _spliced(stack, good), DENIED, "MANDATE_LINK_INVALID",
         "invalid_credential"),
        ("disclosure twice", _doubled(good), INVALID, "MANDATE_DISCLOSURE_INVALID",
         "invalid_credential"),
    ]  # fmt: skip
    for what, chain, code, reason, error in cases:
        claims = refused_open(api, chain, code, reason)
        assert claims["error"] == error, what
        assert len(claims["error_description"]) <= 512, what  # it may echo the chain
        assert claims["reference"] == hop_hash(chain.split("~~")[-1]), what


def _unsigned(chain: str) -> str:
    """The chain with its mandate hop's header saying ``alg`` none."""
    credential, hop1 = chain.split("~~")
    forged = with_jws_header(hop1, {"alg": "none", "typ": "kb+sd-jwt+kb"})
    return join_hops(credential + "~", forged)


def _spliced(stack: Stack, chain: str) -> str:
    """The chain's mandate hop after another user credential of the same user and issuer:
    its sd_hash names the first credential, not this one."""
    credential, hop1 = chain.split("~~")
    other = issue_credential(PARTIES.issuer, PARTIES.user, now=int(stack.clock.now()) - 1)
    assert other != credential + "~"
    return join_hops(other, hop1)


def _doubled(chain: str) -> str:
    """The chain with one of its mandate hop's disclosures presented twice."""
    credential, hop1 = chain.split("~~")
    parts = hop1.split("~")
    return join_hops(credential + "~", "~".join([*parts[:-1], parts[1], ""]))


def _withheld(stack: Stack) -> str:
    """A chain whose allow-list entries are all withheld by the presenter."""
    chain, _ = chain_of(stack)
    credential, hop1 = chain.split("~~")
    merchants = withhold(hop1, lambda d: isinstance(d[-1], dict) and "id" in d[-1])
    assert len(decoded_disclosures(merchants)) < len(decoded_disclosures(hop1))
    return join_hops(credential + "~", merchants)


def test_an_expired_mandate_opens_nothing_and_its_sessions_sign_no_more(
    api: Api, stack: Stack
) -> None:
    chain, _ = chain_of(stack, ttl=120)
    session = open_from(api, chain).session_id
    assert isinstance(pay_under_mandate(api, stack, session, "10.00"), signer_pb2.SignResponse)
    stack.clock.advance(121)
    claims = refused_open(api, chain, PRECONDITION, "MANDATE_EXPIRED")
    assert claims["error"] == "invalid_mandate"
    late = pay_under_mandate(api, stack, session, "10.00")
    assert isinstance(late, grpc.RpcError)
    assert reason_of(late) in {"SESSION_EXPIRED", "MANDATE_EXPIRED", "EXPIRY_AFTER_SESSION"}


def test_a_closed_agent_hop_opens_one_session_and_its_replay_is_refused(
    api: Api, stack: Stack
) -> None:
    chain, mandate_id = chain_of(stack, closed=True, nonce=new_nonce())
    assert open_from(api, chain).mandate_id == mandate_id
    claims = refused_open(api, chain, REPLAYED, "MANDATE_HOP_REPLAYED")
    assert (claims["error"], claims["mandate_id"]) == ("invalid_mandate", mandate_id)
    # A fresh closed hop (another nonce) over the same mandate opens a session that shares
    # the ledger.
    hops = chain.split("~~")
    now = int(stack.clock.now())
    fresh = issue_closed_hop(PARTIES.agent, hops[1] + "~", now=now, nonce=new_nonce())
    again = join_hops(hops[0] + "~", hops[1] + "~", fresh)
    assert open_from(api, again).mandate_id == mandate_id


# --- revocation -----------------------------------------------------------------------------


def test_a_revoked_mandate_opens_nothing_and_signs_nothing_more(api: Api, stack: Stack) -> None:
    chain, mandate_id = chain_of(stack)
    session = open_from(api, chain).session_id
    assert isinstance(pay_under_mandate(api, stack, session, "10.00"), signer_pb2.SignResponse)
    control = api.control()
    revoked = control.RevokeMandate(
        control_pb2.RevokeMandateRequest(mandate_id=mandate_id, reason="card reported stolen")
    )
    assert (revoked.created, revoked.revocation.mandate_id) == (True, mandate_id)
    again = control.RevokeMandate(
        control_pb2.RevokeMandateRequest(mandate_id=mandate_id, reason="twice")
    )
    assert (again.created, again.revocation.reason) == (False, "card reported stolen")
    shown = api.sessions("planner", "planner-1").GetSession(
        sessions_pb2.GetSessionRequest(session_id=session)
    )
    assert shown.session.mandate.revoked and shown.session.mandate.uses == 1
    denied = pay_under_mandate(api, stack, session, "10.00")
    assert isinstance(denied, grpc.RpcError) and reason_of(denied) == "MANDATE_REVOKED"
    assert receipt_of(api, denied)["mandate_id"] == mandate_id
    claims = refused_open(api, chain, PRECONDITION, "MANDATE_REVOKED")
    assert claims["mandate_id"] == mandate_id


def test_a_mandate_revoked_before_any_session_opens_none(api: Api, stack: Stack) -> None:
    chain, mandate_id = chain_of(stack, standard_terms(budget=budget(99)))
    answer = api.control().RevokeMandate(
        control_pb2.RevokeMandateRequest(mandate_id=mandate_id, reason="reported before use")
    )
    assert (answer.created, answer.mandates_revoked) == (True, 0)
    claims = refused_open(api, chain, PRECONDITION, "MANDATE_REVOKED")
    assert claims["mandate_id"] == mandate_id


def _held(
    api: Api, stack: Stack, session: str, amount: str
) -> tuple[signer_pb2.PaymentIntent, str]:
    """A payment above the pack's approval threshold, held for an approver; and the
    approval's id."""
    expires_at = int(stack.clock.now()) + 120
    intent = payment_intent(
        session,
        payee="m1",
        amount=amount,
        reference=ORDER,
        expires_at=expires_at,
        nonce=new_nonce(),
    )
    held = api.sign(intent)
    assert held.status == signer_pb2.PENDING_APPROVAL
    return intent, held.approval_id


def test_held_payments_of_a_revoked_mandate_are_never_approved_nor_signed(
    api: Api, stack: Stack
) -> None:
    terms = standard_terms(range=amount_range(50_000), budget=budget(1000))
    chain, mandate_id = chain_of(stack, terms)
    session = open_from(api, chain).session_id
    approved_first, first = _held(api, stack, session, "150.00")
    waiting, pending = _held(api, stack, session, "160.00")
    approvals = api.approver("approver-1")
    approvals.Approve(approvals_pb2.ApproveRequest(approval_id=first))
    api.control().RevokeMandate(
        control_pb2.RevokeMandateRequest(mandate_id=mandate_id, reason="user withdrew consent")
    )
    with pytest.raises(grpc.RpcError) as vote:
        approvals.Approve(approvals_pb2.ApproveRequest(approval_id=pending))
    assert (vote.value.code(), reason_of(vote.value)) == (PRECONDITION, "MANDATE_REVOKED")
    for intent in (approved_first, waiting):  # the agent's retries, which would sign
        with pytest.raises(grpc.RpcError) as caught:
            api.sign(intent)
        assert reason_of(caught.value) == "MANDATE_REVOKED"
        claims = receipt_of(api, caught.value)
        assert claims["mandate_id"] == mandate_id
        assert claims["reference"] == _b64e(bytes.fromhex(mandate_id))


def test_a_hold_in_one_session_counts_for_the_other_until_it_is_released(
    api: Api, stack: Stack
) -> None:
    terms = standard_terms(range=amount_range(20_000), budget=budget(200))
    chain, _ = chain_of(stack, terms)
    first = open_from(api, chain).session_id
    second = open_from(api, chain).session_id
    _held(api, stack, first, "150.00")
    blocked = pay_under_mandate(api, stack, second, "60.00")
    assert isinstance(blocked, grpc.RpcError)
    assert reason_of(blocked) == "MANDATE_BUDGET_EXCEEDED"
    api.sessions("planner", "planner-1").CloseSession(
        sessions_pb2.CloseSessionRequest(session_id=first)
    )  # withdraws the held payment: its hold is released
    assert isinstance(pay_under_mandate(api, stack, second, "60.00"), signer_pb2.SignResponse)


def test_revoking_an_agent_key_stops_its_mandates_now_and_later(api: Api, stack: Stack) -> None:
    chain, _ = chain_of(stack, agent_key=SECOND_AGENT_KEY)
    session = open_from(api, chain, agent="agent-2").session_id
    thumbprint = jwk_thumbprint(public_jwk(SECOND_AGENT_KEY))
    answer = api.control().RevokeMandate(
        control_pb2.RevokeMandateRequest(agent_key_thumbprint=thumbprint, reason="key leaked")
    )
    assert answer.created and answer.mandates_revoked >= 1
    expires_at = int(stack.clock.now()) + 60
    intent = payment_intent(
        session, payee="m1", amount="10.00", reference=ORDER, expires_at=expires_at
    )
    with pytest.raises(grpc.RpcError) as caught:
        api.sign(intent, agent="agent-2")
    assert reason_of(caught.value) == "MANDATE_REVOKED"
    newer, _ = chain_of(stack, standard_terms(budget=budget(7)), agent_key=SECOND_AGENT_KEY)
    refused_open(api, newer, PRECONDITION, "MANDATE_REVOKED", agent="agent-2")


def test_revoke_mandate_refuses_bad_arguments_and_other_roles(api: Api) -> None:
    control = api.control()
    bad = [
        (control_pb2.RevokeMandateRequest(reason="x"), INVALID, "MALFORMED_REQUEST"),
        (
            control_pb2.RevokeMandateRequest(mandate_id="ab" * 32, agent_key_thumbprint="x" * 43,
                                             reason="x"),
            INVALID,
            "MALFORMED_REQUEST",
        ),
        (control_pb2.RevokeMandateRequest(mandate_id="AB" * 32, reason="x"), INVALID,
         "STRING_INVALID"),
    ]  # fmt: skip
    for request, code, reason in bad:
        with pytest.raises(grpc.RpcError) as caught:
            control.RevokeMandate(request)
        assert (caught.value.code(), reason_of(caught.value)) == (code, reason)
    with pytest.raises(grpc.RpcError) as caught:
        api.control("planner", "planner-1").RevokeMandate(
            control_pb2.RevokeMandateRequest(mandate_id="ab" * 32, reason="x")
        )
    assert caught.value.code() == DENIED


def test_the_mandate_id_is_the_user_signed_jwt_not_the_chain(stack: Stack) -> None:
    chain, mandate_id = chain_of(stack)
    hop1 = chain.split("~~")[1]
    signed_part = hop1.split("~")[0].rsplit(".", 1)[0]
    assert mandate_id == hashlib.sha256(signed_part.encode()).hexdigest()


def test_the_sdk_opens_a_session_from_a_mandate_and_hands_over_a_refusal_s_receipt(
    api: Api, stack: Stack, grpc_server: grpc.Server, grpc_addr: str, pki: Pki
) -> None:
    chain, mandate_id = chain_of(stack)
    with PlannerClient(settings_for(pki, grpc_addr, "planner", "planner-1")) as planner:
        session = planner.open_session("agent-1", task="restock", mandate=chain)
        assert session.mandate_id == mandate_id
        assert [(s.asset, s.budget) for s in session.spend] == [("USD", "100.00")]
        with pytest.raises(CallError) as caught:
            planner.open_session("agent-1", task="restock", mandate=chain_of(stack, ttl=None)[0])
    error = caught.value
    assert (error.code, error.reason) == (DENIED, "MANDATE_NO_EXPIRY")
    assert error.ap2_receipt is not None
    claims = verify_mandate_receipt(error.ap2_receipt, audit_key_pem(api))
    assert (claims["error"], claims["reason"]) == ("invalid_mandate", "MANDATE_NO_EXPIRY")

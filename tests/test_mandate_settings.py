"""What ``[mandates]`` and the configured assets decide about a mandate, on stacks of their
own: a signer that requires the agent's closed hop, an asset whose decimals are not its
ISO 4217 minor unit, an execution window already closed, and the refusal budget that
bounds how many receipts one caller makes the audit key sign (checked on the receipts
themselves, with the stack's HSM)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from paywarden.policy.engine import RuleResult
from paywarden.policy.vocabulary import Outcome, Reason
from paywarden.signer.core import deciding
from paywarden.signer.core.mandate_receipts import MandateReceipts
from paywarden.signer.core.payments import IntentFields
from paywarden.signer.errors import Internal, PaywardenError
from paywarden.signer.identity import Principal, Role
from paywarden.verify.mandate_receipts import verify_mandate_receipt
from paywarden.verify.mandates import MandateCode, jwk_thumbprint

from tests.helpers import Stack, new_nonce
from tests.support.intents import intent_fields
from tests.support.mandates import (
    ISSUER_KID,
    MandateParties,
    amount_range,
    budget,
    execution_date,
    issue_closed_hop,
    issue_credential,
    issue_user_mandate,
    join_hops,
    open_mandate,
    public_jwk,
    recurrence,
)

SIGNERS = MandateParties()
_ISSUER = public_jwk(SIGNERS.issuer)
PLANNER = Principal(Role.PLANNER, "planner-1")
OPEN_PACK = """
id = "settings"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "500"

[assets.EUR]
keys = ["payments.v1"]
max_per_payment = "500"

[payees]
allow_patterns = [".+"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000", EUR = "1000" }
"""


def mandates_toml(*, require_agent_hop: bool = False, eur_decimals: int = 2) -> str:
    return f"""
[assets.EUR]
decimals = {eur_decimals}

[mandates]
require_agent_hop = {"true" if require_agent_hop else "false"}

[[mandates.issuers]]
kid = "{ISSUER_KID}"
jwk = {{ kty = "EC", crv = "P-256", x = "{_ISSUER["x"]}", y = "{_ISSUER["y"]}" }}

[mandates.agent_keys]
"agent-1" = ["{jwk_thumbprint(public_jwk(SIGNERS.agent))}"]
"""


def settings_chain(stack: Stack, constraints: list[Any], *, closed: bool = False) -> str:
    now = int(stack.clock.now())
    credential = issue_credential(SIGNERS.issuer, SIGNERS.user, now=now)
    hop1 = issue_user_mandate(
        SIGNERS.user, credential, open_mandate(SIGNERS.agent, constraints, now=now)
    )
    if not closed:
        return join_hops(credential, hop1)
    return join_hops(
        credential, hop1, issue_closed_hop(SIGNERS.agent, hop1, now=now, nonce=new_nonce())
    )


def open_refused(stack: Stack, chain: str) -> PaywardenError:
    with pytest.raises(PaywardenError) as caught:
        stack.service.open_session(PLANNER, "agent-1", "restock", [], 0, [], mandate=chain)
    return caught.value


def bounded(currency: str = "USD") -> list[Any]:
    return [amount_range(5_000, currency=currency), budget(100, currency=currency)]


def test_a_signer_that_requires_the_agents_closed_hop_refuses_a_chain_without_it(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(packs={"s.toml": OPEN_PACK}, extra=mandates_toml(require_agent_hop=True))
    error = open_refused(stack, settings_chain(stack, bounded()))
    assert error.reason == "MANDATE_AGENT_HOP_MISSING"
    assert error.receipt is not None
    pem = stack.hsm.audit_public_key().spki_pem
    assert verify_mandate_receipt(error.receipt, pem)["error"] == "invalid_mandate"
    with_hop = settings_chain(stack, bounded(), closed=True)
    view = stack.service.open_session(PLANNER, "agent-1", "restock", [], 0, [], mandate=with_hop)
    assert view.record.mandate_id is not None


def test_an_asset_whose_decimals_are_not_its_iso_minor_unit_takes_no_mandate(
    make_stack: Callable[..., Stack],
) -> None:
    """AP2 amounts are in ISO 4217 minor units: EUR configured with 3 decimals would read
    every cent bound as a tenth of a cent. Refused; USD (2, as ISO says) is taken."""
    stack = make_stack(packs={"s.toml": OPEN_PACK}, extra=mandates_toml(eur_decimals=3))
    error = open_refused(stack, settings_chain(stack, bounded("EUR")))
    assert error.reason == "MANDATE_CONSTRAINT_INVALID"
    view = stack.service.open_session(
        PLANNER, "agent-1", "restock", [], 0, [], mandate=settings_chain(stack, bounded())
    )
    assert view.record.budgets_minor == {"USD": 10_000}


def test_a_mandate_whose_execution_window_has_closed_opens_nothing(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(packs={"s.toml": OPEN_PACK}, extra=mandates_toml())
    past = [*bounded(), execution_date(not_after="2001-01-01T00:00:00Z")]
    error = open_refused(stack, settings_chain(stack, past))
    assert error.reason == "MANDATE_EXPIRED"
    assert error.receipt is not None


def test_a_caller_past_its_refusal_budget_gets_no_more_receipts(
    make_stack: Callable[..., Stack],
) -> None:
    """Each receipt is an audit-key signature under the HSM's one lock: a planner that
    sends refused mandates in a loop gets its refusals, not a signature each."""
    stack = make_stack(packs={"s.toml": OPEN_PACK}, extra=mandates_toml())
    deps = stack.service.deps
    tight = deps.limits.model_copy(update={"refusal_burst": 3, "refusal_rate_per_second": 0.001})
    receipts = MandateReceipts(replace(deps, limits=tight), "paywarden")

    def ask(asker: str) -> str | None:
        return receipts.refusal(
            MandateCode.UNRESOLVED_CONSTRAINT,
            Reason.MANDATE_UNBOUNDED,
            "the mandate bounds no total",
            reference="abc",
            mandate_id=None,
            asker=asker,
        )

    assert [ask("planner/planner-1") is not None for _ in range(5)] == [True] * 3 + [False] * 2
    assert ask("planner/planner-2") is not None  # a budget per caller


def test_a_total_beyond_what_the_signer_records_is_refused_not_an_internal_error(
    make_stack: Callable[..., Stack],
) -> None:
    """No budget, so the total is the per-payment max times the uses: 10^18 x 10 minor
    units is past what the store keeps (10^18); refused with a receipt."""
    stack = make_stack(packs={"s.toml": OPEN_PACK}, extra=mandates_toml())
    huge = [amount_range(10**18), recurrence("ON_DEMAND", 10)]
    error = open_refused(stack, settings_chain(stack, huge))
    assert error.reason == "MANDATE_CONSTRAINT_INVALID"
    assert error.receipt is not None


def test_the_backstop_undoes_a_decision_the_mandate_rule_let_past_its_uses(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault only a bug could make: the mandate rule (replaced here by one that allows
    everything) lets a second payment of a one-use mandate through. The backstop, in the
    same transaction, refuses it as an internal error: nothing is recorded or signed."""
    stack = make_stack(packs={"s.toml": OPEN_PACK}, extra=mandates_toml())
    one_use = [amount_range(5_000), budget(100), recurrence("ON_DEMAND", 1)]
    view = stack.service.open_session(
        PLANNER, "agent-1", "restock", [], 0, [], mandate=settings_chain(stack, one_use)
    )
    agent = Principal(Role.AGENT, "agent-1")

    def payment() -> IntentFields:
        return intent_fields(
            view.record.id, payee="m1", amount="10.00", expires_at=int(stack.clock.now()) + 60
        )

    assert stack.service.sign(agent, payment()).jws
    allow = RuleResult("mandate", Outcome.ALLOW, Reason.WITHIN_MANDATE)
    monkeypatch.setattr(deciding, "mandate_result", lambda *args: allow)
    with pytest.raises(Internal):
        stack.service.sign(agent, payment())
    session = stack.store.get_session(view.record.id, int(stack.clock.now()))
    assert session is not None and session.spent_minor == {"USD": 1_000}
    found = stack.store.mandate(view.record.mandate_id or "", int(stack.clock.now()))
    assert found is not None and found[1].uses == 1

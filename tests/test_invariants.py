"""A store whose contents break a rule every write keeps (here: a held payment
whose approval row was deleted behind the signer's back) is a bug or tampering,
not unavailability: the call is answered INTERNAL, nothing is signed, and the
service keeps serving other payments. Real token, real store: SQLite and PostgreSQL,
tampered with and read through a store of the test's own on the same database."""

from __future__ import annotations

from typing import Any

import pytest
from paywarden.signer.core.views import SignStatus
from paywarden.signer.errors import Internal, Reason
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.opening import open_store
from paywarden.signer.store.sqlite_tx import SqlitePaymentTx

from tests.helpers import Stack
from tests.support.intents import intent_fields

PACKS = {
    "held.toml": """
id = "invariants"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "1000.00"
approval_above = "100.00"

[payees]
allow = ["acme-data"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "1000.00" }
"""
}
pytestmark = [pytest.mark.stack(packs=PACKS), pytest.mark.both_backends]

AGENT = Principal(Role.AGENT, "agent-1")
PLANNER = Principal(Role.PLANNER, "planner-1")


def _behind_the_signers_back(stack: Stack, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """``sql`` run in a write transaction of a store of its own on the stack's database
    (as someone with access to the database would); its rows."""
    store = open_store(stack.config.store)
    try:
        with store._write() as conn:
            rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
            return rows
    finally:
        store.close()


def test_a_held_payment_whose_approval_vanished_is_internal_not_unavailable(
    stack: Stack,
) -> None:
    service = stack.service
    session = service.open_session(
        PLANNER, "agent-1", "invariants", [("USD", "1000.00")], 600, []
    ).record
    expires = int(stack.clock.now()) + 120
    held = intent_fields(session.id, payee="acme-data", amount="150.00", expires_at=expires)
    first = service.sign(AGENT, held)
    assert first.status is SignStatus.PENDING_APPROVAL
    deleted = _behind_the_signers_back(
        stack, "DELETE FROM approvals WHERE id = ? RETURNING id", first.approval_id
    )
    assert deleted == [(first.approval_id,)]
    with pytest.raises(Internal) as info:
        service.sign(AGENT, held)  # the same request again: its approval is gone
    assert info.value.reason == Reason.INTERNAL
    rows = _behind_the_signers_back(
        stack, "SELECT jws FROM decisions WHERE id = ?", first.decision_id
    )
    assert rows == [(None,)]  # nothing signed
    after = service.sign(
        AGENT, intent_fields(session.id, payee="acme-data", amount="50.00", expires_at=expires)
    )
    assert after.status is SignStatus.SIGNED  # and the service keeps serving


def test_a_spend_the_budget_backstop_refuses_is_internal_and_leaves_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy checks the budget on the facts of the same transaction, so only a bug
    reaches the backstop: made here by a store that reports more spend to the backstop
    than it gave the policy."""
    service = stack.service
    session = service.open_session(
        PLANNER, "agent-1", "invariants", [("USD", "1000.00")], 600, []
    ).record
    expires = int(stack.clock.now()) + 120
    monkeypatch.setattr(SqlitePaymentTx, "live_spend", lambda *_: 10**9)
    with pytest.raises(Internal) as info:
        service.sign(
            AGENT, intent_fields(session.id, payee="acme-data", amount="50.00", expires_at=expires)
        )
    assert info.value.reason == Reason.INTERNAL
    for table in ("decisions", "reservations"):
        count = _behind_the_signers_back(
            stack, f"SELECT COUNT(*) FROM {table} WHERE session_id = ?", session.id
        )
        assert count == [(0,)], table
    monkeypatch.undo()
    after = service.sign(
        AGENT, intent_fields(session.id, payee="acme-data", amount="50.00", expires_at=expires)
    )
    assert after.status is SignStatus.SIGNED  # the same request, once the bug is gone

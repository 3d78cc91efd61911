"""Attack: agent B learns which nonces agent A used.

Nonces were unique across all agents, so agent B, signing in its own session
with a nonce it saw (or guessed) from agent A, got NONCE_REPLAYED where a
fresh nonce would have been signed: an oracle on other agents' activity.
Nonces are now unique per agent: B's use of A's nonce is a fresh nonce for B.
A nonce is still signed at most once per agent, and the signed claims carry
the agent ("sub") and a unique "jti", so no two signatures share (sub, nonce).
Real token, real store, real gRPC server over mTLS; JWS checked with joserfc.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from paywarden.v1 import signer_pb2

from tests.helpers import Stack, new_nonce
from tests.support.clients import Api, jws_payload
from tests.support.intents import payment_intent
from tests.support.refusals import outcome
from tests.support.sessions import open_session


def _request(stack: Stack, sid: str, nonce: str, amount: str = "1.00") -> signer_pb2.SignRequest:
    return signer_pb2.SignRequest(
        intent=payment_intent(
            sid,
            payee="acme-data",
            amount=amount,
            purpose="supplies",
            nonce=nonce,
            expires_at=int(stack.clock.now()) + 120,
        )
    )


def _claims(api: Api, token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(jws_payload(api.signer2, token))
    return claims


def test_other_agents_signed_nonce_looks_fresh(api: Api, stack: Stack) -> None:
    nonce = new_nonce()
    a = api.signer.Sign(_request(stack, open_session(api.planner, "agent-1", "100.00"), nonce))
    assert a.status == signer_pb2.SIGNED
    sid_b = open_session(api.planner, "agent-2", "100.00")
    # agent-2's answer for agent-1's nonce is the answer for a nonce nobody used
    assert outcome(api.signer2.Sign, _request(stack, sid_b, new_nonce())) == "SIGNED"
    b = api.signer2.Sign(_request(stack, sid_b, nonce))
    assert b.status == signer_pb2.SIGNED and not b.replayed_result
    ca, cb = _claims(api, a.jws), _claims(api, b.jws)
    assert (ca["sub"], ca["nonce"]) == ("agent-1", nonce)
    assert (cb["sub"], cb["nonce"]) == ("agent-2", nonce)
    assert ca["jti"] != cb["jti"]


def test_other_agents_denied_nonce_looks_fresh(api: Api, stack: Stack) -> None:
    nonce = new_nonce()
    over = _request(stack, open_session(api.planner, "agent-1", "1.00"), nonce, amount="5.00")
    assert outcome(api.signer.Sign, over) == "PERMISSION_DENIED/BUDGET_EXCEEDED"
    sid_b = open_session(api.planner, "agent-2", "100.00")
    assert outcome(api.signer2.Sign, _request(stack, sid_b, nonce)) == "SIGNED"


def test_own_nonce_is_still_signed_at_most_once(api: Api, stack: Stack) -> None:
    nonce = new_nonce()
    sid, other = (
        open_session(api.planner, "agent-1", "100.00"),
        open_session(api.planner, "agent-1", "100.00"),
    )
    stub = api.signer
    first = stub.Sign(_request(stack, sid, nonce))
    again = stub.Sign(_request(stack, sid, nonce))
    assert again.replayed_result and again.jws == first.jws
    assert (
        outcome(api.signer.Sign, _request(stack, sid, nonce, amount="2.00"))
        == "ALREADY_EXISTS/NONCE_REPLAYED"
    )
    assert (
        outcome(api.signer.Sign, _request(stack, other, nonce)) == "ALREADY_EXISTS/NONCE_REPLAYED"
    )
    # in the store, no two signatures ever share (agent, nonce)
    db = sqlite3.connect(stack.config.store.path)
    try:
        dupes = db.execute(
            "SELECT agent_id, nonce, COUNT(*) FROM decisions WHERE jws IS NOT NULL"
            " GROUP BY agent_id, nonce HAVING COUNT(*) > 1"
        ).fetchall()
    finally:
        db.close()
    assert dupes == []


def test_nonces_from_before_the_upgrade_stay_used(tmp_path: Path) -> None:
    from paywarden.signer.store.schema import MIGRATIONS, statements
    from paywarden.signer.store.sqlite import SqliteStore

    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for version in (1, 2, 3):
        for statement in statements(MIGRATIONS[version]):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.execute(
        "INSERT INTO decisions (id, created_at, agent_id, session_id, nonce, request_hash,"
        " outcome, reason, message, key_id, asset, amount_minor, trace, purpose) VALUES"
        " ('dec_1', 1, 'agent-1', 'ses_x', 'n1', 'h', 'deny', 'R', '', 'k', 'USD', '1', '[]', '')"
    )
    conn.execute("INSERT INTO nonces VALUES ('n1', 'dec_1')")
    conn.close()
    store = SqliteStore(path)
    try:
        store.migrate()
        with store.payment_tx() as tx:
            previous = tx.decision_for_nonce("agent-1", "n1")
            assert previous is not None and previous.id == "dec_1"
            assert tx.decision_for_nonce("agent-2", "n1") is None
    finally:
        store.close()

"""Attack: a session opened under an older version of its pack keeps the old limits.

A pack is replaced by a stricter version with the same id (here: the largest
session budget falls from 1000.00 to 100.00) and the signer restarts. Sessions
opened under the old version still spent their old budgets, because only the
pack id was compared. Each session now keeps the version and SHA-256 of its
pack; when the live pack with that id differs, the session is checked against
the live pack's session limits and a session that no longer fits is denied
(SESSION_PACK_CHANGED). Real ``paywarden serve``, real store across a restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from paywarden.v1 import sessions_pb2_grpc, signer_pb2, signer_pb2_grpc

from tests.attacks.kit import audit_log
from tests.helpers import Pki, ServeProcess, TestToken, reason_of, serve, write_config
from tests.support.intents import payment_intent
from tests.support.sessions import open_session

PACK = """
id = "shopping"
version = {version}
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "100.00"

[payees]
allow_patterns = [".+"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = {{ USD = "{max_budget}" }}
"""


def _session(srv: ServeProcess, pki: Pki, budget: str) -> str:
    with pki.channel(srv.addr, "planner", "planner-1") as ch:
        planner = sessions_pb2_grpc.SessionsStub(ch)
        return open_session(planner, "agent-1", budget, task="shopping", ttl=1800, timeout=30)


def _sign(srv: ServeProcess, pki: Pki, sid: str, amount: str) -> str:
    intent = payment_intent(
        sid,
        payee="acme-data",
        amount=amount,
        purpose="shopping",
        expires_at=int(time.time()) + 120,
    )
    with pki.channel(srv.addr, "agent", "agent-1") as ch:
        try:
            resp = signer_pb2_grpc.SignerStub(ch).Sign(
                signer_pb2.SignRequest(intent=intent), timeout=30
            )
        except grpc.RpcError as err:
            return str(reason_of(err))
    return str(signer_pb2.SignStatus.Name(resp.status))


def test_session_opened_under_a_looser_pack_version_cannot_spend_beyond_the_new_one(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(
        tmp_path, token, pki, packs={"shopping.toml": PACK.format(version=1, max_budget="1000.00")}
    )
    with serve(config) as srv:
        big = _session(srv, pki, "1000.00")  # fits v1 only
        small = _session(srv, pki, "80.00")  # fits v1 and v2
        assert _sign(srv, pki, big, "90.00") == "SIGNED"
    # the security team tightens the pack: same id, a new version
    (tmp_path / "policy" / "shopping.toml").write_text(
        PACK.format(version=2, max_budget="100.00"), encoding="utf-8"
    )
    with serve(config) as srv:
        # the big session would still have 910.00 to spend under v1's limits
        assert _sign(srv, pki, big, "10.00") == "SESSION_PACK_CHANGED"
        assert _sign(srv, pki, big, "50.00") == "SESSION_PACK_CHANGED"
        # a session that fits the new version goes on as before
        assert _sign(srv, pki, small, "30.00") == "SIGNED"
        # and new sessions are held to the new version
        assert _sign(srv, pki, _session(srv, pki, "100.00"), "60.00") == "SIGNED"
    denied = [
        r["decision"]
        for r in audit_log(tmp_path / "state.db")
        if r["action"] == "sign.decision" and r["decision"]["reason"] == "SESSION_PACK_CHANGED"
    ]
    # the audit log says why, and which version decided
    assert len(denied) == 2
    assert all(d["pack"]["version"] == 2 for d in denied)
    assert "does not fit version 2" in denied[0]["message"]

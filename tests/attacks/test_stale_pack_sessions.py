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

from functools import partial
from pathlib import Path

from tests.attacks.kit import audit_log
from tests.helpers import Pki, TestToken, write_config
from tests.support.clients import running_api
from tests.support.intents import payment_request
from tests.support.refusals import outcome
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
# The sessions and payments of this module, and how an answer is read ("SIGNED", or
# "CODE/REASON").
shopping_session = partial(open_session, task="shopping", ttl=1800, timeout=30)
shopping_request = partial(payment_request, payee="acme-data", purpose="shopping", expires_in=120)
shopping_answer = partial(outcome, timeout=30)


def test_session_opened_under_a_looser_pack_version_cannot_spend_beyond_the_new_one(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(
        tmp_path, token, pki, packs={"shopping.toml": PACK.format(version=1, max_budget="1000.00")}
    )
    with running_api(config, pki) as (_, api):
        big = shopping_session(api.planner, "agent-1", "1000.00")  # fits v1 only
        small = shopping_session(api.planner, "agent-1", "80.00")  # fits v1 and v2
        assert shopping_answer(api.signer.Sign, shopping_request(big, amount="90.00")) == "SIGNED"
    # the security team tightens the pack: same id, a new version
    (tmp_path / "policy" / "shopping.toml").write_text(
        PACK.format(version=2, max_budget="100.00"), encoding="utf-8"
    )
    with running_api(config, pki) as (_, api):
        # the big session would still have 910.00 to spend under v1's limits
        assert (
            shopping_answer(api.signer.Sign, shopping_request(big, amount="10.00"))
            == "PERMISSION_DENIED/SESSION_PACK_CHANGED"
        )
        assert (
            shopping_answer(api.signer.Sign, shopping_request(big, amount="50.00"))
            == "PERMISSION_DENIED/SESSION_PACK_CHANGED"
        )
        # a session that fits the new version goes on as before
        assert shopping_answer(api.signer.Sign, shopping_request(small, amount="30.00")) == "SIGNED"
        # and new sessions are held to the new version
        fresh = shopping_session(api.planner, "agent-1", "100.00")
        assert shopping_answer(api.signer.Sign, shopping_request(fresh, amount="60.00")) == "SIGNED"
    denied = [
        r["decision"]
        for r in audit_log(tmp_path / "state.db")
        if r["action"] == "sign.decision" and r["decision"]["reason"] == "SESSION_PACK_CHANGED"
    ]
    # the audit log says why, and which version decided
    assert len(denied) == 2
    assert all(d["pack"]["version"] == 2 for d in denied)
    assert "does not fit version 2" in denied[0]["message"]

"""``paywarden explain agent`` (issue 12, point 5): what an agent can do right now.

The store's overview of one agent is read with the deciding path's own fact reads and
searches indexes only (no scan of the history). Against the real ``paywarden serve``:
a fixture agent with a pack, signed payments, a held one and open sessions is explained
by ``Control.ExplainAgent`` and by ``paywarden explain agent``, and every field is
checked against the pack's text and against the spend the store recorded (its rows,
recomputed here by the rule of what counts, not by the signer's aggregates).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from paywarden.policy.vocabulary import (
    ApprovalStatus,
    FreezeScope,
    FreezeSource,
    ReservationStatus,
    Verdict,
)
from paywarden.signer.errors import Forbidden, Reason
from paywarden.signer.identity import Principal, Role
from paywarden.signer.store.records import (
    ApprovalRecord,
    DecisionRecord,
    Freeze,
    Reservation,
    SessionRecord,
)
from paywarden.signer.store.sqlite import SqliteStore, SqlStore
from paywarden.v1 import control_pb2, sessions_pb2, signer_pb2

from tests.helpers import Pki, ServeProcess, Stack, TestToken, reason_of, write_config
from tests.support.backends import Stores
from tests.support.cli import ctl, paywarden
from tests.support.clients import Api, running_api, signed
from tests.support.intents import intent_fields, payment_request
from tests.support.sessions import open_session

# The store's overview and the in-process stacks run on SQLite and on PostgreSQL; the
# query plans and the tests against paywarden serve on SQLite.
pytestmark = pytest.mark.both_backends

DAY = 86_400
T0 = 1_750_000_000 - 1_750_000_000 % DAY + 12 * 3_600  # noon UTC
RECORD = {"action": "test", "time": 1, "actor": {"role": "system", "id": "test"}}


def _session_at(store: SqlStore, sid: str, agent: str, expires_at: int) -> None:
    store.create_session(
        SessionRecord(
            id=sid, agent_id=agent, planner_id="planner-1", task_digest="0" * 64,
            created_at=T0 - 2 * DAY, expires_at=expires_at, closed_at=None,
            budgets_minor={"USD": 100_000}, spent_minor={},
        ),
        {"USD": 2},
        RECORD,
    )  # fmt: skip


def _payment(
    store: SqlStore, n: int, agent: str, sid: str, amount: int, at: int, *, held: bool = False
) -> None:
    with store.payment_tx() as tx:
        decision = DecisionRecord(
            id=f"dec_{n}", created_at=at, agent_id=agent, session_id=sid, nonce=f"n{n}",
            request_hash="h", outcome=Verdict.NEEDS_APPROVAL if held else Verdict.ALLOW, reason="X",
            message="", key_id="payments.v1", asset="USD", amount_minor=amount,
            jws=None if held else "j", expires_at=at + 300,
        )  # fmt: skip
        reservation = Reservation(
            f"dec_{n}", agent, sid, "USD", f"payee-{n}", amount, at, at + 300,
            ReservationStatus.HELD if held else ReservationStatus.SPENT,
        )  # fmt: skip
        approval = None
        if held:
            approval = ApprovalRecord(
                f"apr_{n}", f"dec_{n}", 1, ApprovalStatus.PENDING, at, at + 300
            )
        tx.record_decision(decision, consume_nonce=True, reservation=reservation, approval=approval)


def _a_store(store: SqlStore) -> SqlStore:
    """``store`` migrated, with two agents' sessions, payments and freezes."""
    store.migrate()
    _session_at(store, "ses_open", "agent-1", T0 + 3_600)
    _session_at(store, "ses_later", "agent-1", T0 + 7_200)
    _session_at(store, "ses_expired", "agent-1", T0 - 60)
    _session_at(store, "ses_closed", "agent-1", T0 + 3_600)
    _session_at(store, "ses_other", "agent-2", T0 + 3_600)
    _payment(store, 1, "agent-1", "ses_open", 1_000, T0 - DAY - 60)  # yesterday: neither window
    _payment(store, 2, "agent-1", "ses_open", 2_000, T0 - 13 * 3_600)  # yesterday, last 24 h
    _payment(store, 3, "agent-1", "ses_open", 300, T0 - 3_600)  # today
    _payment(store, 4, "agent-1", "ses_later", 40, T0 - 30, held=True)  # today, pending
    _payment(store, 5, "agent-2", "ses_other", 7_000, T0 - 60)  # another agent's
    with store.session_tx() as tx:
        assert tx.mark_closed("ses_closed", T0 - 100)
    for scope, target in (
        (FreezeScope.SESSION, "ses_later"),
        (FreezeScope.KEY, "payments.v1"),
        (FreezeScope.KEY, "other.v1"),
        (FreezeScope.AGENT, "agent-2"),
    ):
        store.set_freeze(
            Freeze(scope, target, "why", "operator/o", FreezeSource.OPERATOR, T0), RECORD
        )
    return store


def test_the_overview_is_the_agents_own_usage_sessions_approvals_and_freezes(
    tmp_path: Path, stores: Stores
) -> None:
    store = _a_store(stores.open(tmp_path / "s.db"))
    overview = store.agent_overview(
        "agent-1", assets=["USD"], keys=["payments.v1"], now=T0,
        day_start=T0 - 12 * 3_600, velocity_seconds=2 * 3_600, breaker_seconds=DAY,
        max_sessions=10,
    )  # fmt: skip
    usage = overview.usage["USD"]
    assert usage.spent_today_minor == 300 + 40
    assert usage.spent_24h_minor == 2_000 + 300 + 40
    assert usage.payments_in_window == 2  # the signed one an hour ago and the held one
    assert usage.payees_today == 2
    assert [s.id for s in overview.sessions] == ["ses_open", "ses_later"]
    assert overview.open_sessions == 2
    assert overview.sessions[0].spent_minor == {"USD": 3_300}
    assert overview.pending_approvals == 1
    assert {(f.scope, f.target) for f in overview.freezes} == {
        (FreezeScope.SESSION, "ses_later"),
        (FreezeScope.KEY, "payments.v1"),
    }
    assert overview.window is not None and overview.window.spend_minor == {"USD": 2_340}
    capped = store.agent_overview(
        "agent-1", assets=[], keys=[], now=T0, day_start=T0, velocity_seconds=0,
        breaker_seconds=None, max_sessions=1,
    )  # fmt: skip
    assert [s.id for s in capped.sessions] == ["ses_open"] and capped.open_sessions == 2
    assert capped.window is None and capped.usage == {}
    store.close()


def test_the_overview_searches_indexes_and_never_scans(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _a_store(SqliteStore(path)).close()
    store = SqliteStore(path)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    store.agent_overview(
        "agent-1", assets=["USD"], keys=["payments.v1"], now=T0, day_start=T0 - 3_600,
        velocity_seconds=60, breaker_seconds=3_600, max_sessions=10,
    )  # fmt: skip
    store.close()
    conn = sqlite3.connect(path)
    checked = 0
    for statement in statements:
        if statement in ("BEGIN", "COMMIT"):
            continue
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]
        assert not [p for p in plan if p.startswith("SCAN") and p != "SCAN CONSTANT ROW"], (
            statement,
            plan,
        )
        assert not [p for p in plan if "TEMP B-TREE" in p], (statement, plan)
        checked += 1
    assert checked > 10
    assert any("INDEXED BY sessions_open_agent" in s for s in statements)
    conn.close()


# -- against the running signer --------------------------------------------------------

TIMEOUT = 30
FIXTURE_PACK = """
id = "explain-fixture"
version = 3
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "50"
daily_limit = "120.5"
rolling_24h_limit = "200"
approval_above = "40"
approval_tiers = [{ above = "45", approvers = 2 }]

[assets.JPY]
keys = ["payments.v2"]
max_per_payment = "9000"

[payees]
allow = ["acme-data", "globex"]
allow_patterns = ["vendor-[0-9]+"]
deny = ["evil-corp"]
deny_patterns = ["scam-.*"]
first_payment = "allow"

[velocity]
max_payments = 10
window_seconds = 3600

[diversity]
max_payees_per_session = 5
max_payees_per_day = 8

[hours]
start = "{start}"
end = "{end}"

[breaker]
window_seconds = 3600
max_rejections = 50
max_spend = { USD = "500" }

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "100", JPY = "5000" }
"""
# (asset, payee, amount, key) signed for agent-1 in its first session, then one held.
SIGNED = (
    ("USD", "acme-data", "12.50", "payments.v1"),
    ("USD", "vendor-7", "7.25", "payments.v2"),
    ("USD", "globex", "30", "payments.v1"),
    ("JPY", "acme-data", "500", "payments.v2"),
)
HELD = ("USD", "globex", "42", "payments.v1")  # above approval_above: waits for an approver


@dataclass
class Fixture:
    srv: ServeProcess
    api: Api
    db: Path
    first: str  # the session that paid
    second: str  # an open session that paid nothing
    closed: str


@pytest.fixture(scope="module")
def fixture_agent(
    tmp_path_factory: pytest.TempPathFactory, token: TestToken, pki: Pki
) -> Iterator[Fixture]:
    directory = tmp_path_factory.mktemp("explain")
    config = write_config(directory, token, pki, packs={"fixture.toml": _fixture_pack()})
    with running_api(config, pki) as (srv, api):
        first = open_session(api.planner, "agent-1", {"USD": "100", "JPY": "5000"}, ttl=3000)
        second = open_session(api.planner, "agent-1", {"USD": "10"}, ttl=3500)
        closed = open_session(api.planner, "agent-1", {"USD": "10"}, ttl=3500)
        api.planner.CloseSession(_close_request(closed), timeout=TIMEOUT)
        for asset, payee, amount, key in SIGNED:
            signed(api.answer(_fixture_intent(first, asset, payee, amount, key)))
        held = api.sign(_fixture_intent(first, *HELD))
        assert held.status == signer_pb2.PENDING_APPROVAL
        denied = api.answer(_fixture_intent(first, "USD", "evil-corp", "1", "payments.v1"))
        assert isinstance(denied, grpc.RpcError)
        yield Fixture(srv, api, directory / "state.db", first, second, closed)


def _fixture_pack() -> str:
    """The pack, its allowed hours from an hour ago to two hours ahead (UTC): the
    payments are made and explained well inside them, whenever the test runs."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    return FIXTURE_PACK.replace("{start}", start.strftime("%H:%M")).replace(
        "{end}", end.strftime("%H:%M")
    )


def _close_request(session_id: str) -> sessions_pb2.CloseSessionRequest:
    return sessions_pb2.CloseSessionRequest(session_id=session_id)


def _fixture_intent(session_id: str, asset: str, payee: str, amount: str, key: str) -> Any:
    return payment_request(
        session_id, asset=asset, payee=payee, amount=amount, key_id=key, expires_in=240
    ).intent


def _explained(api: Api, agent: str) -> tuple[control_pb2.ExplainAgentResponse, dict[str, Any]]:
    resp: control_pb2.ExplainAgentResponse = api.control().ExplainAgent(
        control_pb2.ExplainAgentRequest(agent_id=agent), timeout=TIMEOUT
    )
    return resp, json.loads(resp.document)


def _recorded(db: Path, agent: str, asset: str, since: int, now: int) -> Decimal:
    """The agent's spend in ``asset`` created at or after ``since`` that counts at ``now``,
    recomputed from the stored reservations by the rule of what counts (signed, or
    not released and not expired), in the asset's units."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT r.amount_minor, s.decimals FROM reservations r JOIN decisions d"
        " ON d.id = r.decision_id JOIN session_budgets s ON s.session_id = r.session_id"
        " AND s.asset = r.asset WHERE r.agent_id = ? AND r.asset = ? AND r.created_at >= ?"
        " AND r.status != 'released' AND (r.expires_at > ? OR d.jws IS NOT NULL)",
        (agent, asset, since, now),
    ).fetchall()
    conn.close()
    return sum((Decimal(int(m)).scaleb(-d) for m, d in rows), Decimal(0))


def _live_rows(db: Path, agent: str, since: int, now: int) -> list[tuple[str, int]]:
    """(payee key, created_at) of the agent's reservations in every asset created at or
    after ``since`` that count at ``now`` (signed, or not released and not expired)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute(
        "SELECT r.payee_key, r.created_at FROM reservations r JOIN decisions d"
        " ON d.id = r.decision_id WHERE r.agent_id = ? AND r.created_at >= ?"
        " AND r.status != 'released' AND (r.expires_at > ? OR d.jws IS NOT NULL)",
        (agent, since, now),
    ).fetchall()
    conn.close()
    return [(str(p), int(t)) for p, t in rows]


def _count(db: Path, sql: str, *params: object) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (n,) = conn.execute(sql, params).fetchone()
    conn.close()
    return int(n)


def _d(text: str) -> Decimal:
    return Decimal(text)


def test_every_field_matches_the_pack_and_the_recorded_spend(fixture_agent: Fixture) -> None:
    fx = fixture_agent
    resp, doc = _explained(fx.api, "agent-1")
    assert resp.agent_id == "agent-1" and resp.covered and doc["covered"] is True
    assert doc["schema"] == "paywarden.explain.agent/v1" and doc["agent_id"] == "agent-1"
    now, tz = doc["at"], ZoneInfo(doc["timezone"])
    assert doc["timezone"] == "UTC"
    local = datetime.fromtimestamp(now, tz)
    midnight = datetime.combine(local.date(), datetime.min.time(), tzinfo=tz)
    assert doc["day_start"] == int(midnight.timestamp())
    power = doc["power"]
    pack_text = (fx.db.parent / "policy" / "fixture.toml").read_bytes()
    assert power["cover"] == {
        "id": "explain-fixture",
        "version": 3,
        "sha256": hashlib.sha256(pack_text).hexdigest(),
        "via": "agents",
    }
    assets = {a["asset"]: a for a in power["assets"]}
    assert sorted(assets) == ["JPY", "USD"]
    usd, jpy = assets["USD"], assets["JPY"]
    assert [k["key_id"] for k in usd["keys"]] == ["payments.v1", "payments.v2"]
    assert [k["key_id"] for k in jpy["keys"]] == ["payments.v2"]
    keys = usd["keys"] + jpy["keys"]
    assert all(k["configured"] is True and k["state"] == "active" for k in keys)
    assert (usd["decimals"], jpy["decimals"]) == (2, 0)
    assert _d(usd["max_per_payment"]) == _d("50") and usd["max_per_payment"] == "50.00"
    assert _d(jpy["max_per_payment"]) == _d("9000")
    # Spend: what the store recorded, and what the test sent.
    sent_usd = sum(_d(a) for s, _, a, _ in (*SIGNED, HELD) if s == "USD")
    sent_jpy = sum(_d(a) for s, _, a, _ in SIGNED if s == "JPY")
    today_usd = _recorded(fx.db, "agent-1", "USD", doc["day_start"], now)
    last_24h_usd = _recorded(fx.db, "agent-1", "USD", now - 86_400 + 1, now)
    assert last_24h_usd == sent_usd == _d("91.75")  # "today" may have begun since
    today_jpy = _recorded(fx.db, "agent-1", "JPY", doc["day_start"], now)
    assert _recorded(fx.db, "agent-1", "JPY", now - 86_400 + 1, now) == sent_jpy
    assert _d(usd["spent_today"]) == today_usd and _d(usd["spent_24h"]) == last_24h_usd
    assert _d(jpy["spent_today"]) == today_jpy and _d(jpy["spent_24h"]) == sent_jpy
    assert {k: _d(v) for k, v in usd["daily"].items()} == {
        "limit": _d("120.5"), "used": today_usd, "remaining": _d("120.5") - today_usd,
    }  # fmt: skip
    assert {k: _d(v) for k, v in usd["rolling_24h"].items()} == {
        "limit": _d("200"), "used": last_24h_usd, "remaining": _d("200") - last_24h_usd,
    }  # fmt: skip
    assert jpy["daily"] is None and jpy["rolling_24h"] is None
    assert [(_d(s["above"]), s["approvers"]) for s in usd["approval"]] == [
        (_d("40"), 1),
        (_d("45"), 2),
    ]
    assert jpy["approval"] == []
    assert power["payees"] == {
        "allow": ["acme-data", "globex"],
        "allow_patterns": ["vendor-[0-9]+"],
        "deny": ["evil-corp"],
        "deny_patterns": ["scam-.*"],
        "first_payment": "allow",
    }
    payments = len(_live_rows(fx.db, "agent-1", now - 3600 + 1, now))
    assert payments == len(SIGNED) + 1  # the held one counts too
    assert power["velocity"] == {
        "window_seconds": 3600,
        "payments": {"limit": 10, "used": payments, "remaining": 10 - payments},
    }
    payees = len({p for p, _ in _live_rows(fx.db, "agent-1", doc["day_start"], now)})
    assert power["diversity"] == {
        "max_payees_per_session": 5,
        "payees_today": payees,
        "per_day": {"limit": 8, "used": payees, "remaining": 8 - payees},
    }
    hours = tomllib.loads(pack_text.decode("utf-8"))["hours"]
    assert power["hours"] == {"start": hours["start"], "end": hours["end"], "open_now": True}
    decisions = _count(
        fx.db, "SELECT COUNT(*) FROM decisions WHERE agent_id = ? AND created_at > ?",
        "agent-1", now - 3600,
    )  # fmt: skip
    denials = _count(
        fx.db,
        "SELECT COUNT(*) FROM decisions WHERE agent_id = ? AND created_at > ? AND outcome = ?",
        "agent-1", now - 3600, "deny",
    )  # fmt: skip
    breaker = power["breaker"]
    assert (decisions, denials) == (len(SIGNED) + 2, 1)
    assert breaker["decisions"] >= decisions and breaker["denials"] >= denials
    assert breaker["decisions"] - decisions == breaker["denials"] - denials  # refusals
    assert {k: _d(v) for k, v in breaker["spend"].items()} == {"USD": sent_usd, "JPY": sent_jpy}
    assert breaker["payees"] == len({p for _, p, _, _ in (*SIGNED, HELD)})
    assert (breaker["window_seconds"], breaker["max_rejections"]) == (3600, 50)
    assert breaker["max_rejection_rate"] is None and breaker["min_decisions"] == 10
    assert {k: _d(v) for k, v in breaker["max_spend"].items()} == {"USD": _d("500")}
    assert breaker["max_payees"] is None
    assert power["sessions"] == {
        "max_ttl_seconds": 3600,
        "max_budget": {"JPY": "5000", "USD": "100.00"},
        "require_plan": False,
    }
    # Sessions: the two open ones, soonest expiry first; the closed one is not listed.
    assert doc["open_sessions_total"] == 2
    first, second = doc["open_sessions"]
    assert (first["session_id"], second["session_id"]) == (fx.first, fx.second)
    assert first["state"] == second["state"] == "open"
    assert first["phase"] == second["phase"] == "normal"
    assert first["expires_at"] < second["expires_at"]
    assert first["pack_id"] == "explain-fixture" and first["pack_version"] == 3
    assert first["pack_sha256"] == power["cover"]["sha256"]
    assert [(b["asset"], _d(b["budget"]), _d(b["spent"]), _d(b["remaining"])) for b in
            first["budgets"]] == [
        ("JPY", _d("5000"), sent_jpy, _d("5000") - sent_jpy),
        ("USD", _d("100"), sent_usd, _d("100") - sent_usd),
    ]  # fmt: skip
    assert first["payees"] == len({p for _, p, _, _ in (*SIGNED, HELD)})
    assert first["allowed_payees"] == []
    assert (first["plan_lines"], first["plan_lines_used"]) == (0, 0)
    assert [(b["asset"], b["spent"], b["remaining"]) for b in second["budgets"]] == [
        ("USD", "0.00", "10.00")
    ]
    assert (
        doc["pending_approvals"]
        == 1
        == _count(fx.db, "SELECT COUNT(*) FROM approvals WHERE status = 'pending'")
    )
    assert doc["freezes"] == []


def test_the_freezes_that_stop_the_agent_are_listed(fixture_agent: Fixture, pki: Pki) -> None:
    fx = fixture_agent
    for args in (
        ("agent", "agent-1"),
        ("key", "payments.v2"),
        ("session", fx.second),
        ("agent", "agent-2"),  # another agent's: not listed
    ):
        assert ctl(fx.srv, pki, "freeze", *args, "--reason", "explain test").returncode == 0
    try:
        _, doc = _explained(fx.api, "agent-1")
        assert {(f["scope"], f["target"]) for f in doc["freezes"]} == {
            ("agent", "agent-1"),
            ("key", "payments.v2"),
            ("session", fx.second),
        }
        assert all(f["actor"] == "operator/operator-1" for f in doc["freezes"])
        assert all(f["reason"] == "explain test" for f in doc["freezes"])
        out = _explain_cli(fx.srv, pki, "agent-1")
        assert out.returncode == 0, out.stderr
        assert "FROZEN: agent agent-1 by operator/operator-1" in out.stdout
    finally:
        for args in (
            ("agent", "agent-1"),
            ("key", "payments.v2"),
            ("session", fx.second),
            ("agent", "agent-2"),
        ):
            ctl(fx.srv, pki, "unfreeze", *args, "--reason", "explain test over")
    _, doc = _explained(fx.api, "agent-1")
    assert doc["freezes"] == []


def test_a_revoked_agent_is_reported_revoked(fixture_agent: Fixture, pki: Pki) -> None:
    # A revocation is never lifted: an agent no other test of this module uses.
    fx = fixture_agent
    assert _explained(fx.api, "agent-9")[1]["revoked"] is None
    done = ctl(fx.srv, pki, "revoke", "--principal", "agent-9", "--reason", "explain revoked")
    assert done.returncode == 0, done.stderr
    _, doc = _explained(fx.api, "agent-9")
    revoked = doc["revoked"]
    assert revoked is not None
    assert (revoked["kind"], revoked["value"]) == ("principal", "agent-9")
    assert (revoked["operator"], revoked["reason"]) == ("operator/operator-1", "explain revoked")
    assert _explained(fx.api, "agent-1")[1]["revoked"] is None
    out = _explain_cli(fx.srv, pki, "agent-9")
    assert out.returncode == 0, out.stderr
    assert "REVOKED: by operator/operator-1" in out.stdout


def _explain_cli(srv: ServeProcess, pki: Pki, *args: str) -> Any:
    return paywarden(
        "explain", "--addr", srv.addr, "--ca", pki.dir / "ca.crt",
        "--cert", pki.dir / "operator-operator-1.crt",
        "--key", pki.dir / "operator-operator-1.key",
        "agent", *args, timeout=60,
    )  # fmt: skip


def test_the_command_prints_the_report_and_the_document(fixture_agent: Fixture, pki: Pki) -> None:
    fx = fixture_agent
    as_json = _explain_cli(fx.srv, pki, "agent-1", "--json")
    assert as_json.returncode == 0, as_json.stderr
    printed = json.loads(as_json.stdout)
    _, doc = _explained(fx.api, "agent-1")
    for moving in ("at", "day_start"):  # read at two instants
        printed.pop(moving), doc.pop(moving)
    assert printed == doc
    report = _explain_cli(fx.srv, pki, "agent-1")
    assert report.returncode == 0, report.stderr
    text = report.stdout
    assert "pack explain-fixture v3" in text
    assert "USD: keys payments.v1 [active], payments.v2 [active]; at most 50.00 per payment" in text
    assert "daily limit: 120.50, used 91.75, remains 28.75" in text
    assert "rolling 24 h limit: 200.00, used 91.75, remains 108.25" in text
    assert "approval: above 40.00: 1 approver(s); above 45.00: 2 approver(s)" in text
    assert f"{fx.first}: open, phase normal" in text
    assert "USD: budget 100.00, spent 91.75, remains 8.25" in text
    assert "pending approvals: 1" in text and "freezes: none" in text
    assert "breaker over 3600 s: freezes on more than 50 rejections, USD spend above 500.00" in text


def test_an_agent_no_pack_covers_is_reported_not_refused(fixture_agent: Fixture, pki: Pki) -> None:
    resp, doc = _explained(fixture_agent.api, "agent-2")
    assert resp.covered is False and doc["covered"] is False and doc["power"] is None
    assert doc["open_sessions"] == [] and doc["open_sessions_total"] == 0
    assert doc["pending_approvals"] == 0 and doc["freezes"] == []
    report = _explain_cli(fixture_agent.srv, pki, "agent-2")
    assert report.returncode == 0, report.stderr
    assert "no policy pack covers this agent" in report.stdout


def test_only_an_operator_may_ask_and_only_about_an_agent_id(fixture_agent: Fixture) -> None:
    api = fixture_agent.api
    request = control_pb2.ExplainAgentRequest(agent_id="agent-1")
    for role, who in (("agent", "agent-1"), ("planner", "planner-1"), ("approver", "approver-1")):
        with pytest.raises(grpc.RpcError) as err:
            api.control(role, who).ExplainAgent(request, timeout=TIMEOUT)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(err.value) == Reason.ROLE_NOT_ALLOWED.value
    for bad in ("", "Agent-1", "agent/1", "a" * 129, "agent-1\n"):
        with pytest.raises(grpc.RpcError) as err:
            api.control().ExplainAgent(
                control_pb2.ExplainAgentRequest(agent_id=bad), timeout=TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


# -- the policy's calendar day, groups and hours (the core, on an in-process stack) ----------

NIGHT_PACK = """
id = "night"
version = 1
groups = ["night-shift"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "100"
daily_limit = "60"

[payees]
allow = ["acme-data"]
first_payment = "allow"

[hours]
start = "22:00"
end = "02:00"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "100" }
"""
NIGHT_TZ = ZoneInfo("America/New_York")


def _move_to(stack: Stack, local: datetime) -> int:
    """Moves the stack's clock forward to ``local`` (a time in New York)."""
    delta = local.timestamp() - stack.clock.now()
    assert delta > 0
    stack.clock.advance(delta + 0.001)
    return int(stack.clock.now())


def test_a_day_is_the_policys_and_hours_are_read_at_decision_time(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(
        packs={"night.toml": NIGHT_PACK},
        extra='\n[groups]\nnight-shift = ["agent-2"]\n',
        timezone="America/New_York",
    )
    operator = Principal(Role.OPERATOR, "operator-1")
    agent = Principal(Role.AGENT, "agent-2")
    day = datetime.fromtimestamp(stack.clock.now(), NIGHT_TZ).date() + timedelta(days=2)
    _move_to(stack, datetime.combine(day, time(23, 35), tzinfo=NIGHT_TZ))
    session = stack.service.open_session(
        Principal(Role.PLANNER, "planner-1"), "agent-2", "night work", [("USD", "100")], 3600, []
    ).record.id
    for amount, local in (("10", time(23, 40)), ("5", time(0, 10))):
        on = day + timedelta(days=1) if local < time(12) else day
        _move_to(stack, datetime.combine(on, local, tzinfo=NIGHT_TZ))
        stack.service.sign(
            agent,
            intent_fields(
                session, payee="acme-data", amount=amount,
                expires_at=int(stack.clock.now()) + 60,
            ),
        )  # fmt: skip
    now = _move_to(stack, datetime.combine(day + timedelta(days=1), time(0, 15), tzinfo=NIGHT_TZ))
    explained = stack.service.explain.agent(operator, "agent-2")
    midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=NIGHT_TZ)
    assert (explained.at, explained.day_start) == (now, int(midnight.timestamp()))
    assert explained.timezone == "America/New_York"
    power = explained.power
    assert power is not None and power.cover.via == "group night-shift"
    (usd,) = power.assets
    assert (usd.spent_today, usd.spent_24h) == ("5.00", "15.00")  # New York's day began at 00:00
    assert usd.daily is not None and (usd.daily.used, usd.daily.remaining) == ("5.00", "55.00")
    assert power.hours is not None and power.hours.open_now  # 00:15 is in 22:00-02:00
    _move_to(stack, datetime.combine(day + timedelta(days=1), time(3, 0), tzinfo=NIGHT_TZ))
    later = stack.service.explain.agent(operator, "agent-2").power
    assert later is not None and later.hours is not None and not later.hours.open_now
    with pytest.raises(Forbidden):
        stack.service.explain.agent(agent, "agent-2")

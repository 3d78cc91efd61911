"""``paywarden report``: the operator report, rendered by headless Chromium.

A real signer (the in-process stack, over mutual TLS) records known activity over four
days of its clock: two agents, two assets, several payees (one named like markup), a
denial, an approval approved and one denied, a freeze lifted and one left in force,
and two checkpoints. ``paywarden report`` writes the page; Chromium renders it
(``--dump-dom``: the DOM it built), and the DOM's tables and SVG charts must hold the
figures this test computes on its own from ``paywarden store-export`` (exact decimals,
never floats) and from the calls it made. The page must reference nothing outside
itself, and the hostile payee must come out as text.

``PAYWARDEN_REPORT_SCREENSHOT=docs/report.png`` also saves the screenshot there (how
``docs/report.png`` was made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from paywarden.policy.vocabulary import format_amount
from paywarden.signer.cli import report
from paywarden.signer.cli.commands import main
from paywarden.signer.cli.report_svg import attr_name, attrs
from paywarden.signer.store.report_reads import DAY, HOUR, WEEK, bucket_for
from paywarden.v1 import approvals_pb2, control_pb2, signer_pb2

from tests.helpers import ROOT, Stack, reason_of
from tests.support.chromium import Element, dump_dom, elements, screenshot, within_element
from tests.support.cli import paywarden, settings_free_env
from tests.support.clients import Api, signed
from tests.support.intents import sign_request
from tests.support.sessions import open_session

PACK = """
id = "report"
version = 1
agents = ["agent-1", "agent-2"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "1000.00"
approval_above = "200.00"

[assets.BTC]
keys = ["payments.v1"]
max_per_payment = "1.00000000"

[payees]
allow_patterns = [".+"]
deny = ["evil-corp"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "5000.00", BTC = "2.00000000" }
"""

pytestmark = [pytest.mark.stack(packs={"report.toml": PACK}), pytest.mark.both_backends]

# Payee names are chosen by whoever asks to be paid: markup the page must show as text.
HOSTILE = "<script>alert('pw')</script>&amp;"
HOSTILE_IMG = '"><img src=x onerror=alert(1)>'
DECIMALS = {"USD": 2, "BTC": 8}
RESOURCE_ATTRS = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data"}
FORBIDDEN_TAGS = {"script", "img", "link", "iframe", "object", "embed", "image", "use", "audio"}


@dataclass
class Story:
    """What the test did, in its own words, and where the report went."""

    config: Path
    page: Path
    dom: str
    freezes: list[tuple[str, str, str]]  # (scope, target, lifted?) in the order set
    key: Path  # the audit public key (PEM)
    store: Path  # the store's path (on PostgreSQL, only a name)


def _freeze_scope(api: Api, scope: control_pb2.FreezeScope, target: str, reason: str) -> None:
    api.control().Freeze(
        control_pb2.FreezeRequest(scope=scope, target=target, reason=reason), timeout=30
    )


def _pay_signed(api: Api, stack: Stack, sid: str, agent: str, amount: str, **kw: Any) -> None:
    signed(api.answer(sign_request(stack, sid, amount=amount, **kw).intent, agent=agent))


def _play(api: Api, stack: Stack) -> tuple[list[tuple[str, str, str]], str]:
    """The activity, over four days of the signer's clock; returns the freezes set and
    the audit public key (PEM) from the last checkpoint."""
    planner = api.planner
    budgets = {"USD": "5000.00", "BTC": "2.00000000"}
    s1 = open_session(planner, "agent-1", budgets)
    _pay_signed(api, stack, s1, "agent-1", "12.50", payee="acme-weather")
    _pay_signed(api, stack, s1, "agent-1", "3.10", payee="payee-1")
    _pay_signed(api, stack, s1, "agent-1", "7.00", payee=HOSTILE)
    _pay_signed(api, stack, s1, "agent-1", "0.00150000", payee="acme-weather", asset="BTC")
    denied = api.answer(sign_request(stack, s1, amount="1.00", payee="evil-corp").intent)
    assert isinstance(denied, grpc.RpcError) and reason_of(denied) == "PAYEE_DENYLISTED"
    held = sign_request(stack, s1, amount="250.00", payee="acme-weather", expires_in=240).intent
    first = api.sign(held)
    assert first.status == signer_pb2.PENDING_APPROVAL
    stack.clock.advance(45)
    api.approver("approver-1").Approve(
        approvals_pb2.ApproveRequest(approval_id=first.approval_id, note="expected")
    )
    signed(api.answer(held))
    refused = sign_request(stack, s1, amount="300.00", payee=HOSTILE_IMG, expires_in=240).intent
    second = api.sign(refused)
    assert second.status == signer_pb2.PENDING_APPROVAL
    stack.clock.advance(20)
    api.approver("approver-2").Deny(
        approvals_pb2.DenyRequest(approval_id=second.approval_id, note="not in the plan")
    )
    answer = api.answer(refused)
    assert isinstance(answer, grpc.RpcError) and reason_of(answer) == "APPROVAL_DENIED"
    api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30)

    stack.clock.advance(DAY)
    s2 = open_session(api.planner2, "agent-2", {"USD": "1000.00"})
    _pay_signed(api, stack, s2, "agent-2", "20.00", payee="acme-weather")
    _pay_signed(api, stack, s2, "agent-2", "5.55", payee="payee-1")
    _freeze_scope(api, control_pb2.AGENT, "agent-2", "odd payees")
    frozen = api.answer(
        sign_request(stack, s2, amount="1.00", payee="payee-1").intent, agent="agent-2"
    )
    assert isinstance(frozen, grpc.RpcError) and reason_of(frozen) == "FROZEN"
    stack.clock.advance(120)
    api.control().Unfreeze(
        control_pb2.UnfreezeRequest(scope=control_pb2.AGENT, target="agent-2", reason="cleared"),
        timeout=30,
    )
    _pay_signed(api, stack, s2, "agent-2", "1.45", payee="acme-weather")
    s3 = open_session(planner, "agent-1", budgets)
    _pay_signed(api, stack, s3, "agent-1", "40.00", payee="acme-weather")
    _pay_signed(api, stack, s3, "agent-1", "0.01000000", payee="payee-1", asset="BTC")

    stack.clock.advance(2 * DAY)
    s4 = open_session(planner, "agent-1", budgets)
    _pay_signed(api, stack, s4, "agent-1", "9.99", payee="payee-1")
    _freeze_scope(api, control_pb2.KEY, "payments.v2", "rotation pending")
    done = api.control().Checkpoint(control_pb2.CheckpointRequest(), timeout=30)
    freezes = [("agent", "agent-2", "lifted"), ("key", "payments.v2", "")]
    return freezes, done.audit_public_key_pem


@pytest.fixture(scope="module")
def story(api: Api, stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Story:
    freezes, pem = _play(api, stack)
    work = tmp_path_factory.mktemp("report")
    key = work / "audit.pem"
    key.write_text(pem, encoding="ascii")
    # The stack's configuration file (tests/helpers.py write_config), beside its packs.
    config = Path(stack.config.policy.dir).parent / "paywarden.toml"
    assert config.is_file()
    out = work / "site"
    run = paywarden(
        "report", "--config", config, "--out", out, "--public-key", key, "--bucket", "day",
        env=settings_free_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "audit verify: ok" in run.stdout
    page = out / "index.html"
    return Story(config, page, dump_dom(page), freezes, key, Path(stack.config.store.path))


def _export(story: Story, table: str) -> list[dict[str, Any]]:
    run = paywarden(
        "store-export", "--config", story.config, "--table", table, env=settings_free_env()
    )
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


def _signed_reservations(story: Story) -> list[dict[str, Any]]:
    return [r for r in _export(story, "reservations") if r["signed"] == 1]


def _money(minor: int, asset: str) -> str:
    return format_amount(minor, DECIMALS[asset])


def _of(
    dom: list[Element], tag: str, within: tuple[str, dict[str, str]] | None = None
) -> list[Element]:
    return [
        e
        for e in dom
        if e.tag == tag and (within is None or within_element(e, within[0], within[1]))
    ]


def _chart(dom: list[Element], kind: str) -> list[Element]:
    """The bars of one chart: its rects that carry figures."""
    return [
        e
        for e in _of(dom, "rect", ("svg", {"data-chart": kind}))
        if "data-count" in e.attrs or "data-amount" in e.attrs
    ]


def _section_rows(dom: list[Element], section: str) -> list[Element]:
    return _of(dom, "tr", ("section", {"id": section}))


# -- the figures -------------------------------------------------------------------


def test_spend_charts_and_table_hold_each_agents_spend_per_asset_and_day(story: Story) -> None:
    dom = elements(story.dom)
    per_day: Counter[tuple[str, str, str]] = Counter()
    totals: Counter[tuple[str, str]] = Counter()
    payments: Counter[tuple[str, str]] = Counter()
    for r in _signed_reservations(story):
        day = datetime.fromtimestamp(r["created_at"] // DAY * DAY, UTC).strftime("%Y-%m-%d")
        per_day[r["agent_id"], r["asset"], day] += int(r["amount_minor"])
        totals[r["agent_id"], r["asset"]] += int(r["amount_minor"])
        payments[r["agent_id"], r["asset"]] += 1
    assert {a for _, a, _ in per_day} == {"USD", "BTC"} and len({d for *_, d in per_day}) >= 3
    drawn = {
        (e.attrs["data-agent"], e.attrs["data-asset"], e.attrs["data-bucket"]): e.attrs[
            "data-amount"
        ]
        for asset in ("USD", "BTC")
        for e in _chart(dom, f"spend-{asset}")
    }
    assert drawn == {k: _money(v, k[1]) for k, v in per_day.items()}
    # each bar's tooltip says the same figure
    for e in _chart(dom, "spend-USD"):
        assert e.text.endswith(f"{e.attrs['data-amount']} USD")
    table = {
        (e.attrs["data-agent"], e.attrs["data-asset"]): (
            e.attrs["data-total"], int(e.attrs["data-payments"]), e.text
        )
        for e in _section_rows(dom, "spend") if "data-agent" in e.attrs
    }  # fmt: skip
    assert {k: v[:2] for k, v in table.items()} == {
        k: (_money(v, k[1]), payments[k]) for k, v in totals.items()
    }
    assert table["agent-1", "USD"][0] == "322.59"  # 12.50 + 3.10 + 7.00 + 250.00 + 40.00 + 9.99


def test_decisions_by_outcome_and_reason_match_the_store(story: Story) -> None:
    dom = elements(story.dom)
    counted = Counter((d["outcome"], d["reason"]) for d in _export(story, "decisions"))
    assert (
        counted[("deny", "PAYEE_DENYLISTED")] == 1
        and counted[("pending", "AMOUNT_NEEDS_APPROVAL")] == 2
    )
    bars = {
        (e.attrs["data-outcome"], e.attrs["data-reason"]): int(e.attrs["data-count"])
        for e in _chart(dom, "decisions")
    }
    rows = {
        (e.attrs["data-outcome"], e.attrs["data-reason"]): int(e.attrs["data-count"])
        for e in _section_rows(dom, "decisions") if "data-reason" in e.attrs
    }  # fmt: skip
    assert bars == rows == dict(counted)
    by_agent = Counter((d["agent_id"], d["outcome"]) for d in _export(story, "decisions"))
    agents = {
        (e.attrs["data-agent"], e.attrs["data-outcome"]): int(e.attrs["data-count"])
        for e in _section_rows(dom, "decisions") if "data-agent" in e.attrs
    }  # fmt: skip
    assert agents == dict(by_agent)


def test_approvals_show_status_counts_and_time_to_decide(story: Story) -> None:
    dom = elements(story.dom)
    stored = _export(story, "approvals")
    want = Counter(a["status"] for a in stored)
    assert want == {"approved": 1, "denied": 1}
    shown = {
        e.attrs["data-status"]: (int(e.attrs["data-count"]), int(e.attrs["data-total-seconds"]))
        for e in _section_rows(dom, "approvals") if "data-total-seconds" in e.attrs
    }  # fmt: skip
    assert shown == {
        s: (n, sum(a["decided_at"] - a["created_at"] for a in stored if a["status"] == s))
        for s, n in want.items()
    }
    assert shown["approved"][1] >= 45 and shown["denied"][1] >= 20  # the clock moved so
    latest = {e.attrs["data-approval"]: e.attrs for e in _section_rows(dom, "approvals")
              if "data-approval" in e.attrs}  # fmt: skip
    assert {a: v["data-status"] for a, v in latest.items()} == {
        a["id"]: a["status"] for a in stored
    }
    assert {v["data-amount"] for v in latest.values()} == {"250.00", "300.00"}


def test_freezes_show_who_froze_what_when_and_the_lift(story: Story) -> None:
    dom = elements(story.dom)
    history = [e.attrs for e in _section_rows(dom, "freezes") if "data-lifted-at" in e.attrs]
    assert [
        (h["data-scope"], h["data-target"], "lifted" if h["data-lifted-at"] else "")
        for h in reversed(history)
    ] == story.freezes
    assert {h["data-actor"] for h in history} == {"operator/operator-1"}
    lifted = next(h for h in history if h["data-lifted-at"])
    assert int(lifted["data-lifted-at"]) - int(lifted["data-at"]) >= 120
    assert lifted["data-lifted-by"] == "operator/operator-1"
    now = [(e.attrs["data-scope"], e.attrs["data-target"]) for e in _section_rows(dom, "freezes")
           if "data-target" in e.attrs and "data-lifted-at" not in e.attrs]  # fmt: skip
    assert now == [(f["scope"], f["target"]) for f in _export(story, "freezes")]
    assert now == [("key", "payments.v2")]


def test_busiest_payees_hold_their_payment_counts_and_exact_totals(story: Story) -> None:
    dom = elements(story.dom)
    counts: Counter[str] = Counter()
    amounts: dict[str, Counter[str]] = {}
    for r in _signed_reservations(story):
        counts[r["payee_key"]] += 1
        amounts.setdefault(r["payee_key"], Counter())[r["asset"]] += int(r["amount_minor"])
    bars = [(e.attrs["data-payee"], int(e.attrs["data-count"])) for e in _chart(dom, "payees")]
    assert bars == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    assert bars[0] == ("acme-weather", 6)
    rows = {e.attrs["data-payee"]: e.attrs for e in _section_rows(dom, "payees")
            if "data-payments" in e.attrs}  # fmt: skip
    for payee, per_asset in amounts.items():
        assert int(rows[payee]["data-payments"]) == counts[payee]
        for asset, minor in per_asset.items():
            assert rows[payee][f"data-amount-{asset.lower()}"] == _money(minor, asset)


def test_checkpoints_and_the_audit_verdict_are_shown(story: Story) -> None:
    dom = elements(story.dom)
    stored = sorted(_export(story, "audit_checkpoints"), key=lambda c: -c["size"])
    assert len(stored) >= 2
    shown = [
        (int(e.attrs["data-size"]), e.attrs["data-root"], e.attrs["data-key"])
        for e in _section_rows(dom, "audit") if "data-root" in e.attrs
    ]  # fmt: skip
    assert shown == [(c["size"], c["root"], c["key_id"]) for c in stored]
    verdict = [e for e in dom if e.attrs.get("data-audit")]
    assert [e.attrs["data-audit"] for e in verdict] == ["ok"]
    assert "holds" in verdict[0].text


# -- a page that stands alone, and shows hostile names as text -----------------------


def test_the_page_loads_nothing_from_outside_and_runs_no_script(story: Story) -> None:
    dom = elements(story.dom)
    assert dom and dom[0].tag == "html"
    assert not {e.tag for e in dom} & FORBIDDEN_TAGS
    for e in dom:
        assert not set(e.attrs) & RESOURCE_ATTRS, (e.tag, e.attrs)
        assert not any(a.startswith("on") for a in e.attrs), (e.tag, e.attrs)
    style = "".join(e.text for e in dom if e.tag == "style")
    assert style and "url(" not in style and "@import" not in style
    csp = [
        e.attrs["content"] for e in dom if e.attrs.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'"]


def test_hostile_payee_names_are_text_not_markup(story: Story) -> None:
    raw = story.page.read_text(encoding="utf-8")
    assert "<script" not in raw.lower() and "<img" not in raw.lower()
    dom = elements(story.dom)
    for name in (HOSTILE, HOSTILE_IMG):
        cells = [e for e in _of(dom, "td") if e.text == name]
        assert cells, f"{name!r} is not shown as a table cell's text"
        assert any(e.attrs.get("data-payee") == name for e in dom)
    # the chart's label and tooltip hold it as text too
    titles = [e.text for e in _chart(dom, "payees")]
    assert f"{HOSTILE}: 1 payments" in titles


def test_screenshot_of_the_rendered_report(story: Story, tmp_path: Path) -> None:
    shot = screenshot(story.page, tmp_path / "report.png", width=1100, height=2750)
    assert shot.stat().st_size > 20_000  # a page of text and charts, not a blank
    target = os.environ.get("PAYWARDEN_REPORT_SCREENSHOT")
    if target:
        shutil.copyfile(shot, ROOT / target)


# -- choices and failures ----------------------------------------------------------


def test_the_page_is_the_same_made_in_process_and_by_the_command(
    story: Story, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "again"
    args = ["report", "--config", str(story.config), "--out", str(out), "--bucket", "day",
            "--public-key", str(story.key)]  # fmt: skip
    assert main(args) == 0
    assert "audit verify: ok" in capsys.readouterr().out

    def steady(page: Path) -> str:  # all but the time it was generated
        return re.sub(r"generated [0-9: -]+ UTC", "", page.read_text(encoding="utf-8"))

    assert steady(out / "index.html") == steady(story.page)


@pytest.mark.sqlite_only
def test_spend_buckets_follow_the_span_of_the_history() -> None:
    assert bucket_for(None, None) == DAY
    assert bucket_for(0, 71 * HOUR) == HOUR
    assert bucket_for(0, 72 * HOUR) == DAY
    assert bucket_for(0, 91 * DAY) == DAY
    assert bucket_for(0, 92 * DAY) == WEEK


@pytest.mark.sqlite_only
def test_an_attribute_name_that_could_break_out_is_refused() -> None:
    assert attrs({"data-payee": '"><b>'}) == ' data-payee="&quot;&gt;&lt;b&gt;"'
    with pytest.raises(ValueError, match="not an attribute name"):
        attrs({'data-x" onload="alert(1)': "1"})
    assert attr_name('USD" onload=') == "usd--onload-"


@pytest.mark.sqlite_only
def test_a_log_that_does_not_verify_is_reported_broken_with_exit_1(
    story: Story, tmp_path: Path
) -> None:
    copy = tmp_path / "edited.db"
    with sqlite3.connect(story.store) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:  # an insider edits a record under the checkpoints
        conn.execute("DROP TRIGGER audit_log_no_update")
        conn.execute("UPDATE audit_log SET body = replace(body, 'odd payees', 'odd payers')")
    out = tmp_path / "site"
    run = paywarden(
        "report", "--config", story.config, "--db", copy, "--out", out,
        "--public-key", story.key, env=settings_free_env(),
    )  # fmt: skip
    assert run.returncode == 1 and "audit verify: broken" in run.stdout
    verdict = [e for e in elements((out / "index.html").read_text()) if "data-audit" in e.attrs]
    assert [e.attrs["data-audit"] for e in verdict] == ["broken"]
    assert "BROKEN" in verdict[0].text


@pytest.mark.sqlite_only
def test_a_missing_store_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "site"
    run = paywarden("report", "--db", tmp_path / "none.db", "--out", out, env=settings_free_env())
    assert run.returncode == 1 and "no store at" in run.stderr
    assert not out.exists()


def _edited(story: Story, tmp_path: Path, *statements: str) -> Path:
    """A copy of the story's SQLite store, its audit log's records edited by ``statements``
    (as an insider with the file could)."""
    copy = tmp_path / "edited.db"
    with sqlite3.connect(story.store) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    with sqlite3.connect(copy) as conn:
        conn.execute("DROP TRIGGER audit_log_no_update")
        for sql in statements:
            conn.execute(sql)
    return copy


@pytest.mark.sqlite_only
def test_unreadable_freeze_records_are_left_out_and_the_log_reported_broken(
    story: Story, tmp_path: Path
) -> None:
    copy = _edited(
        story,
        tmp_path,
        # one freeze record no longer JSON, the other's time out of any calendar
        'UPDATE audit_log SET body = replace(body, \'"reason":"odd payees"\', \'"reason":\')'
        " WHERE body LIKE '%odd payees%'",
        "UPDATE audit_log SET body = replace(body, '\"time\":', '\"time\":1000000000000000000000')"
        " WHERE body LIKE '%rotation pending%'",
    )
    out = tmp_path / "site"
    run = paywarden(
        "report", "--config", story.config, "--db", copy, "--out", out,
        "--public-key", story.key, env=settings_free_env(),
    )  # fmt: skip
    assert run.returncode == 1 and "audit verify: broken" in run.stdout, run.stderr
    assert "Traceback" not in run.stderr
    dom = elements((out / "index.html").read_text(encoding="utf-8"))
    assert [e.attrs["data-audit"] for e in dom if "data-audit" in e.attrs] == ["broken"]
    assert [e.attrs["data-unreadable"] for e in dom if "data-unreadable" in e.attrs] == ["1"]
    history = [e for e in _section_rows(dom, "freezes") if "data-at" in e.attrs]
    assert [e.attrs["data-target"] for e in history] == ["payments.v2"]  # agent-2's unread
    assert history[0].attrs["data-at"].startswith("1000000000000000000000")
    assert history[0].attrs["data-at"] in history[0].text  # shown as the number it is


@pytest.mark.sqlite_only
def test_a_spend_total_that_is_no_number_is_an_error_not_a_traceback(
    story: Story, tmp_path: Path
) -> None:
    copy = _edited(story, tmp_path, "UPDATE agent_spend SET total = 'lots'")
    out = tmp_path / "site"
    run = paywarden(
        "report", "--config", story.config, "--db", copy, "--out", out, env=settings_free_env()
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "the store holds a value the report cannot read" in run.stderr
    assert not out.exists()


@pytest.mark.sqlite_only
def test_the_page_and_the_folder_made_for_it_are_the_owners_alone(
    story: Story, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    old = os.umask(0o022)  # the usual one, under which a forced 0644 would show
    try:
        assert main(["report", "--config", str(story.config), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "index.html").stat().st_mode) == 0o600
    assert [p.name for p in out.iterdir()] == ["index.html"]  # nothing left aside


@pytest.mark.sqlite_only
def test_a_bad_public_key_is_a_usage_error_found_before_the_store_is_read(
    story: Story, tmp_path: Path
) -> None:
    not_pem = tmp_path / "key.pem"
    not_pem.write_text("not a key\n", encoding="ascii")
    for key, says in [(not_pem, "holds no PEM public key"), (tmp_path / "none.pem", "cannot read")]:
        out = tmp_path / "site"
        # no store there at all: reading it first would have been exit 1 "no store at"
        run = paywarden(
            "report", "--db", tmp_path / "none.db", "--out", out, "--public-key", key,
            env=settings_free_env(),
        )  # fmt: skip
        assert run.returncode == 2 and says in run.stderr and str(key) in run.stderr
        assert "Traceback" not in run.stderr and not out.exists()
    audit = paywarden(
        "audit", "verify", "--db", story.store, "--public-key", not_pem, env=settings_free_env()
    )
    assert audit.returncode == 2 and "holds no PEM public key" in audit.stderr


@pytest.mark.sqlite_only
def test_an_out_that_cannot_take_the_page_is_exit_3_with_the_reason(
    story: Story, tmp_path: Path
) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder\n", encoding="ascii")
    for out, reason in [(a_file, "File exists"), (a_file / "site", "Not a directory")]:
        run = paywarden("report", "--config", story.config, "--out", out, env=settings_free_env())
        assert run.returncode == 3, run.stderr
        assert f"cannot write the report to {out}: {reason}" in run.stderr
        assert "Traceback" not in run.stderr
    assert a_file.read_text(encoding="ascii") == "not a folder\n"


@pytest.mark.sqlite_only
def test_a_bucket_that_would_draw_too_many_columns_is_coarsened_to_weeks(
    story: Story, tmp_path: Path
) -> None:
    later = 20 * 365 * DAY  # one running total far off: --bucket hour would be ~175,000
    copy = _edited(
        story,
        tmp_path,
        f"UPDATE agent_spend SET at = at + {later} WHERE at = (SELECT MAX(at) FROM agent_spend)",
    )
    with sqlite3.connect(copy) as conn:
        first, last = conn.execute("SELECT MIN(at), MAX(at) FROM agent_spend").fetchone()
    out = tmp_path / "site"
    run = paywarden(
        "report", "--config", story.config, "--db", copy, "--out", out, "--bucket", "hour",
        env=settings_free_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    page = (out / "index.html").read_text(encoding="utf-8")
    weeks = int(re.findall(r"Signed payments, per (\d+) weeks", page)[0])
    assert last // (weeks * WEEK) - first // (weeks * WEEK) < 400  # columns drawn
    assert last // (weeks // 2 * WEEK) - first // (weeks // 2 * WEEK) >= 400  # no coarser


@pytest.mark.sqlite_only
def test_an_asset_of_unknown_decimals_is_shown_in_minor_units(story: Story, tmp_path: Path) -> None:
    copy = _edited(story, tmp_path)
    with sqlite3.connect(copy) as conn:  # BTC renamed to an asset no pack or session knows
        for table in ("agent_spend", "reservations", "decisions", "session_budgets"):
            conn.execute(f"UPDATE {table} SET asset = 'ZZZ' WHERE asset = 'BTC'")
        conn.execute("UPDATE session_budgets SET decimals = NULL WHERE asset = 'ZZZ'")
    out = tmp_path / "site"
    run = paywarden(
        "report", "--config", story.config, "--db", copy, "--out", out, env=settings_free_env()
    )
    assert run.returncode == 0, run.stderr
    dom = elements((out / "index.html").read_text(encoding="utf-8"))
    totals = {
        e.attrs["data-agent"]: e.attrs["data-total"]
        for e in _section_rows(dom, "spend") if e.attrs.get("data-asset") == "ZZZ"
    }  # fmt: skip
    assert totals == {"agent-1": "1150000 (minor units)"}  # 0.0015 + 0.01 BTC, never "1150000"


# Last in the module: it adds a held payment to the story's store.
def test_a_held_payment_whose_approval_expired_is_not_counted_pending(
    story: Story, api: Api, stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = open_session(api.planner, "agent-1", {"USD": "5000.00"})
    held = sign_request(stack, session, amount="260.00", payee="payee-1", expires_in=120).intent
    answer = api.sign(held)
    assert answer.status == signer_pb2.PENDING_APPROVAL
    monkeypatch.setattr(report, "clock", stack.clock.now)  # the report's time is the signer's

    def shown(out: Path) -> tuple[str, dict[str, int], str]:
        args = ["report", "--config", str(story.config), "--out", str(out)]
        assert main(args) == 0
        dom = elements((out / "index.html").read_text(encoding="utf-8"))
        (tile,) = [e for e in dom if e.attrs.get("data-tile") == "approvals pending"]
        table = {
            e.attrs["data-status"]: int(e.attrs["data-count"])
            for e in _section_rows(dom, "approvals") if "data-total-seconds" in e.attrs
        }  # fmt: skip
        (latest,) = [e for e in dom if e.attrs.get("data-approval") == answer.approval_id]
        return tile.text.removeprefix("approvals pending"), table, latest.attrs["data-status"]

    before = shown(tmp_path / "before")
    assert before == ("1", {"approved": 1, "denied": 1, "pending": 1}, "pending")
    stack.clock.advance(121)  # past the payment's expiry: nobody touched the approval
    stored = {a["id"]: a["status"] for a in _export(story, "approvals")}
    assert stored[answer.approval_id] == "pending"  # the store marks it only when touched
    after = shown(tmp_path / "after")
    assert after == ("0", {"approved": 1, "denied": 1, "expired": 1}, "expired")

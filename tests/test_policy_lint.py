"""``paywarden policy lint`` (issue 12, point 5): warnings on broad grants.

The lint is pure (policy/lint.py): a deliberately broad pack gets every code, each
at the field that earns it; a tight pack gets none. With what the store recorded, a
pack whose limits are far above the spend and whose grants are partly unused gets
exactly those warnings.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from paywarden.policy.lint import LintCode, Observed, SignedPayment, lint
from paywarden.policy.packs import PackSet, build_pack_set, load_pack
from paywarden.policy.vocabulary import Asset

from tests.helpers import Pki, TestToken, write_config
from tests.support.cli import paywarden, settings_free_env
from tests.support.clients import running_api, signed
from tests.support.intents import payment_request
from tests.support.sessions import open_session

LINT_ASSETS = {
    "USD": Asset("USD", 2),
    "BTC": Asset("BTC", 8),
    "JPY": Asset("JPY", 0),
    "MAIL": Asset("MAIL", 2, case_insensitive=True),
}
GROUPS = {"everyone": ["agent-1", "agent-2", "agent-3", "agent-4"], "pair": ["agent-1"]}

BROAD = """
id = "broad"
version = 1
groups = ["everyone"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "100"
approval_above = "100"

[assets.BTC]
keys = ["payments.v1"]
max_per_payment = "1"

[payees]
allow_patterns = [".*", ".*@.*"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "100" }
"""

TIGHT = """
id = "tight"
version = 1
agents = ["agent-3"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "50"
daily_limit = "100"
approval_above = "20"

[payees]
allow = ["acme-data"]
allow_patterns = ["vendor-[0-9]{1,6}"]

[sessions]
max_ttl_seconds = 600
max_budget = { USD = "100" }
require_plan = true
"""

LOOSE = """
id = "loose"
version = 1
agents = ["agent-4"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "500"
daily_limit = "1000"
rolling_24h_limit = "2000"
approval_tiers = [{ above = "100", approvers = 1 }, { above = "400", approvers = 2 }]

[assets.JPY]
keys = ["payments.v1"]
max_per_payment = "1000"
daily_limit = "1000"
approval_above = "500"

[payees]
allow = ["acme-data", "globex"]
allow_patterns = ["vendor-[0-9]+", "shop-[a-z]+"]

[sessions]
max_ttl_seconds = 600
max_budget = { USD = "100", JPY = "1000" }
require_plan = true
"""


def _pack_set(tmp_path: Path, **texts: str) -> PackSet:
    packs = []
    for name, text in texts.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        packs.append(load_pack(path))
    return build_pack_set(packs, GROUPS)


def _codes_by_pack(tmp_path: Path, **texts: str) -> dict[str, set[tuple[str, str]]]:
    """{pack id: {(code, path)}} of every pack's warnings (every pack present)."""
    warnings = lint(_pack_set(tmp_path, **texts), LINT_ASSETS)
    assert all(w.message and w.file.endswith(f"{w.pack}.toml") for w in warnings)
    out: dict[str, set[tuple[str, str]]] = {name: set() for name in texts}
    for w in warnings:
        out[w.pack].add((w.code.value, w.path))
    return out


def test_a_broad_pack_gets_every_code_at_its_field(tmp_path: Path) -> None:
    codes = _codes_by_pack(tmp_path, broad=BROAD, tight=TIGHT)
    assert codes["tight"] == set()
    assert codes["broad"] == {
        (LintCode.PATTERN_MATCHES_ANY, "payees.allow_patterns[0]"),
        (LintCode.PATTERN_WIDE, "payees.allow_patterns[1]"),
        (LintCode.NO_DAY_LIMIT, "assets.USD"),
        (LintCode.NO_DAY_LIMIT, "assets.BTC"),
        (LintCode.NO_APPROVAL, "assets.BTC"),
        (LintCode.APPROVAL_UNREACHABLE, "assets.USD.approval_above"),
        (LintCode.SESSION_NO_BUDGET, "sessions.max_budget.BTC"),
        (LintCode.FIRST_PAYMENT_WITHOUT_APPROVAL, "payees.first_payment"),
        (LintCode.SESSION_NO_PLAN, "sessions.require_plan"),
        (LintCode.GROUP_COVERS_EVERY_AGENT, "groups[0]"),
    }


def test_a_tight_pack_gets_none(tmp_path: Path) -> None:
    assert lint(_pack_set(tmp_path, tight=TIGHT), LINT_ASSETS) == []


def test_patterns_are_judged_by_what_they_match_not_how_they_are_written(tmp_path: Path) -> None:
    anything = ("(?s).*", ".+|", "[^\\x00]*", "(.*)(.*)", "(?i)[a-z0-9._:@/+-]*", ".{0,}")
    narrow = ("acme-.*", ".*-acme", "vendor-[0-9]+", "[a-z]{3}", "x.*y.*z", "(?i)ACME-.*")
    for text in anything + narrow:
        pack = TIGHT.replace('"vendor-[0-9]{1,6}"', repr(text).replace("'", '"'))
        warnings = lint(_pack_set(tmp_path, tight=pack), LINT_ASSETS)
        codes = {w.code for w in warnings}
        if text in anything:
            assert codes == {LintCode.PATTERN_MATCHES_ANY}, text
        else:
            assert codes == set(), text


def test_a_pattern_is_read_with_the_case_of_each_asset(tmp_path: Path) -> None:
    """[a-z0-9._:@/+-]* matches every lower-case identifier: on a case-insensitive asset
    that is every identifier, on a case-sensitive one about a fifth of the probes."""
    pattern = '"[a-z0-9._:@/+-]*"'
    sensitive = TIGHT.replace('"vendor-[0-9]{1,6}"', pattern)
    assert {w.code for w in lint(_pack_set(tmp_path, tight=sensitive), LINT_ASSETS)} == set()
    insensitive = sensitive.replace("[assets.USD]", "[assets.MAIL]").replace("{ USD =", "{ MAIL =")
    codes = {w.code for w in lint(_pack_set(tmp_path, tight=insensitive), LINT_ASSETS)}
    assert codes == {LintCode.PATTERN_MATCHES_ANY}


DAY1 = int(dt.datetime(2026, 11, 2, 10, tzinfo=dt.UTC).timestamp())


def _paid(agent: str, asset: str, key: str, payee: str, minor: int, at: int) -> SignedPayment:
    return SignedPayment(agent, asset, key, payee, minor, at)


def test_limits_far_above_spend_and_unused_grants(tmp_path: Path) -> None:
    payments = [
        _paid("agent-4", "USD", "payments.v1", "acme-data", 10_00, DAY1),
        _paid("agent-4", "USD", "payments.v1", "vendor-3", 5_00, DAY1 + 86_400),
        _paid("agent-3", "USD", "payments.v1", "acme-data", 40_00, DAY1),  # another pack's agent
        _paid("agent-3", "JPY", "payments.v1", "globex", 900, DAY1),
    ]
    observed = Observed.of(payments, dt.UTC, 30)
    codes = {
        (w.code, w.path)
        for w in lint(_pack_set(tmp_path, loose=LOOSE), LINT_ASSETS, observed)
        if w.code not in (LintCode.PATTERN_WIDE, LintCode.PATTERN_MATCHES_ANY)
    }
    assert codes == {
        (LintCode.LIMIT_FAR_ABOVE_SPEND, "assets.USD.max_per_payment"),  # 500 > 10 x 10.00
        (LintCode.LIMIT_FAR_ABOVE_SPEND, "assets.USD.daily_limit"),  # 1000 > 10 x 10.00
        (LintCode.LIMIT_FAR_ABOVE_SPEND, "assets.USD.rolling_24h_limit"),  # 2000 > 10 x 15.00
        (LintCode.UNUSED_KEY, "assets.USD.keys[1]"),
        (LintCode.UNUSED_ASSET, "assets.JPY"),  # agent-3 paid JPY: not this pack's agent
        (LintCode.UNUSED_PAYEE, "payees.allow[1]"),
        (LintCode.UNUSED_PATTERN, "payees.allow_patterns[1]"),
    }


def test_a_label_grant_is_used_by_any_of_its_versions(tmp_path: Path) -> None:
    label_pack = LOOSE.replace('keys = ["payments.v1", "payments.v2"]', 'keys = ["payments"]', 1)
    packs = _pack_set(tmp_path, loose=label_pack)
    observed = Observed.of(
        [_paid("agent-4", "USD", "payments.v7", "acme-data", 10_00, DAY1)], dt.UTC, 30
    )
    unused = {w.path for w in lint(packs, LINT_ASSETS, observed) if w.code == LintCode.UNUSED_KEY}
    assert "assets.USD.keys[0]" not in unused
    other = Observed.of(
        [_paid("agent-4", "USD", "refunds.v1", "acme-data", 10_00, DAY1)], dt.UTC, 30
    )
    unused = {w.path for w in lint(packs, LINT_ASSETS, other) if w.code == LintCode.UNUSED_KEY}
    assert "assets.USD.keys[0]" in unused


def test_limits_within_ten_times_the_spend_are_not_far_above(tmp_path: Path) -> None:
    payments = [
        _paid("agent-4", "USD", "payments.v1", "acme-data", 60_00, DAY1),
        _paid("agent-4", "USD", "payments.v2", "vendor-3", 60_00, DAY1 + 3_600),
        _paid("agent-4", "USD", "payments.v1", "globex", 90_00, DAY1 + 86_400),
        _paid("agent-4", "JPY", "payments.v1", "shop-abc", 500, DAY1),
    ]
    observed = Observed.of(payments, dt.UTC, 30)
    warnings = lint(_pack_set(tmp_path, loose=LOOSE), LINT_ASSETS, observed)
    # USD: largest 90 (x10 = 900 >= 500), day 120 (1200 >= 1000), two days 210 (2100 >= 2000);
    # JPY: largest and day 500 (5000 >= 1000).
    assert warnings == []


def test_a_calendar_day_is_the_policys(tmp_path: Path) -> None:
    """Two payments 2 hours apart around midnight UTC: one day in UTC-5, two in UTC."""
    late = int(dt.datetime(2026, 11, 2, 23, tzinfo=dt.UTC).timestamp())
    payments = [
        _paid("agent-4", "USD", "payments.v1", "acme-data", 60_00, late),
        _paid("agent-4", "USD", "payments.v1", "acme-data", 60_00, late + 7_200),
    ]
    utc = Observed.of(payments, dt.UTC, 30)
    ny = Observed.of(payments, dt.timezone(dt.timedelta(hours=-5)), 30)
    assert utc.daily_peak["agent-4", "USD"] == (60_00, "agent-4")
    assert ny.daily_peak["agent-4", "USD"] == (120_00, "agent-4")
    assert utc.two_day_peak["agent-4", "USD"] == (120_00, "agent-4")


# -- the command -------------------------------------------------------------------------

USAGE_PACK = """
id = "usage"
version = 1
agents = ["agent-1"]

[assets.USD]
keys = ["payments.v1", "payments.v2"]
max_per_payment = "500"
daily_limit = "1000"
rolling_24h_limit = "2000"
approval_above = "400"

[assets.JPY]
keys = ["payments.v1"]
max_per_payment = "1000"
daily_limit = "1000"
approval_above = "500"

[payees]
allow = ["acme-data", "globex"]
allow_patterns = ["vendor-[0-9]+", "shop-[a-z]+"]
first_payment = "allow"

[sessions]
max_ttl_seconds = 3600
max_budget = { USD = "100", JPY = "1000" }
"""
EVERYONE = '\n[groups]\neveryone = ["agent-1", "agent-2", "agent-3", "agent-4"]\n'


def _lint_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return paywarden("policy", "lint", *args, env=settings_free_env())


def _json_codes(out: str) -> set[tuple[str, str, str]]:
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(set(r) == {"code", "pack", "file", "path", "message"} for r in rows)
    return {(r["pack"], r["code"], r["path"]) for r in rows}


def test_the_command_exits_1_on_warnings_and_0_on_a_clean_pack(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(
        tmp_path / "broad", token, pki, packs={"broad.toml": BROAD, "tight.toml": TIGHT},
        extra=EVERYONE,
    )  # fmt: skip
    proc = _lint_cli("--config", config, "--no-usage")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for code, path in (
        (LintCode.PATTERN_MATCHES_ANY, "payees.allow_patterns[0]"),
        (LintCode.PATTERN_WIDE, "payees.allow_patterns[1]"),
        (LintCode.NO_DAY_LIMIT, "assets.BTC"),
        (LintCode.NO_APPROVAL, "assets.BTC"),
        (LintCode.APPROVAL_UNREACHABLE, "assets.USD.approval_above"),
        (LintCode.SESSION_NO_BUDGET, "sessions.max_budget.BTC"),
        (LintCode.FIRST_PAYMENT_WITHOUT_APPROVAL, "payees.first_payment"),
        (LintCode.SESSION_NO_PLAN, "sessions.require_plan"),
        (LintCode.GROUP_COVERS_EVERY_AGENT, "groups[0]"),
    ):
        assert f"broad.toml: broad: {code}: {path}: " in proc.stdout
    assert ": tight: " not in proc.stdout
    assert "warning(s) in 2 pack(s)" in proc.stderr
    as_json = _lint_cli("--config", config, "--no-usage", "--json")
    assert as_json.returncode == 1
    assert {c for p, c, _ in _json_codes(as_json.stdout)} == {
        c for c in LintCode if not c.startswith("UNUSED_") and c != LintCode.LIMIT_FAR_ABOVE_SPEND
    }
    clean = write_config(tmp_path / "tight", token, pki, packs={"tight.toml": TIGHT})
    proc = _lint_cli(tmp_path / "tight" / "policy", "--config", clean, "--no-usage")
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert "0 warning(s) in 1 pack(s)" in proc.stderr


def test_the_command_reads_the_spend_the_store_recorded(
    tmp_path: Path, token: TestToken, pki: Pki
) -> None:
    config = write_config(tmp_path, token, pki, packs={"usage.toml": USAGE_PACK})
    missing = _lint_cli("--config", config)
    assert missing.returncode == 2 and "no store at" in missing.stderr
    with running_api(config, pki) as (_srv, api):
        session = open_session(api.planner, "agent-1", {"USD": "100", "JPY": "1000"}, ttl=600)
        for payee, amount in (("acme-data", "10"), ("vendor-3", "5")):
            request = payment_request(session, payee=payee, amount=amount, key_id="payments.v1")
            signed(api.answer(request.intent))
    proc = _lint_cli("--config", config, "--json")
    assert proc.returncode == 1, proc.stderr
    assert _json_codes(proc.stdout) == {
        ("usage", LintCode.LIMIT_FAR_ABOVE_SPEND, "assets.USD.max_per_payment"),  # 500 > 10 x 10
        ("usage", LintCode.LIMIT_FAR_ABOVE_SPEND, "assets.USD.daily_limit"),  # 1000 > 10 x 15
        ("usage", LintCode.LIMIT_FAR_ABOVE_SPEND, "assets.USD.rolling_24h_limit"),  # > 10 x 15
        ("usage", LintCode.UNUSED_KEY, "assets.USD.keys[1]"),
        ("usage", LintCode.UNUSED_ASSET, "assets.JPY"),
        ("usage", LintCode.UNUSED_PAYEE, "payees.allow[1]"),
        ("usage", LintCode.UNUSED_PATTERN, "payees.allow_patterns[1]"),
        ("usage", LintCode.FIRST_PAYMENT_WITHOUT_APPROVAL, "payees.first_payment"),
        ("usage", LintCode.SESSION_NO_PLAN, "sessions.require_plan"),
    }
    text = _lint_cli("--config", config).stdout
    assert (
        "daily_limit 1000 is more than 10x the highest calendar-day spend in the last 30 days"
        " (15.00, agent-1)"
    ) in text
    assert _lint_cli("--config", config, "--days", "0").returncode == 2

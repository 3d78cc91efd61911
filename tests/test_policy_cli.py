"""``paywarden policy check``: validates packs, says what they allow, names bad fields."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.support.cli import policy_check

GOOD = """
id = "research"
version = 2
agents = ["agent-7"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "25.00"
daily_limit = "100.00"

[payees]
allow = ["weather-data-inc"]
allow_patterns = ["[a-z]+\\\\.example\\\\.com"]
first_payment = "approve"

[sessions]
max_ttl_seconds = 900
max_budget = { USD = "200.00" }
"""


DAILY = 'daily_limit = "100.00"'
ALLOW_LINES = 'allow = ["weather-data-inc"]\nallow_patterns = ["[a-z]+\\\\.example\\\\.com"]'


def test_a_good_pack_is_described(tmp_path: Path) -> None:
    pack = tmp_path / "research.toml"
    pack.write_text(GOOD, encoding="utf-8")
    proc = policy_check(pack)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "pack research v2" in out
    assert "agents agent-7" in out
    assert "USD: keys payments.v1; at most 25.00 per payment; 100.00 per calendar day" in out
    assert "allow weather-data-inc" in out and "first payment to a payee: approve" in out
    assert "everything else: denied" in out


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t.replace('version = 2', 'version = 2\nbudget_override = true'),
         "field budget_override"),
        (lambda t: t.replace('daily_limit = "100.00"', 'daily_limit = "100.00"\nmax_per_day = "1"'),
         "field assets.USD.max_per_day"),
        (lambda t: t.replace('max_per_payment = "25.00"', 'max_per_payment = "-25.00"'),
         "field assets.USD.max_per_payment"),
        (lambda t: t.replace(ALLOW_LINES, "allow = []"), "field payees"),
        (lambda t: t.replace('max_ttl_seconds = 900', 'max_ttl_seconds = -1'),
         "field sessions.max_ttl_seconds"),
        (lambda t: t.replace('keys = ["payments.v1"]', 'keys = ["Payments"]'),
         "field assets.USD.keys"),
        (lambda t: t.replace('max_per_payment = "25.00"', 'max_per_payment = "25.001"'),
         "assets.USD.max_per_payment"),
        (lambda t: t.replace('[assets.USD]', '[assets.XYZ]').replace("USD =", "XYZ ="),
         "assets.XYZ"),
        (lambda t: t + '\n[hours]\nstart = "09:00"\nend = "09:00"\n', "field hours"),
        (lambda t: t.replace('USD = "200.00"', 'USD = "200.001"'), "sessions.max_budget.USD"),
        (lambda t: t.replace(DAILY, DAILY + '\napproval_above = "1.001"'),
         "assets.USD.approval_above"),
    ],
    ids=["unknown-top", "unknown-nested", "negative-limit", "empty-allowlist", "negative-ttl",
         "bad-key-id", "finer-than-asset", "unknown-asset", "empty-hours", "approval-too-fine",
         "budget-too-fine"],
)  # fmt: skip
def test_a_bad_pack_fails_naming_the_field(tmp_path: Path, edit: object, field: str) -> None:
    bad = edit(GOOD)  # type: ignore[operator]
    assert bad != GOOD, "the edit did not apply"
    pack = tmp_path / "bad.toml"
    pack.write_text(bad, encoding="utf-8")
    proc = policy_check(pack)
    assert proc.returncode != 0
    assert field in proc.stderr, proc.stderr
    assert str(pack) in proc.stderr


def test_two_packs_claiming_one_agent_fail(tmp_path: Path) -> None:
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(GOOD, encoding="utf-8")
    b.write_text(GOOD.replace('id = "research"', 'id = "other"'), encoding="utf-8")
    proc = policy_check(a, b)
    assert proc.returncode != 0
    assert "agent 'agent-7' is already in pack 'research'" in proc.stderr


def test_not_toml_fails(tmp_path: Path) -> None:
    pack = tmp_path / "broken.toml"
    pack.write_text("id = \n", encoding="utf-8")
    proc = policy_check(pack)
    assert proc.returncode != 0 and "not valid TOML" in proc.stderr


def test_the_dev_pack_is_valid() -> None:
    proc = policy_check(ROOT / "examples" / "policy" / "dev.toml")
    assert proc.returncode == 0, proc.stderr

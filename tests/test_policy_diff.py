"""policy/diff.py: what a change of packs widens or narrows, agent by agent."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from paywarden.policy.context import PolicyContext, diff_context, policy_context, policy_set_sha256
from paywarden.policy.diff import PackChange, PackSetDiff, diff_pack_sets
from paywarden.policy.packs import PackSet, PolicyPack, PolicyPackModel, build_pack_set
from paywarden.policy.vocabulary import Asset, Direction

from tests.support.cli import paywarden, policy_check, settings_free_env

W, N, NEUTRAL = Direction.WIDENS, Direction.NARROWS, Direction.NEUTRAL


def _base(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "shop",
        "version": 1,
        "agents": ["agent-1"],
        "assets": {
            "USD": {
                "keys": ["payments.v1"],
                "max_per_payment": "100.00",
                "daily_limit": "500.00",
                "approval_above": "50.00",
                "approval_tiers": [{"above": "80.00", "approvers": 2}],
            }
        },
        "payees": {"allow": ["api.example"], "deny": ["evil.example"]},
        "velocity": {"max_payments": 30, "window_seconds": 3600},
        "hours": {"start": "08:00", "end": "18:00"},
        "sessions": {"max_ttl_seconds": 3600, "max_budget": {"USD": "200.00"}},
    }
    doc.update(over)
    return doc


def _diff_pack(doc: dict[str, Any]) -> PolicyPack:
    model = PolicyPackModel.model_validate(doc)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return PolicyPack(model, digest, f"{model.id}.toml")


def _set(*docs: dict[str, Any], groups: dict[str, list[str]] | None = None) -> PackSet:
    return build_pack_set([_diff_pack(d) for d in docs], groups or {})


def _diff(old: dict[str, Any], new: dict[str, Any]) -> PackSetDiff:
    return diff_pack_sets(_set(old), _set(new))


def _found(diff: PackSetDiff) -> set[tuple[str, Direction]]:
    return {(c.field, c.direction) for c in diff.changes}


def _usd(**over: Any) -> dict[str, Any]:
    doc = _base()
    doc["assets"]["USD"].update(over)
    return doc


def test_an_unchanged_set_has_no_changes() -> None:
    diff = _diff(_base(), _base())
    assert diff.changes == () and not diff.widens


def test_a_higher_max_per_payment_widens_and_a_lower_narrows() -> None:
    up = _diff(_base(), _usd(max_per_payment="150.00"))
    assert up.changes == (
        PackChange(
            "agent agent-1", "assets.USD.max_per_payment", W, "raised from 100.00 to 150.00"
        ),
    )
    down = _diff(_base(), _usd(max_per_payment="99.99"))
    assert _found(down) == {("assets.USD.max_per_payment", N)} and not down.widens


def test_the_same_amount_written_otherwise_is_no_change() -> None:
    assert _diff(_base(), _usd(max_per_payment="100.0")).changes == ()


def test_a_removed_daily_limit_widens_and_an_added_rolling_limit_narrows() -> None:
    diff = _diff(_base(), _usd(daily_limit=None, rolling_24h_limit="700.00"))
    assert _found(diff) == {("assets.USD.daily_limit", W), ("assets.USD.rolling_24h_limit", N)}


def test_a_higher_approval_threshold_or_fewer_approvers_widens() -> None:
    raised = _diff(_base(), _usd(approval_above="60.00"))
    assert [(c.direction, c.description) for c in raised.changes] == [
        (W, "payments above 50.00 up to 60.00 need 0 approval(s) instead of 1")
    ]
    fewer = _diff(_base(), _usd(approval_tiers=[{"above": "80.00", "approvers": 1}]))
    assert [(c.direction, c.description) for c in fewer.changes] == [
        (W, "payments above 80.00 need 1 approval(s) instead of 2")
    ]
    more = _diff(_base(), _usd(approval_tiers=[{"above": "70.00", "approvers": 3}]))
    assert _found(more) == {("assets.USD.approvals", N)}


def test_new_keys_assets_payees_and_patterns_widen() -> None:
    doc = _usd(keys=["payments.v1", "payments.v2"])
    doc["assets"]["EUR"] = {"keys": ["payments.v1"], "max_per_payment": "10"}
    doc["payees"] = {"allow": ["api.example", "new.example"], "allow_patterns": [".+"]}
    diff = _diff(_base(), doc)
    assert _found(diff) == {
        ("assets.USD.keys", W),
        ("assets.EUR", W),
        ("payees.allow", W),
        ("payees.allow_patterns", W),
        ("payees.deny", W),  # evil.example is no longer denied
    }
    assert all(c.subject == "agent agent-1" for c in diff.changes)


def test_removed_payees_and_assets_and_added_denials_narrow() -> None:
    doc = _base(payees={"allow": ["api.example", "b.example"], "deny": ["evil.example", "x"]})
    diff = _diff(_base(), doc)
    assert _found(diff) == {("payees.allow", W), ("payees.deny", N)}
    back = _diff(doc, _base())
    assert _found(back) == {("payees.allow", N), ("payees.deny", W)}


def test_session_limits_velocity_hours_and_breaker() -> None:
    doc = _base(
        velocity={"max_payments": 40, "window_seconds": 7200},
        hours={"start": "07:00", "end": "17:00"},
        breaker={"window_seconds": 600, "max_rejections": 5},
        sessions={"max_ttl_seconds": 7200, "max_budget": {"USD": "100.00"}, "require_plan": True},
    )
    diff = _diff(_base(), doc)
    assert _found(diff) == {
        ("velocity.max_payments", W),
        ("velocity.window_seconds", N),
        ("hours", W),
        ("hours", N),
        ("breaker", N),
        ("sessions.max_ttl_seconds", W),
        ("sessions.max_budget.USD", N),
        ("sessions.require_plan", N),
    }
    hours = {c.direction: c.description for c in diff.changes if c.field == "hours"}
    assert hours == {W: "now also allowed 07:00-08:00", N: "no longer allowed 17:00-18:00"}


def test_an_agent_newly_covered_widens_and_one_no_longer_covered_narrows() -> None:
    other = _base(id="other", agents=["agent-2"])
    diff = diff_pack_sets(_set(_base()), _set(_base(agents=["agent-2"])))
    assert {(c.subject, c.field, c.direction) for c in diff.changes} == {
        ("agent agent-1", "pack", N),
        ("agent agent-2", "pack", W),
    }
    moved = diff_pack_sets(_set(_base(), other), _set(_base(agents=["agent-1", "agent-2"])))
    assert ("agent agent-2", "id", NEUTRAL) in {
        (c.subject, c.field, c.direction) for c in moved.changes
    }


def test_groups_resolve_as_the_engine_resolves_them() -> None:
    groups = {"team": ["agent-7", "agent-8"]}
    old = _set(_base(agents=[], groups=["team"]), groups=groups)
    new = _set(
        _base(agents=[], groups=["team"]),
        _base(id="solo", agents=["agent-8"], assets={"USD": {"keys": ["payments.v1"],
              "max_per_payment": "500.00"}}),
        groups=groups,
    )  # fmt: skip
    by = diff_pack_sets(old, new).by_subject()
    assert set(by) == {"agent agent-8"}  # agent-7 still has the group's pack
    assert ("assets.USD.max_per_payment", W) in {
        (c.field, c.direction) for c in by["agent agent-8"]
    }


def test_a_dropped_second_operator_requirement_widens_and_needs_one() -> None:
    old = _base(widening_needs_second_operator=True)
    dropped = _diff(old, _base())
    assert _found(dropped) == {("widening_needs_second_operator", W)}
    assert dropped.needs_second_operator  # the running pack asks for it
    assert not _diff(_base(), _usd(max_per_payment="200")).needs_second_operator
    # The new pack alone asking for it is enough as well.
    newly = _diff(_base(), {**_usd(max_per_payment="200"), "widening_needs_second_operator": True})
    assert newly.widens and newly.needs_second_operator
    # A narrowing reload never needs one.
    lower = {**_usd(max_per_payment="90"), "widening_needs_second_operator": True}
    narrowed = _diff(old, lower)
    assert narrowed.changes and not narrowed.widens and not narrowed.needs_second_operator


def test_removing_a_guard_needs_a_second_operator_so_two_steps_cannot_bypass_it() -> None:
    guarded = _base(widening_needs_second_operator=True)
    other = _base(id="other", agents=["agent-9"])
    wide = _usd(max_per_payment="9000.00")  # unguarded, 90 times the limit
    guard = ("agent agent-1", "widening_needs_second_operator", W)
    # Step 1 removes the guarded pack: agent-1 uncovered (a narrowing) but unguarded.
    removed = diff_pack_sets(_set(guarded, other), _set(other))
    assert guard in {(c.subject, c.field, c.direction) for c in removed.changes}
    assert removed.widens and removed.needs_second_operator
    (change,) = [c for c in removed.changes if c.field == "widening_needs_second_operator"]
    assert change.description.startswith("second-operator guard removed (was pack shop)")
    # Step 2 alone would then go through: that is why step 1 is held.
    assert not diff_pack_sets(_set(other), _set(wide, other)).needs_second_operator
    # The same through a group: unbinding it from the guarded pack.
    groups = {"vip": ["agent-3"], "ops": ["agent-4"]}
    bound = _set(_base(agents=[], groups=["vip"], widening_needs_second_operator=True), other,
                 groups=groups)  # fmt: skip
    unbound = _set(_base(agents=[], groups=["ops"], widening_needs_second_operator=True), other,
                   groups=groups)  # fmt: skip
    ungrouped = diff_pack_sets(bound, unbound)
    assert ("agent agent-3", "widening_needs_second_operator", W) in {
        (c.subject, c.field, c.direction) for c in ungrouped.changes
    }
    assert ungrouped.needs_second_operator
    # Moving the agent to another guarded pack keeps the guard: no such change.
    kept = diff_pack_sets(
        _set(guarded, other),
        _set(_base(id="shop2", widening_needs_second_operator=True), other),
    )
    assert not [c for c in kept.changes if c.field == "widening_needs_second_operator"]


def test_the_first_payment_mode_orders_deny_approve_allow() -> None:
    approve = _base(payees={**_base()["payees"], "first_payment": "approve"})
    allow = _base(payees={**_base()["payees"], "first_payment": "allow"})
    assert _found(_diff(_base(), approve)) == {("payees.first_payment", W)}
    assert _found(_diff(allow, approve)) == {("payees.first_payment", N)}


# -- properties ----------------------------------------------------------------------

_AMOUNTS = st.sampled_from(["1", "5.00", "10", "50.5", "100", "1000"])


@st.composite
def _docs(draw: st.DrawFn) -> dict[str, Any]:
    def maybe(strategy: st.SearchStrategy[Any]) -> Any:
        return draw(st.one_of(st.none(), strategy))

    assets = {}
    for code in draw(st.sets(st.sampled_from(["USD", "EUR"]), min_size=1)):
        assets[code] = {
            "keys": draw(st.lists(st.sampled_from(["payments.v1", "payments.v2"]), min_size=1,
                                  max_size=2, unique=True)),
            "max_per_payment": draw(_AMOUNTS),
            "daily_limit": maybe(_AMOUNTS),
            "rolling_24h_limit": maybe(_AMOUNTS),
            "approval_above": maybe(_AMOUNTS),
            "approval_tiers": draw(st.lists(st.fixed_dictionaries(
                {"above": _AMOUNTS, "approvers": st.integers(1, 3)}), max_size=2)),
        }  # fmt: skip
    names = st.sampled_from(["a.example", "b.example", "c.example"])
    doc: dict[str, Any] = {
        "id": draw(st.sampled_from(["p", "q"])),
        "version": 1,
        "agents": draw(st.lists(st.sampled_from(["agent-1", "agent-2"]), min_size=1, unique=True)),
        "assets": assets,
        "payees": {
            "allow": draw(st.lists(names, min_size=1, unique=True)),
            "deny": draw(st.lists(names, unique=True)),
            "deny_patterns": draw(st.lists(st.sampled_from(["x.*", "y.*"]), unique=True)),
            "first_payment": draw(st.sampled_from(["deny", "approve", "allow"])),
        },
        "velocity": maybe(st.fixed_dictionaries(
            {"max_payments": st.integers(1, 3), "window_seconds": st.sampled_from([60, 3600])})),
        "diversity": {"max_payees_per_day": maybe(st.integers(1, 3))},
        "hours": maybe(st.fixed_dictionaries({"start": st.sampled_from(["08:00", "22:00"]),
                                              "end": st.sampled_from(["06:00", "18:00"])})),
        "breaker": maybe(st.fixed_dictionaries({"window_seconds": st.sampled_from([60, 600]),
                                                "max_rejections": st.none() | st.integers(0, 3)})),
        "sessions": {
            "max_ttl_seconds": draw(st.sampled_from([60, 3600])),
            "max_budget": {c: draw(_AMOUNTS) for c in assets if draw(st.booleans())},
            "require_plan": draw(st.booleans()),
        },
        "widening_needs_second_operator": draw(st.booleans()),
    }  # fmt: skip
    return {k: v for k, v in doc.items() if v is not None}


def _flipped(changes: tuple[PackChange, ...]) -> Counter[tuple[str, str, Direction]]:
    flip = {W: N, N: W, NEUTRAL: NEUTRAL}
    return Counter((c.subject, c.field, flip[c.direction]) for c in changes)


@settings(max_examples=150, deadline=None)
@given(_docs())
def test_a_set_against_itself_changes_nothing(doc: dict[str, Any]) -> None:
    assert diff_pack_sets(_set(doc), _set(doc)).changes == ()


@settings(max_examples=300, deadline=None)
@given(_docs(), _docs())
def test_swapping_old_and_new_swaps_widening_and_narrowing(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    forward, backward = diff_pack_sets(_set(a), _set(b)), diff_pack_sets(_set(b), _set(a))
    assert _flipped(forward.changes) == Counter(
        (c.subject, c.field, c.direction) for c in backward.changes
    )


# -- paywarden policy diff -------------------------------------------------------------

PACK_TEXT = """
id = "research"
version = 1
agents = ["agent-7"]

[assets.USD]
keys = ["payments.v1"]
max_per_payment = "25.00"
daily_limit = "100.00"

[payees]
allow = ["weather-data-inc"]

[sessions]
max_ttl_seconds = 900
max_budget = { USD = "200.00" }
"""


def _diff_cli(tmp_path: Path, old: str, new: str, *extra: str) -> CompletedProcess[str]:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "research.toml").write_text(old, encoding="utf-8")
    (tmp_path / "new.toml").write_text(new, encoding="utf-8")
    return paywarden(
        "policy", "diff", tmp_path / "old", tmp_path / "new.toml", *extra,
        env=settings_free_env(),
    )  # fmt: skip


def test_the_diff_command_exits_1_and_lists_what_widens(tmp_path: Path) -> None:
    new = PACK_TEXT.replace('"25.00"', '"40.00"').replace('daily_limit = "100.00"\n', "")
    proc = _diff_cli(tmp_path, PACK_TEXT, new)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[2:] == [
        "agent agent-7:",
        "  WIDENS   assets.USD.max_per_payment: raised from 25.00 to 40.00",
        "  WIDENS   assets.USD.daily_limit: limit removed (was 100.00)",
        "2 change(s), 2 widening",
    ]


def test_the_diff_command_exits_0_when_nothing_widens(tmp_path: Path) -> None:
    new = PACK_TEXT.replace('"25.00"', '"20.00"').replace("version = 1", "version = 2")
    proc = _diff_cli(tmp_path, PACK_TEXT, new, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["widens"] is False and out["needs_second_operator"] is False
    assert [(c["field"], c["direction"]) for c in out["changes"]] == [
        ("version", "neutral"),
        ("assets.USD.max_per_payment", "narrows"),
    ]
    assert out["old"]["sha256"] != out["new"]["sha256"]
    same = paywarden("policy", "diff", tmp_path / "new.toml", tmp_path / "new.toml")
    assert same.returncode == 0 and "no change to any agent's power" in same.stdout


def test_the_diff_command_exits_2_on_an_invalid_pack(tmp_path: Path) -> None:
    proc = _diff_cli(tmp_path, PACK_TEXT, PACK_TEXT.replace('"25.00"', '"-1"'))
    assert proc.returncode == 2
    assert "new.toml: field assets.USD.max_per_payment" in proc.stderr
    assert proc.stdout == ""


def test_policy_check_says_a_pack_guards_its_widening(tmp_path: Path) -> None:
    pack = tmp_path / "research.toml"
    pack.write_text(
        PACK_TEXT.replace("version = 1", "version = 1\nwidening_needs_second_operator = true"),
        "utf-8",
    )
    proc = policy_check(pack)
    assert proc.returncode == 0, proc.stderr
    assert "  reloads: one that widens this pack waits for a second operator" in proc.stdout
    pack.write_text(PACK_TEXT, "utf-8")
    assert "reloads:" not in policy_check(pack).stdout


def test_the_set_hash_covers_the_context_and_a_looser_asset_widens() -> None:
    guarded = _set(_base(agents=[], groups=["team"], widening_needs_second_operator=True),
                   groups={"team": ["agent-1"]})  # fmt: skip
    moved = _set(_base(agents=[], groups=["team"], widening_needs_second_operator=True),
                 groups={"team": ["agent-1", "agent-2"]})  # fmt: skip
    usd = {"USD": Asset("USD", 2)}
    base = policy_context(guarded, usd, "UTC")
    assert base.groups == {"team": ("agent-1",)}
    assert PolicyContext.from_json(base.as_json()) == base
    hashes = {
        policy_set_sha256(guarded, base),
        policy_set_sha256(moved, policy_context(moved, usd, "UTC")),
        policy_set_sha256(guarded, policy_context(guarded, usd, "Europe/Paris")),
        policy_set_sha256(guarded, policy_context(guarded, {"USD": Asset("USD", 3)}, "UTC")),
        policy_set_sha256(guarded, policy_context(guarded, {"USD": Asset("USD", 2, True)}, "UTC")),
    }
    assert len(hashes) == 5
    looser = policy_context(guarded, {"USD": Asset("USD", 2, True)}, "UTC")
    widened = diff_context(guarded, guarded, base, looser)
    assert [(c.subject, c.field, c.direction) for c in widened.changes] == [
        ("agent agent-1", "assets.USD.case_insensitive_payees", W)
    ]
    assert widened.needs_second_operator
    back = diff_context(guarded, guarded, looser, base)
    assert not back.widens and not back.needs_second_operator
    assert diff_context(guarded, guarded, base, base).changes == ()

"""Property tests: random packs and payment sequences against a reference model.

A small simulator plays a sequence of payments through the compiled pack, one
session, building each payment's :class:`Facts` from the history of *allowed*
payments the way the signer's store does. A reference model, written
independently of the rules, says which limits a set of payments breaks. The
engine must never let an accepted sequence break a limit, and must never deny a
payment that breaks none (with first payments allowed and no approval
thresholds, nothing else can deny).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paywarden.policy import (
    AgentFacts,
    AllOf,
    Asset,
    Facts,
    Outcome,
    PolicyPack,
    SessionFacts,
    Verdict,
    check_session,
    compile_pack,
    evaluate,
    load_pack,
    normalise,
)
from paywarden.policy.packs import PolicyPackModel
from paywarden.policy.payees import skeleton
from paywarden.policy.vocabulary import Phase, SessionState

DAY = 86_400
START = 1_767_225_600  # 2026-01-01T00:00:00Z, a UTC midnight
ASSETS = {"USD": Asset("USD", decimals=2, case_insensitive=True)}
PAYEES = ("alpha.example", "bravo.example", "charlie.example", "delta.example", "echo.example")
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- random packs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """A pack's limits in minor units; None: the pack sets no such limit."""

    per_payment: int
    daily: int | None
    rolling_24h: int | None
    velocity: tuple[int, int] | None  # (max payments, window seconds)
    session_payees: int | None
    daily_payees: int | None
    pack_budget: int  # sessions.max_budget
    session_budget: int  # what the planner gave this session (within the pack's)
    approval: tuple[tuple[int, int], ...] = ()  # ((above, approvers), ...)


def decimal(minor: int) -> str:
    whole, cents = divmod(minor, 100)
    return str(whole) if cents == 0 else f"{whole}.{cents:02d}"


def pack_toml(limits: Limits) -> str:
    lines = [
        'id = "random-pack"',
        "version = 1",
        'agents = ["agent-1"]',
        "",
        "[assets.USD]",
        'keys = ["payments.v1"]',
        f'max_per_payment = "{decimal(limits.per_payment)}"',
    ]
    if limits.daily is not None:
        lines.append(f'daily_limit = "{decimal(limits.daily)}"')
    if limits.rolling_24h is not None:
        lines.append(f'rolling_24h_limit = "{decimal(limits.rolling_24h)}"')
    for above, approvers in limits.approval:
        lines += [
            "[[assets.USD.approval_tiers]]",
            f'above = "{decimal(above)}"',
            f"approvers = {approvers}",
        ]
    lines += [
        "",
        "[payees]",
        "allow = [" + ", ".join(f'"{p}"' for p in PAYEES) + "]",
        'first_payment = "allow"',
    ]
    if limits.velocity is not None:
        n, window = limits.velocity
        lines += ["[velocity]", f"max_payments = {n}", f"window_seconds = {window}"]
    lines.append("[diversity]")
    if limits.session_payees is not None:
        lines.append(f"max_payees_per_session = {limits.session_payees}")
    if limits.daily_payees is not None:
        lines.append(f"max_payees_per_day = {limits.daily_payees}")
    lines += [
        "[sessions]",
        f"max_ttl_seconds = {30 * DAY}",
        f'max_budget = {{ USD = "{decimal(limits.pack_budget)}" }}',
    ]
    return "\n".join(lines) + "\n"


def load_random_pack(limits: Limits) -> PolicyPack:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.toml"
        path.write_text(pack_toml(limits), encoding="utf-8")
        return load_pack(path)


@st.composite
def limits_strategy(draw: st.DrawFn, *, approval: bool = False) -> Limits:
    # Half the packs are roomy in amounts, so that the counting limits (velocity,
    # diversity) are the ones that bind.
    roomy = draw(st.booleans())
    amount = st.integers(1, 600) | st.integers(1, 5_000)
    if roomy:
        amount = st.integers(6_000, 10_000)
    pack_budget = draw(
        st.integers(200_000, 500_000) if roomy else st.integers(1, 10_000) | st.integers(1, 100_000)
    )
    tiers: tuple[tuple[int, int], ...] = ()
    if approval:
        tiers = tuple(
            draw(
                st.lists(
                    st.tuples(st.integers(0, 5_000), st.integers(1, 10)),
                    max_size=3,
                    unique_by=lambda t: t[0],
                )
            )
        )
    return Limits(
        per_payment=draw(amount),
        daily=draw(
            st.none() | (st.integers(180_000, 200_000) if roomy else st.integers(1, 15_000))
        ),
        rolling_24h=draw(
            st.none() | (st.integers(180_000, 200_000) if roomy else st.integers(1, 20_000))
        ),
        velocity=draw(st.none() | st.tuples(st.integers(1, 6), st.integers(1, 4 * 3600))),
        session_payees=draw(st.none() | st.integers(1, 5)),
        daily_payees=draw(st.none() | st.integers(1, 5)),
        pack_budget=pack_budget,
        session_budget=draw(st.just(pack_budget) | st.integers(1, pack_budget)),
        approval=tiers,
    )


@dataclass(frozen=True)
class Payment:
    t: int
    amount: int
    payee: str
    fill: int | None = None  # if set: the amount is the headroom left plus this (-1, 0, +1)


@st.composite
def payments_strategy(draw: st.DrawFn) -> list[Payment]:
    steps = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    st.just(0),
                    st.integers(1, 120),
                    st.integers(1, 900),
                    st.integers(900, 6 * 3600),
                    st.integers(6 * 3600, DAY + 3600),
                ),
                st.one_of(st.integers(1, 400), st.integers(1, 6_000)),
                st.sampled_from(PAYEES),
                st.none() | st.none() | st.sampled_from([-1, 0, 0, 1]),
            ),
            min_size=1,
            max_size=30,
        )
    )
    # often just before a UTC midnight, so that sequences cross into a new calendar day
    t = START + draw(st.integers(0, DAY - 1) | st.integers(DAY - 1800, DAY - 1))
    out = []
    for step, amount, payee, fill in steps:
        t += step
        out.append(Payment(t, amount, payee, fill))
    return out


def resolve(limits: Limits, history: list[Payment], p: Payment) -> Payment:
    """Aims a payment at, just below or just above the tightest amount limit left."""
    if p.fill is None:
        return p
    room = [limits.per_payment, limits.session_budget - sum(q.amount for q in history)]
    if limits.daily is not None:
        room.append(limits.daily - sum(q.amount for q in history if q.t // DAY == p.t // DAY))
    if limits.rolling_24h is not None:
        room.append(limits.rolling_24h - sum(q.amount for q in history if q.t > p.t - DAY))
    return Payment(p.t, max(1, min(room) + p.fill), p.payee)


# -- the simulator: facts from the history of allowed payments, as the signer reads them ----


def simulate_facts(limits: Limits, allowed: list[Payment], p: Payment) -> Facts:
    now = p.t
    day_start = now - now % DAY  # policy time zone: UTC
    window = limits.velocity[1] if limits.velocity else 0
    payee = normalise(p.payee, case_insensitive=True)
    session_payees = frozenset(a.payee for a in allowed)
    today = frozenset(a.payee for a in allowed if a.t >= day_start)
    return Facts(
        now=now,
        minute_of_day=(now % DAY) // 60,
        agent_id="agent-1",
        payee=payee,
        asset="USD",
        amount_minor=p.amount,
        key_id="payments.v1",
        decimals=2,
        session=SessionFacts(
            session_id="s-1",
            agent_id="agent-1",
            state=SessionState.OPEN,
            phase=Phase.NORMAL,
            expires_at=START + 30 * DAY,
            budgets_minor={"USD": limits.session_budget},
            spent_minor={"USD": sum(a.amount for a in allowed)},
            allowed_payees=frozenset(),
            payees=len(session_payees),
            payee_seen=payee in session_payees,
        ),
        agent=AgentFacts(
            spent_24h_minor=sum(a.amount for a in allowed if a.t > now - DAY),
            spent_today_minor=sum(a.amount for a in allowed if a.t >= day_start),
            payments_in_window=sum(1 for a in allowed if a.t > now - window),
            payee_paid_before=any(a.payee == payee for a in allowed),
            payees_today=len(today),
            payee_seen_today=payee in today,
        ),
    )


# -- the reference model ----------------------------------------------------------------------

REASON_TO_LIMIT = {
    "AMOUNT_ABOVE_MAX": "per_payment",
    "DAILY_LIMIT_EXCEEDED": "daily",
    "ROLLING_LIMIT_EXCEEDED": "rolling_24h",
    "VELOCITY_EXCEEDED": "velocity",
    "SESSION_DIVERSITY_EXCEEDED": "session_payees",
    "DAILY_DIVERSITY_EXCEEDED": "daily_payees",
    "BUDGET_EXCEEDED": "session_budget",
}


def broken_limits(limits: Limits, payments: list[Payment]) -> set[str]:
    """Every limit that this set of payments (all in one session) breaks."""
    broken = set()
    if any(p.amount > limits.per_payment for p in payments):
        broken.add("per_payment")
    if sum(p.amount for p in payments) > limits.session_budget:
        broken.add("session_budget")
    if limits.session_payees is not None and len({p.payee for p in payments}) > (
        limits.session_payees
    ):
        broken.add("session_payees")
    spent_by_day: dict[int, int] = defaultdict(int)
    payees_by_day: dict[int, set[str]] = defaultdict(set)
    for p in payments:
        spent_by_day[p.t // DAY] += p.amount
        payees_by_day[p.t // DAY].add(p.payee)
    if limits.daily is not None and any(s > limits.daily for s in spent_by_day.values()):
        broken.add("daily")
    if limits.daily_payees is not None and any(
        len(s) > limits.daily_payees for s in payees_by_day.values()
    ):
        broken.add("daily_payees")
    # A sliding window holds the most when it ends at a payment: check those windows.
    for end in {p.t for p in payments}:
        in_day = [p for p in payments if end - DAY < p.t <= end]
        if limits.rolling_24h is not None and sum(p.amount for p in in_day) > limits.rolling_24h:
            broken.add("rolling_24h")
        if limits.velocity is not None:
            n, window = limits.velocity
            if sum(1 for p in payments if end - window < p.t <= end) > n:
                broken.add("velocity")
    return broken


def compiled_limits(limits: Limits) -> tuple[PolicyPack, AllOf]:
    pack = load_random_pack(limits)
    # the session the simulator uses is one the pack lets a planner open
    assert (
        check_session(pack, ASSETS, {"USD": limits.session_budget}, 3600, [], plan_bound=False)
        is None
    )
    return pack, compile_pack(pack, ASSETS)


def play(limits: Limits, policy: AllOf, payments: list[Payment]) -> list[Payment]:
    """Plays the sequence; returns the allowed payments, checking each decision."""
    allowed: list[Payment] = []
    for p in payments:
        p = resolve(limits, allowed, p)
        decision = evaluate(policy, simulate_facts(limits, allowed, p))
        assert len(decision.trace) == len(policy.rules)
        denying = {r.reason for r in decision.trace if r.outcome is Outcome.DENY}
        unexpected = denying - set(REASON_TO_LIMIT)
        assert not unexpected, (unexpected, decision.trace_json())
        engine_says = {REASON_TO_LIMIT[r] for r in denying}
        model_says = broken_limits(limits, [*allowed, p])
        if decision.verdict is Verdict.ALLOW:
            assert not model_says, (p, model_says, allowed)
            allowed.append(p)
        else:
            # no false denials: every rule that denied names a limit the payment breaks,
            # and every limit the payment would break has a rule that denied
            assert decision.verdict is Verdict.DENY, decision
            assert model_says, (p, decision.trace_json())
            assert engine_says == model_says, (p, engine_says, model_says)
            assert REASON_TO_LIMIT[decision.reason] in model_says
    return allowed


@SETTINGS
@given(limits=limits_strategy(), payments=payments_strategy())
def test_engine_matches_the_reference_model(limits: Limits, payments: list[Payment]) -> None:
    pack, policy = compiled_limits(limits)
    assert pack.model.payees.first_payment == "allow"
    allowed = play(limits, policy, payments)
    # no accepted sequence ever exceeds a limit: check every prefix of what was accepted
    for i in range(1, len(allowed) + 1):
        assert broken_limits(limits, allowed[:i]) == set(), allowed[:i]
    # and spelled out, limit by limit, over the accepted payments
    assert all(p.amount <= limits.per_payment for p in allowed)
    assert sum(p.amount for p in allowed) <= limits.session_budget
    if limits.session_payees is not None:
        assert len({p.payee for p in allowed}) <= limits.session_payees
    for p in allowed:
        same_day = [q for q in allowed if q.t // DAY == p.t // DAY]
        if limits.daily is not None:
            assert sum(q.amount for q in same_day) <= limits.daily
        if limits.daily_payees is not None:
            assert len({q.payee for q in same_day}) <= limits.daily_payees
        if limits.rolling_24h is not None:
            assert sum(q.amount for q in allowed if p.t - DAY < q.t <= p.t) <= limits.rolling_24h
        if limits.velocity is not None:
            n, window = limits.velocity
            assert sum(1 for q in allowed if p.t - window < q.t <= p.t) <= n


@SETTINGS
@given(limits=limits_strategy(approval=True), payments=payments_strategy())
def test_approval_only_within_limits_and_by_the_largest_tier(
    limits: Limits, payments: list[Payment]
) -> None:
    """With approval tiers: a payment needs approval exactly when it breaks no limit and
    is above a tier's threshold, and then by the largest number of approvers asked."""
    _pack, policy = compiled_limits(limits)
    history: list[Payment] = []
    for p in payments:
        p = resolve(limits, history, p)
        decision = evaluate(policy, simulate_facts(limits, history, p))
        broken = broken_limits(limits, [*history, p])
        needed = [k for above, k in limits.approval if p.amount > above]
        if broken:
            assert decision.verdict is Verdict.DENY
        elif needed:
            assert decision.verdict is Verdict.NEEDS_APPROVAL
            assert decision.approvers == max(needed)
            assert decision.reason == "AMOUNT_NEEDS_APPROVAL"
        else:
            assert decision.verdict is Verdict.ALLOW
        if decision.verdict is not Verdict.DENY:
            history.append(p)  # a pending approval reserves the amount against every limit


@SETTINGS
@given(limits=limits_strategy())
def test_pack_round_trips_through_toml(limits: Limits) -> None:
    """The TOML the tests write is the pack they mean (so the model above is the pack's)."""
    pack = load_random_pack(limits)
    model = PolicyPackModel.model_validate(
        {
            "id": "random-pack",
            "version": 1,
            "agents": ["agent-1"],
            "assets": {
                "USD": {
                    "keys": ["payments.v1"],
                    "max_per_payment": decimal(limits.per_payment),
                    **({"daily_limit": decimal(limits.daily)} if limits.daily else {}),
                    **(
                        {"rolling_24h_limit": decimal(limits.rolling_24h)}
                        if limits.rolling_24h
                        else {}
                    ),
                }
            },
            "payees": {"allow": list(PAYEES), "first_payment": "allow"},
            **(
                {
                    "velocity": {
                        "max_payments": limits.velocity[0],
                        "window_seconds": limits.velocity[1],
                    }
                }
                if limits.velocity
                else {}
            ),
            "diversity": {
                "max_payees_per_session": limits.session_payees,
                "max_payees_per_day": limits.daily_payees,
            },
            "sessions": {
                "max_ttl_seconds": 30 * DAY,
                "max_budget": {"USD": decimal(limits.pack_budget)},
            },
        }
    )
    assert pack.model == model
    direct = compile_pack(PolicyPack(model, pack.sha256, "direct"), ASSETS)
    assert [r.name for r in direct.rules] == [r.name for r in compile_pack(pack, ASSETS).rules]


# -- look-alike payees -----------------------------------------------------------------------

_SWAPS = {
    "a": ["\u0430", "\u03b1", "@"],  # Cyrillic a, Greek alpha, at sign
    "c": ["\u0441"],  # Cyrillic es
    "e": ["\u0435"],  # Cyrillic ie
    "o": ["\u043e", "\u03bf", "0"],  # Cyrillic o, Greek omicron, zero
    "p": ["\u0440"],  # Cyrillic er
    "l": ["1", "I"],
    "m": ["rn"],
    "s": ["5", "\u0455"],  # five, Cyrillic dze
    "-": ["\u2010", "\u2013"],  # hyphen, en dash
}


@st.composite
def lookalike_pair(draw: st.DrawFn) -> tuple[str, str]:
    allowed = draw(st.text(alphabet="acdeoplmsx-", min_size=1, max_size=12))
    positions = [i for i, ch in enumerate(allowed) if ch in _SWAPS]
    if not positions:
        allowed += "a"
        positions = [len(allowed) - 1]
    chosen = draw(st.sets(st.sampled_from(positions), min_size=1))
    chars = list(allowed)
    for i in chosen:
        chars[i] = draw(st.sampled_from(_SWAPS[chars[i]]))
    return allowed, "".join(chars)


@settings(max_examples=300, deadline=None)
@given(pair=lookalike_pair())
def test_lookalike_of_an_allowed_payee_is_denied_as_confusable(pair: tuple[str, str]) -> None:
    allowed, lookalike = pair
    key = normalise(lookalike, case_insensitive=True)
    assert key != normalise(allowed, case_insensitive=True)
    limits = Limits(10_000, None, None, None, None, None, 10_000, 10_000)
    base = load_random_pack(limits).model
    model = base.model_copy(update={"payees": base.payees.model_copy(update={"allow": [allowed]})})
    policy = compile_pack(PolicyPack(model, "0" * 64, "lookalike"), ASSETS)
    facts = simulate_facts(limits, [], Payment(START, 100, lookalike))
    decision = evaluate(policy, facts)
    assert (decision.verdict, decision.reason) == (Verdict.DENY, "PAYEE_CONFUSABLE"), (
        allowed,
        lookalike,
        skeleton(allowed),
        skeleton(key),
    )
    # and the genuine payee is allowed
    genuine = evaluate(policy, simulate_facts(limits, [], Payment(START, 100, allowed)))
    assert genuine.verdict is Verdict.ALLOW, genuine.trace_json()

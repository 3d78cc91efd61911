"""What an agent can do right now (``paywarden explain agent``, ``Control.ExplainAgent``).

The pack in force for the agent, read as the deciding path reads it, beside what the
agent has used: the same fact reads as a decision (:mod:`paywarden.signer.core.facts`,
the store's aggregates and young open rows, never a scan of the history) and the same
calendar day (the policy time zone). An agent no pack covers is reported as such: every
payment it asks for is denied. Plain values; :mod:`.explain_document` writes them out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from paywarden.policy import PolicyPack, to_minor
from paywarden.policy.packs import AssetRules, PolicyPackModel
from paywarden.policy.vocabulary import FirstPaymentMode, KeyState, Phase, SessionState
from paywarden.signer.core.deps import Deps, control_store_call, require
from paywarden.signer.core.facts import day_start
from paywarden.signer.core.refusing import Refusals
from paywarden.signer.errors import InvalidInput, Reason
from paywarden.signer.identity import PRINCIPAL_ID, Principal, Role
from paywarden.signer.store.records import (
    AgentOverview,
    AgentUsage,
    Freeze,
    KeyVersion,
    Revocation,
    SessionRecord,
)

MAX_SESSIONS = 100  # open sessions listed (all are counted)


@dataclass(frozen=True, slots=True)
class Allowance:
    """A limit, what the agent used of it, and what remains (amounts as decimal text)."""

    limit: str
    used: str
    remaining: str


@dataclass(frozen=True, slots=True)
class KeyGrant:
    key_id: str  # a version, or a label (its active version)
    configured: bool  # a payment key of this signer: configured, or a version in the store
    # The version's state (active, verify-only, revoked, destroyed); for a label, "active"
    # if it has an active version, else "no active version". None: not a key of this signer.
    state: str | None = None


@dataclass(frozen=True, slots=True)
class ApprovalStep:
    above: str  # payments strictly above this amount
    approvers: int  # need this many distinct approvers


@dataclass(frozen=True, slots=True)
class AssetPower:
    asset: str
    decimals: int
    keys: tuple[KeyGrant, ...]
    max_per_payment: str
    spent_today: str  # since the start of the policy's calendar day, held payments included
    spent_24h: str  # over the rolling 24 hours
    daily: Allowance | None  # None: the pack sets no daily limit
    rolling_24h: Allowance | None
    approval: tuple[ApprovalStep, ...]  # lowest threshold first; empty: never asked


@dataclass(frozen=True, slots=True)
class PayeePower:
    allow: tuple[str, ...]
    allow_patterns: tuple[str, ...]
    deny: tuple[str, ...]
    deny_patterns: tuple[str, ...]
    first_payment: FirstPaymentMode  # a payee the agent has never paid: deny, approve or allow


@dataclass(frozen=True, slots=True)
class Counted:
    """A limit on a count, what was used, what remains."""

    limit: int
    used: int
    remaining: int


@dataclass(frozen=True, slots=True)
class VelocityPower:
    window_seconds: int
    payments: Counted  # payments (every asset) in the last window_seconds


@dataclass(frozen=True, slots=True)
class DiversityPower:
    max_payees_per_session: int | None
    payees_today: int  # distinct payees paid or held today
    per_day: Counted | None  # None: no daily payee limit


@dataclass(frozen=True, slots=True)
class HoursPower:
    start: str
    end: str
    open_now: bool


@dataclass(frozen=True, slots=True)
class BreakerPower:
    window_seconds: int
    max_rejections: int | None
    max_rejection_rate: float | None
    min_decisions: int
    max_spend: Mapping[str, str]
    max_payees: int | None
    # The window now, as the breaker reads it (refusals held in memory included):
    decisions: int
    denials: int
    spend: Mapping[str, str]
    payees: int


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_ttl_seconds: int
    max_budget: Mapping[str, str]
    require_plan: bool


@dataclass(frozen=True, slots=True)
class SessionBudget:
    asset: str
    budget: str
    spent: str  # signed, and held or allowed until the payment's expiry
    remaining: str


@dataclass(frozen=True, slots=True)
class OpenSession:
    session_id: str
    state: SessionState
    phase: Phase
    created_at: int
    expires_at: int
    pack_id: str  # the pack it was opened under
    pack_version: int
    pack_sha256: str
    budgets: tuple[SessionBudget, ...]
    payees: int  # distinct payees paid or held
    allowed_payees: tuple[str, ...]  # empty: any payee the pack allows
    plan_lines: int
    plan_lines_used: int  # lines whose count is used up


@dataclass(frozen=True, slots=True)
class PackCover:
    id: str
    version: int
    sha256: str
    via: str  # "agents" (named in the pack) or "group <name>"


@dataclass(frozen=True, slots=True)
class PackPower:
    """What the pack lets the agent do, with what it used."""

    cover: PackCover
    assets: tuple[AssetPower, ...]
    payees: PayeePower
    velocity: VelocityPower | None
    diversity: DiversityPower
    hours: HoursPower | None
    breaker: BreakerPower | None
    sessions: SessionLimits


@dataclass(frozen=True, slots=True)
class Explanation:
    agent_id: str
    at: int  # decision time the explanation was read at
    timezone: str
    day_start: int  # start of the policy's calendar day
    power: PackPower | None  # None: no pack covers the agent, every payment is denied
    open_sessions: tuple[OpenSession, ...]  # soonest expiry first, at most MAX_SESSIONS
    open_sessions_total: int
    pending_approvals: int
    freezes: tuple[Freeze, ...]  # global, the agent's, its open sessions', its keys'
    revoked: Revocation | None  # its principal id revoked: every call it makes is refused


class Explain:
    def __init__(self, deps: Deps, refusals: Refusals) -> None:
        self._deps = deps
        self._refusals = refusals  # the breaker counts refusals held in memory

    def agent(self, caller: Principal, agent_id: str) -> Explanation:
        require(caller, Role.OPERATOR)
        if not PRINCIPAL_ID.fullmatch(agent_id):
            raise InvalidInput(Reason.STRING_INVALID, "agent_id is not an agent id")
        deps = self._deps
        pack = deps.packs.for_agent(agent_id)
        m = pack.model if pack is not None else None
        now = deps.now()
        start = day_start(now, deps.tz)
        breaker = m.breaker if m is not None else None
        overview = control_store_call(
            lambda: deps.store.agent_overview(
                agent_id,
                assets=sorted(m.assets) if m is not None else (),
                keys=sorted({k for a in m.assets.values() for k in a.keys}) if m else (),
                now=now,
                day_start=start,
                velocity_seconds=m.velocity.window_seconds if m and m.velocity else 0,
                breaker_seconds=breaker.window_seconds if breaker is not None else None,
                max_sessions=MAX_SESSIONS,
            )
        )
        power = None
        if pack is not None:
            power = self._power(pack, agent_id, overview, now)
        return Explanation(
            agent_id=agent_id,
            at=now,
            timezone=deps.tz.key,
            day_start=start,
            power=power,
            open_sessions=tuple(self._session(s, now) for s in overview.sessions),
            open_sessions_total=overview.open_sessions,
            pending_approvals=overview.pending_approvals,
            freezes=overview.freezes,
            revoked=overview.revoked,
        )

    # -- the pack ---------------------------------------------------------------------

    def _power(
        self, pack: PolicyPack, agent_id: str, overview: AgentOverview, now: int
    ) -> PackPower:
        m = pack.model
        usage = next(iter(overview.usage.values()), AgentUsage())  # counts of every asset
        versions = control_store_call(self._deps.store.key_versions)  # once, for every asset
        p = m.payees
        return PackPower(
            cover=PackCover(pack.id, pack.version, pack.sha256, self._via(m, agent_id)),
            assets=tuple(
                self._asset(code, rules, overview.usage[code], pack.path, versions)
                for code, rules in sorted(m.assets.items())
            ),
            payees=PayeePower(
                tuple(p.allow),
                tuple(p.allow_patterns),
                tuple(p.deny),
                tuple(p.deny_patterns),
                p.first_payment,
            ),
            velocity=None
            if m.velocity is None
            else VelocityPower(
                m.velocity.window_seconds,
                _counted(m.velocity.max_payments, usage.payments_in_window),
            ),
            diversity=DiversityPower(
                m.diversity.max_payees_per_session,
                usage.payees_today,
                None
                if m.diversity.max_payees_per_day is None
                else _counted(m.diversity.max_payees_per_day, usage.payees_today),
            ),
            hours=None if m.hours is None else self._hours(m, now),
            breaker=self._breaker(m, agent_id, overview, now),
            sessions=SessionLimits(
                m.sessions.max_ttl_seconds,
                {
                    a: self._units(v, a, f"{pack.path}: sessions.max_budget.{a}")
                    for a, v in sorted(m.sessions.max_budget.items())
                },
                m.sessions.require_plan,
            ),
        )

    def _via(self, m: PolicyPackModel, agent_id: str) -> str:
        if agent_id in m.agents:
            return "agents"
        groups = self._deps.packs.groups
        named = sorted(g for g in m.groups if agent_id in groups.get(g, frozenset()))
        return f"group {named[0]}" if named else "groups"

    def _units(self, text: str, asset: str, where: str) -> str:
        """A pack's amount written with the asset's decimals, as the decision reads it."""
        return self._deps.amount(to_minor(text, self._deps.decimals(asset), where), asset)

    def _asset(
        self,
        code: str,
        rules: AssetRules,
        usage: AgentUsage,
        path: str,
        versions: Sequence[KeyVersion],
    ) -> AssetPower:
        deps = self._deps
        decimals = deps.decimals(code)
        where = f"{path}: assets.{code}"

        def allowance(limit: str | None, used: int) -> Allowance | None:
            if limit is None:
                return None
            ceiling = to_minor(limit, decimals, where)
            return Allowance(
                deps.amount(ceiling, code), deps.amount(used, code),
                deps.amount(max(ceiling - used, 0), code),
            )  # fmt: skip

        steps = [(to_minor(a, decimals, where), n) for _, a, n in rules.approval_steps()]
        return AssetPower(
            asset=code,
            decimals=decimals,
            keys=tuple(key_grant(k, deps.payment_keys, versions) for k in rules.keys),
            max_per_payment=self._units(rules.max_per_payment, code, where),
            spent_today=deps.amount(usage.spent_today_minor, code),
            spent_24h=deps.amount(usage.spent_24h_minor, code),
            daily=allowance(rules.daily_limit, usage.spent_today_minor),
            rolling_24h=allowance(rules.rolling_24h_limit, usage.spent_24h_minor),
            approval=tuple(ApprovalStep(deps.amount(a, code), k) for a, k in sorted(steps)),
        )

    def _hours(self, m: PolicyPackModel, now: int) -> HoursPower:
        assert m.hours is not None
        s, e = m.hours.minutes()
        local = dt.datetime.fromtimestamp(now, self._deps.tz)
        minute = local.hour * 60 + local.minute
        inside = s <= minute < e if s <= e else (minute >= s or minute < e)  # as AllowedHours
        return HoursPower(m.hours.start, m.hours.end, inside)

    def _breaker(
        self, m: PolicyPackModel, agent_id: str, overview: AgentOverview, now: int
    ) -> BreakerPower | None:
        b, w = m.breaker, overview.window
        if b is None or w is None:
            return None
        refused = self._refusals.refused_in_window(agent_id, b.window_seconds, now)
        return BreakerPower(
            window_seconds=b.window_seconds,
            max_rejections=b.max_rejections,
            max_rejection_rate=b.max_rejection_rate,
            min_decisions=b.min_decisions,
            max_spend={
                a: self._units(v, a, f"breaker.max_spend.{a}")
                for a, v in sorted(b.max_spend.items())
            },
            max_payees=b.max_payees,
            decisions=w.decisions + refused,
            denials=w.denials + refused,
            spend={a: self._deps.amount(v, a) for a, v in sorted(w.spend_minor.items())},
            payees=w.payees,
        )

    # -- the agent's sessions ----------------------------------------------------------

    def _session(self, s: SessionRecord, now: int) -> OpenSession:
        amount = self._deps.amount
        budgets = tuple(
            SessionBudget(a, amount(b, a), amount(used, a), amount(max(b - used, 0), a))
            for a, b in sorted(s.budgets_minor.items())
            for used in (s.spent_minor.get(a, 0),)
        )
        return OpenSession(
            session_id=s.id,
            state=s.state(now),
            phase=s.phase,
            created_at=s.created_at,
            expires_at=s.expires_at,
            pack_id=s.pack_id,
            pack_version=s.pack_version,
            pack_sha256=s.pack_sha256,
            budgets=budgets,
            payees=s.payees,
            allowed_payees=s.allowed_payees,
            plan_lines=len(s.plan),
            plan_lines_used=sum(1 for line in s.plan if line.used >= line.count),
        )


def _counted(limit: int, used: int) -> Counted:
    return Counted(limit, used, max(limit - used, 0))


def key_grant(key: str, configured: Collection[str], versions: Iterable[KeyVersion]) -> KeyGrant:
    """What a pack's key grant names now: the version's state, or a label's."""
    stored = {v.key_id: v for v in versions}
    if key in stored:
        return KeyGrant(key, True, str(stored[key].state))
    labelled = [v for v in stored.values() if v.label == key]
    if labelled:
        active = any(v.state is KeyState.ACTIVE for v in labelled)
        return KeyGrant(key, True, str(KeyState.ACTIVE) if active else "no active version")
    known = key in configured or any(k.partition(".v")[0] == key for k in configured)
    return KeyGrant(key, known, None)

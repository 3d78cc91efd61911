"""What a pack allows, in words (for ``paywarden policy check``)."""

from __future__ import annotations

from paywarden.policy.packs import PolicyPack


def _list(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def describe(pack: PolicyPack) -> str:
    m = pack.model
    lines = [
        f"pack {m.id} v{m.version} (sha256 {pack.sha256[:16]}…) from {pack.path}",
        f"  applies to: agents {_list(m.agents)}; groups {_list(m.groups)}",
    ]
    for code, a in sorted(m.assets.items()):
        parts = [f"keys {_list(a.keys)}", f"at most {a.max_per_payment} per payment"]
        if a.daily_limit:
            parts.append(f"{a.daily_limit} per calendar day")
        if a.rolling_24h_limit:
            parts.append(f"{a.rolling_24h_limit} per rolling 24 h")
        if a.approval_above:
            parts.append(f"approval above {a.approval_above} (1 approver)")
        for tier in a.approval_tiers:
            parts.append(f"approval above {tier.above} ({tier.approvers} approvers)")
        lines.append(f"  {code}: " + "; ".join(parts))
    p = m.payees
    lines.append(
        f"  payees: allow {_list(p.allow)}; patterns (ASCII payees only) "
        f"{_list(p.allow_patterns)}; "
        f"deny {_list(p.deny)}; deny patterns {_list(p.deny_patterns)}; "
        f"first payment to a payee: {p.first_payment}"
    )
    if m.velocity:
        lines.append(
            f"  velocity: at most {m.velocity.max_payments} payments per "
            f"{m.velocity.window_seconds} s"
        )
    d = m.diversity
    if d.max_payees_per_session or d.max_payees_per_day:
        lines.append(
            f"  diversity: {d.max_payees_per_session or 'any'} payees per session, "
            f"{d.max_payees_per_day or 'any'} per day"
        )
    lines.append(f"  hours: {m.hours.start}-{m.hours.end}" if m.hours else "  hours: any")
    if m.breaker:
        b = m.breaker
        trips = []
        if b.max_rejections is not None:
            trips.append(f"more than {b.max_rejections} rejections")
        if b.max_rejection_rate is not None:
            trips.append(f"a rejection rate above {b.max_rejection_rate} (of {b.min_decisions}+)")
        trips += [f"{c} spend above {v}" for c, v in sorted(b.max_spend.items())]
        if b.max_payees is not None:
            trips.append(f"more than {b.max_payees} payees")
        lines.append(f"  breaker: freezes the agent on {_list(trips)} in {b.window_seconds} s")
    s = m.sessions
    budgets = _list([f"{c} {v}" for c, v in sorted(s.max_budget.items())])
    lines.append(
        f"  sessions: ttl at most {s.max_ttl_seconds} s; budget at most {budgets}; "
        f"plan required: {'yes' if s.require_plan else 'no'}"
    )
    if m.widening_needs_second_operator:
        lines.append("  reloads: one that widens this pack waits for a second operator")
    lines.append("  everything else: denied")
    return "\n".join(lines)

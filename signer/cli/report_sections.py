"""The operator report's sections past the spend (:mod:`.report_html` builds the page):
decisions, approvals, freezes, payees and the audit log, each a ``<section>`` of
tables and charts whose every string from the store is escaped (:func:`.report_svg.esc`)
and whose rows carry their figures in ``data-*`` attributes as well as in their cells.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from paywarden.signer.cli.report_svg import (
    OUTCOME_COLOURS,
    PALETTE,
    Segment,
    attr_name,
    attrs,
    bars,
    esc,
)
from paywarden.signer.store.report_reads import DAY, HOUR, ReportFacts

Amount = Callable[[int, str], str]
"""Minor units of an asset written as its exact decimal."""


@dataclass(frozen=True, slots=True)
class AuditCheck:
    """What ``audit verify`` said of the log: state ``ok``, ``broken`` or ``unchecked``."""

    state: str
    lines: tuple[str, ...]


def when(epoch: int | None) -> str:
    """A UTC time, or the raw number when it is no time (out of range: an edited row)."""
    if epoch is None:
        return "—"
    try:
        return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OverflowError, OSError):
        return str(epoch)


def bucket_label(start: int, seconds: int) -> str:
    try:
        t = dt.datetime.fromtimestamp(start, dt.UTC)
    except (ValueError, OverflowError, OSError):
        return str(start)
    if seconds == HOUR:
        return t.strftime("%m-%d %H:00")
    if seconds == DAY:
        return t.strftime("%Y-%m-%d")
    return "wk " + t.strftime("%Y-%m-%d")


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def table(head: Sequence[str], rows: Sequence[str], numeric: Sequence[int] = ()) -> str:
    ths = "".join(
        f'<th class="num">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
        for i, h in enumerate(head)
    )
    body = (
        "\n".join(rows) if rows else f'<tr><td colspan="{len(head)}" class="muted">none</td></tr>'
    )
    return f"<table><thead><tr>{ths}</tr></thead><tbody>\n{body}\n</tbody></table>"


def row(cells: Sequence[object], data: Mapping[str, object], numeric: Sequence[int] = ()) -> str:
    tds = "".join(
        f'<td class="num">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>"
        for i, c in enumerate(cells)
    )
    return f"<tr{attrs(data)}>{tds}</tr>"


def decisions(f: ReportFacts) -> str:
    chart = bars(
        [
            (
                f"{reason} ({outcome})",
                Segment(
                    n,
                    OUTCOME_COLOURS.get(outcome, PALETTE[-1]),
                    {"data-outcome": outcome, "data-reason": reason, "data-count": str(n)},
                    f"{outcome} · {reason}: {n}",
                ),
            )
            for outcome, reason, n in f.decisions
        ],
        kind="decisions",
    )
    by_outcome: dict[str, int] = {}
    for outcome, _, n in f.decisions:
        by_outcome[outcome] = by_outcome.get(outcome, 0) + n
    outcomes = [
        row([o, n], {"data-outcome": o, "data-count": n}, (1,))
        for o, n in sorted(by_outcome.items())
    ]
    reasons = [
        row([o, r, n], {"data-outcome": o, "data-reason": r, "data-count": n}, (2,))
        for o, r, n in f.decisions
    ]
    agents = [
        row([a, o, n], {"data-agent": a, "data-outcome": o, "data-count": n}, (2,))
        for a, o, n in f.agent_outcomes
    ]
    return "\n".join(
        [
            '<section id="decisions"><h2>Decisions by outcome and reason</h2>',
            '<p class="muted">"pending" decisions were held for a human approver; how they '
            "ended is under Approvals.</p>",
            chart,
            table(["outcome", "decisions"], outcomes, (1,)),
            table(["outcome", "reason", "decisions"], reasons, (2,)),
            "<h3>By agent</h3>",
            table(["agent", "outcome", "decisions"], agents, (2,)),
            "</section>",
        ]
    )


def approvals(f: ReportFacts, amount: Amount) -> str:
    status = [
        row(
            [
                s.status,
                s.count,
                duration(s.total_seconds // s.decided if s.decided else None),
                duration(s.max_seconds),
            ],
            {
                "data-status": s.status,
                "data-count": s.count,
                "data-decided": s.decided,
                "data-total-seconds": s.total_seconds,
            },
            (1, 2, 3),
        )
        for s in f.approval_status
    ]
    latest = [
        row(
            [
                a.id,
                a.agent_id,
                a.payee,
                f"{amount(a.amount_minor, a.asset)} {a.asset}",
                a.status,
                when(a.created_at),
                when(a.decided_at),
                duration(a.decided_at - a.created_at if a.decided_at is not None else None),
                "; ".join(a.approvers) or "—",
            ],
            {
                "data-approval": a.id,
                "data-status": a.status,
                "data-agent": a.agent_id,
                "data-payee": a.payee,
                "data-amount": amount(a.amount_minor, a.asset),
                "data-asset": a.asset,
            },
        )
        for a in f.approvals
    ]
    head = ["approval", "agent", "payee", "amount", "status", "requested", "decided",
            "time to decide", "votes"]  # fmt: skip
    return "\n".join(
        [
            '<section id="approvals"><h2>Approvals</h2>',
            table(["status", "approvals", "mean time to decide", "longest"], status, (1, 2, 3)),
            f"<h3>Latest {len(f.approvals)}</h3>",
            table(head, latest),
            "</section>",
        ]
    )


def freezes(f: ReportFacts) -> str:
    now = [
        row([s, t, a, r, when(at)], {"data-scope": s, "data-target": t, "data-actor": a})
        for s, t, a, r, at in f.frozen_now
    ]
    spans = [
        row(
            [
                s.scope,
                s.target or "—",
                s.actor,
                s.reason,
                when(s.at),
                when(s.lifted_at),
                s.lifted_by or "—",
                s.lift_reason or "",
            ],
            {
                "data-scope": s.scope,
                "data-target": s.target,
                "data-actor": s.actor,
                "data-at": s.at,
                "data-lifted-at": s.lifted_at if s.lifted_at is not None else "",
                "data-lifted-by": s.lifted_by or "",
            },
        )
        for s in f.freezes
    ]
    head = ["scope", "target", "set by", "reason", "set at", "lifted at", "lifted by", "why"]
    unreadable = (
        f'<p class="muted" data-unreadable="{f.unreadable_freezes}">{f.unreadable_freezes}'
        " freeze records of the audit log are unreadable (left out; see audit verify)</p>"
        if f.unreadable_freezes
        else ""
    )
    return "\n".join(
        [
            '<section id="freezes"><h2>Freezes</h2>',
            "<h3>In force now</h3>",
            table(["scope", "target", "set by", "reason", "since"], now),
            "<h3>History (newest first, from the audit log)</h3>",
            unreadable,
            table(head, spans),
            "</section>",
        ]
    )


def payees(f: ReportFacts, amount: Amount) -> str:
    chart = bars(
        [
            (
                p.payee,
                Segment(
                    p.payments,
                    PALETTE[0],
                    {"data-payee": p.payee, "data-count": str(p.payments)},
                    f"{p.payee}: {p.payments} payments",
                ),
            )
            for p in f.payees
        ],
        kind="payees",
    )
    rows = [
        row(
            [
                p.payee,
                p.payments,
                p.agents,
                ", ".join(f"{amount(v, a)} {a}" for a, v in sorted(p.amounts.items())),
            ],
            {
                "data-payee": p.payee,
                "data-payments": p.payments,
                "data-agents": p.agents,
                **{f"data-amount-{attr_name(a)}": amount(v, a) for a, v in p.amounts.items()},
            },
            (1, 2),
        )
        for p in f.payees
    ]
    denied = [row([p, n], {"data-payee": p, "data-count": n}, (1,)) for p, n in f.denied_payees]
    return "\n".join(
        [
            '<section id="payees"><h2>Busiest payees</h2>',
            chart,
            table(["payee", "signed payments", "agents", "amount"], rows, (1, 2)),
            "<h3>Most denied payees</h3>",
            table(["payee", "denials"], denied, (1,)),
            "</section>",
        ]
    )


def audit(f: ReportFacts, audit: AuditCheck) -> str:
    cls = {"ok": "ok", "broken": "bad"}.get(audit.state, "muted")
    lines = "".join(f"<li>{esc(line)}</li>" for line in audit.lines)
    rows = [
        row(
            [c.size, when(c.at), c.key_id, c.root],
            {"data-size": c.size, "data-root": c.root, "data-key": c.key_id},
            (0,),
        )
        for c in f.checkpoints
    ]
    return "\n".join(
        [
            '<section id="audit"><h2>Audit log and checkpoints</h2>',
            f'<p data-audit="{esc(audit.state)}" class="{cls}">audit verify: '
            f"{esc({'ok': 'holds', 'broken': 'BROKEN'}.get(audit.state, 'not checked'))}</p>",
            f"<ul>{lines}</ul>",
            f"<p>{f.audit_size} records, {f.checkpoint_count} signed checkpoints; the latest "
            f"{len(f.checkpoints)}:</p>",
            table(["size", "time (UTC)", "key id", "root"], rows, (0,)),
            "</section>",
        ]
    )

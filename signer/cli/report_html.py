"""The operator report as one static HTML page: inline CSS, inline SVG charts
(:mod:`.report_svg`), no script, no font, no image, nothing loaded from anywhere (a
Content-Security-Policy that allows nothing but the inline style says so to the
browser too). Every string from the store is escaped; amounts are exact decimals
written from integer minor units.
"""

from __future__ import annotations

from collections.abc import Mapping

from paywarden.policy.vocabulary import ApprovalStatus, format_amount
from paywarden.signer.cli import report_sections as sections
from paywarden.signer.cli.report_sections import AuditCheck, bucket_label, row, table, when
from paywarden.signer.cli.report_svg import PALETTE, Column, Segment, columns, esc
from paywarden.signer.store.report_reads import DAY, HOUR, WEEK, ReportFacts, SpendBucket

SERIES = 8  # agents drawn one by one per asset chart; the rest are summed as one
OTHERS = "(other agents)"

STYLE = """
body{font-family:sans-serif;margin:0;color:#1a1a1a;background:#f6f7f9}
header{background:#1f2a44;color:#fff;padding:16px 28px}
header h1{margin:0 0 4px;font-size:22px}
main{padding:8px 28px 40px;max-width:1100px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px}
h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e3e6ea;padding:3px 10px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px}
.chart{width:100%;max-width:760px;display:block}
.axis,.legend,.label,.figure{font-size:11px;fill:#333}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px 14px;min-width:120px}
.tile b{display:block;font-size:20px}
.ok{color:#0a7a3d;font-weight:bold}.bad{color:#b3261e;font-weight:bold}
.muted{color:#666}
"""


class Page:
    """Builds the page from the store's figures and the asset decimals."""

    def __init__(self, facts: ReportFacts, decimals: Mapping[str, int]) -> None:
        self.facts = facts
        self.decimals = {**facts.decimals, **decimals}

    def amount(self, minor: int, asset: str) -> str:
        """In the asset's units; an asset whose decimals neither the configuration nor
        any session recorded is written in minor units, said so (never as whole units)."""
        decimals = self.decimals.get(asset)
        if decimals is None:
            return f"{minor} (minor units)"
        return format_amount(minor, decimals)

    def render(self, *, store: str, generated: int, audit: AuditCheck) -> str:
        f = self.facts
        parts = [
            self._tiles(audit),
            self._spend(),
            sections.decisions(f),
            sections.approvals(f, self.amount),
            sections.freezes(f),
            sections.payees(f, self.amount),
            sections.audit(f, audit),
        ]
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            '<meta http-equiv="Content-Security-Policy"'
            " content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>Paywarden operator report</title>\n<style>{STYLE}</style></head>\n"
            "<body><header><h1>Paywarden operator report</h1>"
            f"<div>store {esc(store)} · generated {esc(when(generated))} UTC · "
            f"audit log {f.audit_size} records</div></header>\n<main>\n"
            + "\n".join(parts)
            + "\n</main></body></html>\n"
        )

    def _tiles(self, audit: AuditCheck) -> str:
        f = self.facts
        decided = sum(n for _, _, n in f.decisions)
        pending = sum(s.count for s in f.approval_status if s.status == ApprovalStatus.PENDING)
        verdict = {"ok": "holds", "broken": "BROKEN"}.get(audit.state, "not checked")
        tiles = [
            ("decisions", decided),
            ("signed payments", sum(f.payments.values())),
            ("approvals pending", pending),
            ("frozen now", len(f.frozen_now)),
            ("checkpoints", f.checkpoint_count),
            ("audit verify", verdict),
        ]
        body = "".join(
            f'<div class="tile" data-tile="{esc(k)}">{esc(k)}<b>{esc(v)}</b></div>'
            for k, v in tiles
        )
        return f'<div class="tiles">{body}</div>'

    def _spend(self) -> str:
        f = self.facts
        out = [
            '<section id="spend"><h2>Spend per agent and asset</h2>',
            f'<p class="muted">Signed payments, per {esc(_unit(f.bucket_seconds))} (UTC).</p>',
        ]
        by_asset: dict[str, list[SpendBucket]] = {}
        for b in f.spend:
            by_asset.setdefault(b.asset, []).append(b)
        for asset in sorted(by_asset):
            out.append(f"<h3>{esc(asset)}</h3>")
            out.append(self._spend_chart(asset, by_asset[asset]))
        totals: dict[tuple[str, str], int] = {}
        for b in f.spend:
            totals[b.agent_id, b.asset] = totals.get((b.agent_id, b.asset), 0) + b.amount_minor
        rows = [
            row(
                [agent, asset, f.payments.get((agent, asset), 0), self.amount(total, asset)],
                {
                    "data-agent": agent,
                    "data-asset": asset,
                    "data-total": self.amount(total, asset),
                    "data-payments": f.payments.get((agent, asset), 0),
                },
                (2, 3),
            )
            for (agent, asset), total in sorted(totals.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]
        out.append(table(["agent", "asset", "payments", "total"], rows, (2, 3)))
        out.append("</section>")
        return "\n".join(out)

    def _spend_chart(self, asset: str, spend: list[SpendBucket]) -> str:
        seconds = self.facts.bucket_seconds
        per_agent: dict[str, int] = {}
        for b in spend:
            per_agent[b.agent_id] = per_agent.get(b.agent_id, 0) + b.amount_minor
        ranked = sorted(per_agent, key=lambda a: (-per_agent[a], a))
        shown = ranked if len(ranked) <= SERIES else ranked[: SERIES - 1]
        colour = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(shown)}
        first = min(b.start for b in spend)
        last = max(b.start for b in spend)
        cells: dict[tuple[int, str], int] = {}
        for b in spend:
            who = b.agent_id if b.agent_id in colour else OTHERS
            cells[b.start, who] = cells.get((b.start, who), 0) + b.amount_minor
        series = [*shown, *([OTHERS] if len(ranked) > len(shown) else [])]
        colour[OTHERS] = PALETTE[-1]
        cols = []
        top = 0
        for start in range(first, last + 1, seconds):
            label = bucket_label(start, seconds)
            segs = []
            for who in series:
                v = cells.get((start, who), 0)
                if v:
                    text = self.amount(v, asset)
                    data = {"data-agent": who, "data-asset": asset, "data-bucket": label,
                            "data-amount": text}  # fmt: skip
                    segs.append(Segment(v, colour[who], data, f"{who} · {label}: {text} {asset}"))
            top = max(top, sum(s.value for s in segs))
            cols.append(Column(label, segs))
        return columns(
            cols,
            legend=[(who, colour[who]) for who in series],
            top_label=self.amount(top, asset),
            kind=f"spend-{asset}",
        )


def _unit(seconds: int) -> str:
    if seconds > WEEK:
        return f"{seconds // WEEK} weeks"
    return {HOUR: "hour", DAY: "day"}.get(seconds, "week")

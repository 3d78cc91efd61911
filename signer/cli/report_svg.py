"""The operator report's charts, drawn as inline SVG by our own code (no script, no
library, nothing fetched). Every string that came from the store is escaped here
(:func:`esc`): payee names are chosen by whoever asks to be paid. Each bar carries its
figures in ``data-*`` attributes and a ``<title>`` (the exact decimal amount, never a
float), so that a reader, a test or a screen reader gets the numbers, not only pixels.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from paywarden.policy.vocabulary import Verdict

# Colour-blind-safe (Okabe-Ito), then greys.
PALETTE = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
    "#999999",
)  # fmt: skip
OUTCOME_COLOURS: dict[str, str] = {
    Verdict.ALLOW: "#009E73",
    Verdict.DENY: "#D55E00",
    Verdict.NEEDS_APPROVAL: "#E69F00",
}


def esc(text: object) -> str:
    """Text or an attribute value, escaped for HTML and inline SVG (quotes included)."""
    return html.escape(str(text), quote=True)


_NAME = re.compile(r"[a-z][a-z0-9-]*")


def attr_name(text: str) -> str:
    """``text`` as the tail of an attribute name: lower case, letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]", "-", text.lower())


def attrs(values: Mapping[str, object]) -> str:
    """`` name="value"`` pairs, every value escaped; a name that is not a plain attribute
    name is refused (a name cannot be escaped)."""
    bad = [name for name in values if _NAME.fullmatch(name) is None]
    if bad:
        raise ValueError(f"not an attribute name: {bad!r}")
    return "".join(f' {name}="{esc(value)}"' for name, value in values.items())


def clip(text: str, most: int = 28) -> str:
    """A label short enough for an axis (the full text is in the bar's title)."""
    return text if len(text) <= most else text[: most - 1] + "…"


@dataclass(frozen=True, slots=True)
class Segment:
    """One part of a column (or one bar): its value for the geometry (minor units or a
    count, exact integers), its colour, data attributes and tooltip."""

    value: int
    colour: str
    data: dict[str, str] = field(default_factory=dict)
    title: str = ""


@dataclass(frozen=True, slots=True)
class Column:
    label: str
    segments: Sequence[Segment]


def _scale(value: int, top: int, span: float) -> float:
    # Geometry only: the figures themselves stay exact in the attributes.
    return 0.0 if top <= 0 else span * value / top


def columns(
    cols: Sequence[Column],
    *,
    legend: Sequence[tuple[str, str]],
    top_label: str,
    kind: str,
    width: int = 760,
    height: int = 260,
) -> str:
    """A stacked column chart (one column per time bucket). ``legend``: (name, colour);
    ``top_label``: the figure the highest column stands for, written on the y axis."""
    left, right, top_pad, bottom = 70, 10, 14, 48
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = max((sum(s.value for s in c.segments) for c in cols), default=0)
    n = max(len(cols), 1)
    slot = plot_w / n
    bar = max(min(slot * 0.7, 48.0), 1.0)
    every = max(1, -(-n // 10))  # at most about ten labels on the axis
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height + 22 * _rows(legend)}"'
        f' data-chart="{esc(kind)}" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" y2="{top_pad + plot_h}"'
        ' stroke="#444"/>',
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#444"/>',
        f'<text x="{left - 6}" y="{top_pad + 4}" text-anchor="end" class="axis">'
        f"{esc(clip(top_label, 12))}</text>",
        f'<text x="{left - 6}" y="{top_pad + plot_h}" text-anchor="end" class="axis">0</text>',
    ]
    for i, col in enumerate(cols):
        x = left + i * slot + (slot - bar) / 2
        y = float(top_pad + plot_h)
        for seg in col.segments:
            h = _scale(seg.value, top, plot_h)
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}"'
                f' fill="{esc(seg.colour)}"{attrs(seg.data)}><title>{esc(seg.title)}</title></rect>'
            )
        if i % every == 0:
            out.append(
                f'<text x="{x + bar / 2:.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle"'
                f' class="axis">{esc(col.label)}</text>'
            )
    out += _legend(legend, top_pad + plot_h + 34, left, width)
    out.append("</svg>")
    return "\n".join(out)


def _rows(legend: Sequence[tuple[str, str]]) -> int:
    return max(1, -(-len(legend) // 4))


def _legend(legend: Sequence[tuple[str, str]], y: int, left: int, width: int) -> list[str]:
    out = []
    step = (width - left) / 4
    for i, (name, colour) in enumerate(legend):
        x, row = left + (i % 4) * step, y + (i // 4) * 22
        out.append(
            f'<rect x="{x:.1f}" y="{row - 10}" width="12" height="12" fill="{esc(colour)}"/>'
            f'<text x="{x + 18:.1f}" y="{row}" class="legend">{esc(clip(name, 26))}</text>'
        )
    return out


def bars(rows: Sequence[tuple[str, Segment]], *, kind: str, width: int = 760) -> str:
    """A horizontal bar chart: (label, bar) per row, the figure written after the bar."""
    label_w, right, row_h = 220, 90, 24
    height = max(len(rows), 1) * row_h + 8
    top = max((seg.value for _, seg in rows), default=0)
    span = width - label_w - right
    out = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}"'
        f' data-chart="{esc(kind)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, (label, seg) in enumerate(rows):
        y = 4 + i * row_h
        w = max(_scale(seg.value, top, span), 1.0)
        figure = seg.data.get("data-count", seg.data.get("data-amount", str(seg.value)))
        out.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="label">'
            f"{esc(clip(label, 32))}</text>"
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 6}"'
            f' fill="{esc(seg.colour)}"{attrs(seg.data)}><title>{esc(seg.title)}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" class="figure">{esc(figure)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)

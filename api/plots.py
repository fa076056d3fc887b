"""Inline SVG plots for the dashboard, drawn from what the erasure job records (no plotting library).

- `score_plot`: one measurement's member scores (the verifier's margin log p_y − log max_{c≠y} p_c):
  the unseen control's histogram, and a mark per forget sample. Before unlearning a memorised
  forget set sits to the right of the control; after it, inside.
- `rank_plot`: each forget sample's percentile rank among the control, before and after, with
  the mean (1/2 looks unseen).
- `metrics_plot`: UA, RA, TA and MIA-efficacy before and after, in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

from ledger.records import Metrics, ScoreSummary

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 28, 40
METRICS = (("ua", "UA"), ("ra", "RA"), ("ta", "TA"), ("mia", "MIA"))


class Axis:
    """A linear map from data values onto a pixel span."""

    def __init__(self, low: float, high: float, start: float, end: float) -> None:
        self.low, self.high = low, high if high > low else low + 1.0
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self, count: int = 5) -> list[float]:
        """`count` evenly spaced values from low to high."""
        return [self.low + (self.high - self.low) * i / (count - 1) for i in range(count)]


def _svg(css_class: str, title: str, body: Sequence[str], **data: Any) -> Markup:
    attributes = "".join(f' data-{escape(k.replace("_", "-"))}="{escape(v)}"' for k, v in data.items())
    return Markup(
        f'<svg class="plot {escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}"{attributes}><title>{escape(title)}</title>'
        f'<text class="plot-title" x="{LEFT}" y="16">{escape(title)}</text>{"".join(body)}</svg>'
    )


def _x_axis(x: Axis, fmt: str = "{:.1f}") -> list[str]:
    y = HEIGHT - BOTTOM
    parts = [f'<line class="axis" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>']
    for value in x.ticks():
        parts.append(
            f'<line class="tick" x1="{x(value):.1f}" y1="{y}" x2="{x(value):.1f}" y2="{y + 4}"/>'
            f'<text class="tick-label" x="{x(value):.1f}" y="{y + 16}" text-anchor="middle">'
            f"{escape(fmt.format(value))}</text>"
        )
    return parts


def _legend(items: Sequence[tuple[str, str]]) -> list[str]:
    parts, x = [], WIDTH - RIGHT - 170
    for i, (css_class, label) in enumerate(items):
        y = TOP + 4 + 16 * i
        parts.append(
            f'<rect class="{css_class}" x="{x}" y="{y - 9}" width="10" height="10"/>'
            f'<text class="legend" x="{x + 16}" y="{y}">{escape(label)}</text>'
        )
    return parts


def score_range(*distributions: ScoreSummary) -> tuple[float, float]:
    """The margin range covering every given distribution (a shared x axis for before and after)."""
    values = [v for d in distributions for v in (*d.control_histogram.edges, *d.forget)]
    return min(values), max(values)


def score_plot(distribution: ScoreSummary, *, phase: str, x_range: tuple[float, float]) -> Markup:
    """Control histogram and forget-sample marks of one measurement (`phase`: before | after)."""
    x = Axis(*x_range, LEFT, WIDTH - RIGHT)
    edges, counts = distribution.control_histogram.edges, distribution.control_histogram.counts
    baseline = HEIGHT - BOTTOM
    y = Axis(0, max(counts) or 1, baseline, TOP + 40)  # the legend sits above the tallest bar
    body = []
    for left, right, count in zip(edges, edges[1:], counts):
        body.append(
            f'<rect class="bar control" x="{x(left):.1f}" y="{y(count):.1f}" '
            f'width="{max(x(right) - x(left) - 1, 0.5):.1f}" height="{baseline - y(count):.1f}"/>'
        )
    for value, rank in zip(distribution.forget, distribution.forget_ranks):
        body.append(
            f'<circle class="forget-point" cx="{x(value):.1f}" cy="{baseline - 8}" r="4">'
            f"<title>margin {value:.2f}, rank {rank:.2f} among unseen data</title></circle>"
        )
    body += _x_axis(x)
    body.append(
        f'<text class="axis-label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
        "member score: margin log p(y) − log max p(other)</text>"
    )
    body += _legend(
        [
            ("control", f"unseen data (n={distribution.n_control})"),
            ("forget", f"forget set (n={distribution.n_forget})"),
        ]
    )
    title = f"Member scores {phase} unlearning: forget set against unseen data"
    return _svg("plot-scores", title, body, phase=phase, mean_rank=distribution.mean_rank)


def rank_plot(before: ScoreSummary, after: ScoreSummary) -> Markup:
    """Percentile ranks of the forget samples among unseen data, before and after, with their mean.

    No pass line: the verdict is per subject (p-values in the request's record), not a mean-rank cut.
    """
    x = Axis(0.0, 1.0, LEFT + 40, WIDTH - RIGHT)
    body = [
        f'<line class="reference" x1="{x(0.5):.1f}" y1="{TOP + 10}" x2="{x(0.5):.1f}" y2="{HEIGHT - BOTTOM}"/>'
        f'<text class="legend" x="{x(0.5) + 4:.1f}" y="{TOP + 20}">0.5 looks unseen</text>'
    ]
    for row, (phase, distribution) in enumerate((("before", before), ("after", after))):
        y = TOP + 60 + 60 * row
        body.append(f'<text class="row-label" x="{LEFT - 8}" y="{y + 4}">{phase}</text>')
        for rank in distribution.forget_ranks:
            body.append(f'<circle class="rank-point {phase}" cx="{x(rank):.1f}" cy="{y}" r="4"/>')
        mean = distribution.mean_rank
        body.append(
            f'<path class="mean-mark" d="M{x(mean):.1f},{y - 11} l6,6 l-6,6 l-6,-6 z">'
            f"<title>mean rank {mean:.3f}</title></path>"
        )
    body += _x_axis(x, "{:.2f}")
    body.append(
        f'<text class="axis-label" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
        "percentile rank of each forget sample among unseen data (diamond: mean)</text>"
    )
    return _svg("plot-ranks", "Forget-set ranks among unseen data, before and after", body)


def metrics_plot(before: Metrics, after: Metrics) -> Markup:
    """Grouped bars of UA, RA, TA and MIA-efficacy (percent) before and after."""
    y = Axis(0.0, 100.0, HEIGHT - BOTTOM, TOP + 24)
    group = (WIDTH - LEFT - RIGHT) / len(METRICS)
    body = []
    for value in y.ticks():
        body.append(
            f'<line class="grid" x1="{LEFT}" y1="{y(value):.1f}" x2="{WIDTH - RIGHT}" y2="{y(value):.1f}"/>'
            f'<text class="tick-label" x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.0f}</text>'
        )
    for i, (key, label) in enumerate(METRICS):
        start = LEFT + group * i + group * 0.15
        width = group * 0.35
        for j, (phase, values) in enumerate((("before", before), ("after", after))):
            value = float(getattr(values, key) or 0.0)
            left = start + width * j
            body.append(
                f'<rect class="bar metric {phase}" x="{left:.1f}" y="{y(value):.1f}" width="{width - 2:.1f}" '
                f'height="{y(0) - y(value):.1f}"><title>{label} {phase}: {value:.1f} %</title></rect>'
                f'<text class="value-label" x="{left + width / 2:.1f}" y="{y(value) - 3:.1f}" '
                f'text-anchor="middle">{value:.1f}</text>'
            )
        body.append(
            f'<text class="tick-label" x="{start + width:.1f}" y="{HEIGHT - BOTTOM + 16}" '
            f'text-anchor="middle">{label}</text>'
        )
    body += _legend([("metric before", "before"), ("metric after", "after")])
    return _svg("plot-metrics", "Accuracy before and after (%)", body)

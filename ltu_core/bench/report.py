"""Tables from benchmark rows: mean ± std per method and case, and paired per-unit comparisons."""

from __future__ import annotations

import statistics
from typing import Any

from ltu_core.bench.protocol import FLOOR, ORIGINAL, RETRAIN, Row
from ltu_core.bench.stats import PairedComparison

METRICS = ("ua", "ra", "ta", "mia", "avg_gap", "relearn_ua", "audit_tpr", "seconds", "rte_ratio")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[Row], case: str, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Mean and std per method over seeds for one case (`random`, `class 3`), in first-seen order."""
    chosen = [r for r in rows if r.case == case]
    order = labels or list(dict.fromkeys(r.method for r in chosen))
    out = []
    for label in order:
        group = [r for r in chosen if r.method == label]
        if group:
            out.append(
                {"method": label, "n": len(group), **{k: mean_std([getattr(r, k) for r in group]) for k in METRICS}}
            )
    return out


def markdown_table(rows: list[Row], case: str, labels: list[str] | None = None) -> str:
    """Mean ± std table of one case (lower Avg. Gap is better; RTE as a share of Retrain's)."""
    lines = [
        "| method | UA | RA | TA | MIA | Avg. Gap ↓ | UA after relearn | audit TPR | seconds | RTE / Retrain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize(rows, case, labels):

        def fmt(key: str, digits: int = 2) -> str:
            mean, std = s[key]
            return f"{mean:.{digits}f} ± {std:.{digits}f}"

        ratio = s["rte_ratio"][0]
        rte = "—" if s["method"] == ORIGINAL else ("1 (ref)" if s["method"] == RETRAIN else f"{100 * ratio:.1f} %")
        lines.append(
            f"| {s['method']} | {fmt('ua')} | {fmt('ra')} | {fmt('ta')} | {fmt('mia')} | {fmt('avg_gap')} "
            f"| {fmt('relearn_ua', 1)} | {fmt('audit_tpr', 1)} | {fmt('seconds', 1)} | {rte} |"
        )
    return "\n".join(lines)


def per_unit(rows: list[Row], scenario: str, label: str) -> dict[int, float]:
    """A method's Avg. Gap per seed of a scenario, averaged over the seed's cases (classes).

    The seed is the unit of the paired test: each has its own original model, so seeds are
    independent, while the classes of one seed share their original (and a class's Retrains serve
    every seed), so seed × class cells are not.
    """
    cells: dict[int, list[float]] = {}
    for r in rows:
        if r.scenario == scenario and r.method == label:
            cells.setdefault(r.seed, []).append(r.avg_gap)
    return {seed: statistics.fmean(v) for seed, v in cells.items()}


def paired_comparisons(rows: list[Row], scenario: str, a: str = "ltu") -> list[PairedComparison]:
    """`a` against every other row label on the units both have (the floor and original included)."""
    mine = per_unit(rows, scenario, a)
    labels = [m for m in dict.fromkeys(r.method for r in rows if r.scenario == scenario) if m not in (a, RETRAIN)]
    out = []
    for label in labels:
        theirs = per_unit(rows, scenario, label)
        units = sorted(set(mine) & set(theirs))
        if units:
            out.append(PairedComparison.of(a, label, [mine[u] for u in units], [theirs[u] for u in units]))
    return out


def paired_table(rows: list[Row], scenario: str, a: str = "ltu") -> str:
    """Markdown: per-seed Avg. Gap of `a` minus each other method, wins and the sign-flip p-value."""
    units = sorted(per_unit(rows, scenario, a))
    head = "".join(f" s{seed} |" for seed in units)
    lines = [f"| {a} − method |{head} mean | {a} lower | p (one-sided) |", "|---|" + "---|" * (len(units) + 3)]
    for c in paired_comparisons(rows, scenario, a):
        mine, theirs = per_unit(rows, scenario, a), per_unit(rows, scenario, c.b)
        cells = "".join(f" {mine[u] - theirs[u]:+.2f} |" if u in theirs else " — |" for u in units)
        p = "< 0.001" if c.p_less < 0.001 else f"{c.p_less:.3f}"
        lines.append(f"| {c.b} |{cells} {c.mean_diff:+.2f} | {c.a_better}/{c.n} | {p} |")
    return "\n".join(lines)


def case_matrix(rows: list[Row], scenario: str, labels: list[str], key: str = "avg_gap") -> str:
    """Markdown: one row per method, one column per case of a scenario, mean ± std over seeds."""
    case_names = list(dict.fromkeys(r.case for r in rows if r.scenario == scenario))
    lines = ["| method | " + " | ".join(case_names) + " |", "|---|" + "---|" * len(case_names)]
    for label in labels:
        cells = []
        for case in case_names:
            values = [getattr(r, key) for r in rows if r.case == case and r.method == label]
            mean, std = mean_std(values) if values else (float("nan"), 0.0)
            cells.append(f"{mean:.2f} ± {std:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floor_ratio(rows: list[Row], scenario: str, label: str = "ltu") -> float:
    """Mean Avg. Gap of `label` over the mean gap of the independent Retrain (the noise floor)."""
    mine = [r.avg_gap for r in rows if r.scenario == scenario and r.method == label]
    floor = [r.avg_gap for r in rows if r.scenario == scenario and r.method == FLOOR]
    return statistics.fmean(mine) / max(1e-9, statistics.fmean(floor))


def render(rows: list[Row], *, methods: list[str], ablations: list[str], seeds: int) -> str:
    """Every table of a run, in the order `ltu bench` prints them (and the README quotes them).

    Per scenario: with several cases (classes) first the Avg. Gap per case, then one table per case
    (random, class N) and the ablations where there are any, then the paired table of LTU (or the
    first label) against every other row, and the floor ratio.
    """
    head = [RETRAIN, FLOOR, ORIGINAL]
    reference = "ltu" if "ltu" in methods else [*methods, *ablations][0]
    out: list[str] = []
    for scenario in dict.fromkeys(r.scenario for r in rows):
        case_names = list(dict.fromkeys(r.case for r in rows if r.scenario == scenario))
        if len(case_names) > 1:
            out += [
                f"#### {scenario} forgetting — Avg. Gap ↓ per case, {seeds} seed(s), mean ± std",
                "",
                case_matrix(rows, scenario, [FLOOR, ORIGINAL, *methods, *ablations]),
                "",
            ]
        for case in case_names:
            out += [
                f"#### {case} forgetting — {seeds} seed(s), mean ± std",
                "",
                markdown_table(rows, case, [*head, *methods]),
            ]
            if ablations:
                labels = [*head, *(["ltu"] if "ltu" in methods else []), *ablations]
                out += ["", f"#### {case} forgetting — LTU ablations", "", markdown_table(rows, case, labels)]
            out.append("")
        out += [
            f"#### {scenario} forgetting — per-seed Avg. Gap, {reference} − method (paired by seed)",
            "",
            paired_table(rows, scenario, reference),
            "",
            f"{reference} Avg. Gap / floor = {floor_ratio(rows, scenario, reference):.2f}",
            "",
        ]
    return "\n".join(out).rstrip("\n") + "\n"


def render_results(payload: dict[str, Any]) -> str:
    """`render` of a results file written by `ltu bench --json`."""
    config = payload["config"]
    return render(
        [Row.from_dict(r) for r in payload["rows"]],
        methods=[m["label"] for m in config["methods"]],
        ablations=[m["label"] for m in config["ablations"]],
        seeds=len(config["seeds"]),
    )

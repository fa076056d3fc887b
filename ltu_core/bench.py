"""The benchmark: original → Retrain → every method on the same forget sets, over seeds.

For each seed the original model is trained once on the train split; then, per scenario
(`random`: a seeded draw of `forget_count` train samples; `class`: every train sample of class
`seed mod num_classes`), the split is drawn, Retrain runs (the gold standard), a second Retrain
with another seed gives the noise floor no method can beat, "original" (no unlearning) gives the
bar every method must clear, and each method runs on the same D_f and the same D̂_r. Every row
carries UA, RA, TA, MIA-efficacy, Avg. Gap against that seed's Retrain, the method's wall time
and its ratio to Retrain's wall time measured in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ltu_core.data import BUILTIN_DATASETS, ForgetSpec, UnlearningDataset, make_split
from ltu_core.methods import RunHooks, UnlearningTask, create_method
from ltu_core.metrics import Evaluation, avg_gap, evaluate
from ltu_core.models import ArchConfig, build_model
from ltu_core.train import TrainRecipe, train_model

ORIGINAL, RETRAIN, RETRAIN_2 = "original", "retrain", "retrain (2nd seed)"
SECOND_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class MethodRun:
    """One row label of the table: a registered method with parameters."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


BASELINES = tuple(MethodRun(m, m) for m in ("ft", "ga", "rl", "l1_sparse", "salun", "scrub", "bs"))
LTU = MethodRun("ltu", "ltu")
ABLATIONS = (
    MethodRun("ltu -meta", "ltu", {"meta": False}),
    MethodRun("ltu -GH", "ltu", {"harmonization": "none"}),
    MethodRun("ltu -meta -GH", "ltu", {"meta": False, "harmonization": "none"}),
    MethodRun("ltu 2nd-order", "ltu", {"second_order": True}),
)

# Chosen on the validation class (class 0 of seed 0, bench/results/tuning-class.json): forgetting
# a whole class is a different regime from forgetting random samples (Retrain's UA is 100), so
# every method gets its own setting. LTU's "looks unseen" stop rule compares D_f with unseen
# samples of *known* classes, which a never-learned class does not resemble; here it runs a fixed
# number of passes instead.
CLASS_PARAMS: dict[str, dict[str, Any]] = {
    "ltu": {"stop_rule": "none", "forget_loss": "nonmember", "lr": 0.02, "max_passes": 4.0},
    "ga": {"lr": 0.1, "epochs": 2.0},
    "l1_sparse": {"alpha": 0.03},
    "scrub": {"lr": 0.01, "max_epochs": 2},
    "bs": {"lr": 2e-4},
}


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run: data, model, recipe, seeds, scenarios and the methods to compare."""

    dataset: str = "mnist5k"
    dataset_args: dict[str, Any] = field(default_factory=lambda: {"train_size": 1000})
    arch: ArchConfig = ArchConfig("resnet18", num_classes=10, in_chans=1, img_size=28, width=0.25, small_stem=False)
    recipe: TrainRecipe = TrainRecipe(epochs=40, batch_size=64, lr=0.05)
    seeds: tuple[int, ...] = (1, 2, 3)
    scenarios: tuple[str, ...] = ("random", "class")
    forget_count: int = 100
    retain_fraction: float = 0.1
    methods: tuple[MethodRun, ...] = (LTU, *BASELINES)
    ablations: tuple[MethodRun, ...] = ABLATIONS
    scenario_params: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {"class": CLASS_PARAMS})

    def params(self, run: MethodRun, scenario: str) -> dict[str, Any]:
        """A row's method parameters in a scenario: the row's own, then the scenario's override."""
        return {**self.scenario_params.get(scenario, {}).get(run.method, {}), **run.params}

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for the results file."""
        out = asdict(self)
        out["arch"] = asdict(self.arch)
        return out


PRESETS: dict[str, BenchConfig] = {
    # Seconds: the whole pipeline on sklearn digits with a tiny model and tiny method settings.
    "smoke": BenchConfig(
        dataset="digits",
        dataset_args={},
        arch=ArchConfig("resnet18", num_classes=10, in_chans=1, img_size=8, width=0.125),
        recipe=TrainRecipe(epochs=4, batch_size=64, lr=0.05),
        seeds=(1,),
        scenarios=("random",),
        forget_count=40,
    ),
    # The README's table: the MNIST-5k regime in which the original memorises (README, "Benchmark").
    "full": BenchConfig(),
}


@dataclass(frozen=True)
class Row:
    """One method on one seed and scenario."""

    method: str
    scenario: str
    seed: int
    ua: float
    ra: float
    ta: float
    mia: float
    avg_gap: float
    seconds: float
    rte_ratio: float
    evaluation: dict[str, float]
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        out = asdict(self)
        for k in ("ua", "ra", "ta", "mia", "avg_gap", "seconds", "rte_ratio"):
            out[k] = round(out[k], 4)
        return out


BenchProgress = Callable[[str], None]
"""Called once per finished unit of work with a short description."""


def count_units(cfg: BenchConfig) -> int:
    """Units of work `run_bench` reports: one training per seed, then per scenario 2 retrains + methods."""
    per_scenario = 2 + len(cfg.methods) + len(cfg.ablations)
    return len(cfg.seeds) * (1 + len(cfg.scenarios) * per_scenario)


def load_dataset(cfg: BenchConfig) -> UnlearningDataset:
    """The built-in dataset the config names."""
    return BUILTIN_DATASETS[cfg.dataset](**cfg.dataset_args)


def forget_spec(scenario: str, seed: int, cfg: BenchConfig, num_classes: int) -> ForgetSpec:
    """The forget set of a scenario for a seed."""
    if scenario == "random":
        return ForgetSpec(kind="random", count=cfg.forget_count, seed=seed)
    if scenario == "class":
        return ForgetSpec(kind="class", label=seed % num_classes, seed=seed)
    raise ValueError(f"unknown scenario {scenario!r}; use 'random' or 'class'")


def run_bench(
    cfg: BenchConfig,
    *,
    device: torch.device | str = "cpu",
    progress: BenchProgress = lambda _msg: None,
    dataset: UnlearningDataset | None = None,
) -> list[Row]:
    """Run the benchmark and return every row (original, both retrains, methods, ablations)."""
    data = dataset if dataset is not None else load_dataset(cfg)
    rows: list[Row] = []
    train_set = data.view(data.split_indices("train"))
    for seed in cfg.seeds:
        original = build_model(cfg.arch, seed=seed)
        train_model(original, train_set, cfg.recipe, seed=seed, device=device)
        progress(f"seed {seed}: original trained")
        for scenario in cfg.scenarios:
            split = make_split(
                data, forget_spec(scenario, seed, cfg, data.num_classes), retain_fraction=cfg.retain_fraction, seed=seed
            )
            task = UnlearningTask.from_split(original, cfg.arch, split, cfg.recipe, seed=seed, device=device)
            retrain = create_method("retrain").run(task)
            gold = evaluate(retrain.model, split, device=device, seed=seed)
            progress(f"seed {seed} {scenario}: retrain")

            def row(label: str, ev: Evaluation, seconds: float, details: dict[str, Any]) -> Row:
                return Row(
                    method=label,
                    scenario=scenario,
                    seed=seed,
                    ua=ev.ua,
                    ra=ev.ra,
                    ta=ev.ta,
                    mia=ev.mia,
                    avg_gap=avg_gap(ev, gold),
                    seconds=seconds,
                    rte_ratio=seconds / retrain.seconds,
                    evaluation=ev.as_dict(),
                    details=details,
                )

            rows.append(row(RETRAIN, gold, retrain.seconds, retrain.details))
            second = create_method("retrain").run(replace(task, seed=seed + SECOND_SEED_OFFSET))
            rows.append(
                row(RETRAIN_2, evaluate(second.model, split, device=device, seed=seed), second.seconds, second.details)
            )
            progress(f"seed {seed} {scenario}: retrain (2nd seed)")
            rows.append(row(ORIGINAL, evaluate(original, split, device=device, seed=seed), 0.0, {}))
            for run in (*cfg.methods, *cfg.ablations):
                params = cfg.params(run, scenario)
                result = create_method(run.method, **params).run(task, RunHooks())
                ev = evaluate(result.model, split, device=device, seed=seed)
                rows.append(row(run.label, ev, result.seconds, {"params": params, **result.details}))
                progress(f"seed {seed} {scenario}: {run.label}")
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarize(rows: list[Row], scenario: str, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Mean and std per method over seeds for one scenario, in first-seen order."""
    chosen = [r for r in rows if r.scenario == scenario]
    order = labels or list(dict.fromkeys(r.method for r in chosen))
    out = []
    for label in order:
        group = [r for r in chosen if r.method == label]
        if not group:
            continue
        stats = {
            k: _mean_std([getattr(r, k) for r in group])
            for k in ("ua", "ra", "ta", "mia", "avg_gap", "seconds", "rte_ratio")
        }
        out.append({"method": label, "n": len(group), **stats})
    return out


def markdown_table(rows: list[Row], scenario: str, labels: list[str] | None = None) -> str:
    """Mean ± std table of one scenario (lower Avg. Gap is better; RTE as a share of Retrain's)."""
    lines = [
        "| method | UA | RA | TA | MIA | Avg. Gap ↓ | seconds | RTE / Retrain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summarize(rows, scenario, labels):

        def fmt(key: str, digits: int = 2) -> str:
            mean, std = s[key]
            return f"{mean:.{digits}f} ± {std:.{digits}f}"

        ratio = s["rte_ratio"][0]
        rte = "—" if s["method"] == ORIGINAL else ("1 (ref)" if s["method"] == RETRAIN else f"{100 * ratio:.1f} %")
        lines.append(
            f"| {s['method']} | {fmt('ua')} | {fmt('ra')} | {fmt('ta')} | {fmt('mia')} | {fmt('avg_gap')} "
            f"| {fmt('seconds', 1)} | {rte} |"
        )
    return "\n".join(lines)

"""The evaluation protocol: originals, an independent-Retrain gold standard, every method, per case.

Per seed the original is trained once (init and data order from the seed). A *case* is one forget
set: in the `random` scenario a seeded draw per seed, in the `class` scenario every train sample
of one class of `cfg.classes` (the same classes for every seed). Per case, `gold_retrains`
independent Retrains (each with its own init and data order, never the original's) give the gold
standard, their mean; one more independent Retrain, scored against that mean, is the noise floor
no method can be expected to beat. Every method then runs on the same D_f and D̂_r from the
seed's original. Each row carries UA, RA, TA, MIA-efficacy and Avg. Gap against the gold mean,
the UA left after a relearning attack, the per-sample audit's TPR on D_f at a low FPR, the wall
time and its ratio to the mean Retrain's from the same run.

A run is deterministic for a fixed seed list and thread count: every RNG is seeded, torch runs
with deterministic algorithms, and `environment()` records what a rerun must match.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ltu_core.audit.scores import logit_confidence
from ltu_core.bench.config import BenchConfig
from ltu_core.data import (
    BUILTIN_DATASETS,
    ForgetSpec,
    UnlearningDataset,
    UnlearningSplit,
    audit_rows,
    draw_control,
    make_split,
)
from ltu_core.methods import RunHooks, UnlearningTask, create_method
from ltu_core.metrics import HEADLINE, Evaluation, avg_gap, evaluate_posteriors
from ltu_core.models import build_model, predict, predict_split
from ltu_core.train import train_model

ORIGINAL, RETRAIN, FLOOR = "original", "retrain", "retrain (independent)"
CONTROL_SIZE = 1000  # never-trained samples the per-sample audit column thresholds against


@dataclass(frozen=True)
class Case:
    """One forget set of a scenario."""

    scenario: str
    name: str  # "random" or "class 3": the unit a table reports on
    key: str  # identifies the forget set; Retrains of one key are shared across seeds
    spec: ForgetSpec


@dataclass(frozen=True)
class Row:
    """One method on one seed and case."""

    method: str
    scenario: str
    case: str
    seed: int
    ua: float
    ra: float
    ta: float
    mia: float
    avg_gap: float
    relearn_ua: float  # UA after the relearning attack (Retrain's under the same attack is the target)
    audit_tpr: float  # share of D_f above the never-trained controls' (1 − audit_fpr) quantile
    seconds: float
    rte_ratio: float
    evaluation: dict[str, float]
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        out = asdict(self)
        for k in ("ua", "ra", "ta", "mia", "avg_gap", "relearn_ua", "audit_tpr", "seconds", "rte_ratio"):
            out[k] = round(out[k], 4)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """A row read back from a results file."""
        return cls(**data)


BenchProgress = Callable[[str], None]
"""Called once per finished unit of work with a short description."""


def cases(cfg: BenchConfig, seed: int) -> list[Case]:
    """The forget sets of one seed, in scenario order."""
    out = []
    for scenario in cfg.scenarios:
        if scenario == "random":
            out.append(Case("random", "random", f"random:{cfg.forget_count}:{seed}", random_spec(cfg, seed)))
        else:
            out.extend(
                Case("class", f"class {c}", f"class:{c}", ForgetSpec(kind="class", label=c)) for c in cfg.classes
            )
    return out


def random_spec(cfg: BenchConfig, seed: int) -> ForgetSpec:
    """The random scenario's forget draw for a seed."""
    return ForgetSpec(kind="random", count=cfg.forget_count, seed=seed)


def count_units(cfg: BenchConfig) -> int:
    """Units of work `run_bench` reports: trainings (originals and Retrains) and method runs."""
    retrains = cfg.gold_retrains + 1
    per_seed_cases = len(cases(cfg, cfg.seeds[0]))
    shared = len(cfg.classes) if "class" in cfg.scenarios else 0  # class Retrains are shared across seeds
    methods = len(cfg.methods) + len(cfg.ablations)
    random_retrains = retrains * len(cfg.seeds) if "random" in cfg.scenarios else 0
    return len(cfg.seeds) * (1 + per_seed_cases * methods) + random_retrains + shared * retrains


def load_dataset(cfg: BenchConfig) -> UnlearningDataset:
    """The built-in dataset the config names (a dataset from disk is passed to `run_bench`)."""
    if cfg.dataset not in BUILTIN_DATASETS:
        raise ValueError(f"{cfg.dataset!r} is not a built-in dataset; open it and pass dataset=")
    return BUILTIN_DATASETS[cfg.dataset](**cfg.dataset_args)


def retrain_seed(key: str, index: int) -> int:
    """The seed of the index-th independent Retrain of a forget set: its own init and data order."""
    digest = hashlib.sha256(f"retrain:{key}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def environment(cfg: BenchConfig) -> dict[str, Any]:
    """What a rerun must match to reproduce a results file row for row."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": cfg.threads,
        "deterministic_algorithms": True,
    }


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the duration; restored afterwards."""
    old_threads, old_mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_mode)


def relearn(model: torch.nn.Module, task: UnlearningTask, cfg: BenchConfig, seed: int) -> torch.nn.Module:
    """The relearning attack: a few SGD steps on retained data (D̂_r), BatchNorm frozen."""
    attacked = copy.deepcopy(model).to(task.device).eval().requires_grad_(True)
    opt = torch.optim.SGD(attacked.parameters(), lr=cfg.relearn_lr, momentum=0.9)
    x, y = task.retain_subset.tensors()
    generator = torch.Generator().manual_seed(seed)
    batch = min(32, len(y))
    for _ in range(cfg.relearn_steps):
        idx = torch.randperm(len(y), generator=generator)[:batch]
        loss = F.cross_entropy(attacked(x[idx].to(task.device)), y[idx].to(task.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return attacked.eval().requires_grad_(False)


@dataclass(frozen=True)
class Measurement:
    """Everything the protocol reads off one model for one case."""

    evaluation: Evaluation
    relearn_ua: float
    audit_tpr: float


class _Measurer:
    """Scores models on one split: the shared protocol, the relearning attack and the audit column."""

    def __init__(self, split: UnlearningSplit, task: UnlearningTask, cfg: BenchConfig, seed: int) -> None:
        self.split, self.task, self.cfg, self.seed = split, task, cfg, seed
        controls = draw_control(audit_rows(split), CONTROL_SIZE, seed)
        self.controls = split.dataset.view(controls)

    def __call__(self, model: torch.nn.Module) -> Measurement:
        device = self.task.device
        post = predict_split(model, self.split, names=("forget", "retain", "test"), device=device)
        ev = evaluate_posteriors(post, self.split, seed=self.seed)
        phi_f = logit_confidence(post["forget"])
        phi_c = logit_confidence(predict(model, self.controls, device=device))
        threshold = np.quantile(phi_c, 1.0 - self.cfg.audit_fpr)
        attacked = relearn(model, self.task, self.cfg, self.seed)
        relearned = predict(attacked, self.task.forget, device=device)
        return Measurement(ev, 100.0 - relearned.accuracy(), 100.0 * float(np.mean(phi_f > threshold)))


def mean_evaluation(evals: list[Evaluation]) -> Evaluation:
    """The field-wise mean of several evaluations (the gold standard of independent Retrains)."""
    fields = asdict(evals[0]).keys()
    return Evaluation(**{k: float(np.mean([getattr(e, k) for e in evals])) for k in fields})


@dataclass
class _Gold:
    """A case's independent Retrains: the models of the gold mean and the floor model."""

    models: list[torch.nn.Module]
    seconds: list[float]
    floor: torch.nn.Module
    floor_seconds: float


def run_bench(
    cfg: BenchConfig,
    *,
    device: torch.device | str = "cpu",
    progress: BenchProgress = lambda _msg: None,
    dataset: UnlearningDataset | None = None,
) -> list[Row]:
    """Run the benchmark and return every row (gold, floor, original, methods, ablations)."""
    data = dataset if dataset is not None else load_dataset(cfg)
    rows: list[Row] = []
    golds: dict[str, _Gold] = {}  # per forget-set key: class Retrains serve every seed
    with deterministic(cfg.threads):
        for seed in cfg.seeds:
            original = build_model(cfg.arch, seed=seed)
            train_model(original, data.view(data.split_indices("train")), cfg.recipe, seed=seed, device=device)
            progress(f"seed {seed}: original trained")
            for case in cases(cfg, seed):
                split = make_split(data, case.spec, retain_fraction=cfg.retain_fraction, seed=seed)
                task = UnlearningTask.from_split(original, cfg.arch, split, cfg.recipe, seed=seed, device=device)
                if case.key not in golds:
                    golds[case.key] = _independent_retrains(task, case, cfg, progress)
                rows.extend(_case_rows(cfg, case, seed, split, task, golds[case.key], original, progress))
    return rows


def _independent_retrains(task: UnlearningTask, case: Case, cfg: BenchConfig, progress: BenchProgress) -> _Gold:
    runs = []
    for j in range(cfg.gold_retrains + 1):
        runs.append(create_method("retrain").run(replace(task, seed=retrain_seed(case.key, j))))
        progress(f"{case.key}: independent retrain {j + 1}")
    *gold, floor = runs
    return _Gold([r.model for r in gold], [r.seconds for r in gold], floor.model, floor.seconds)


def _case_rows(
    cfg: BenchConfig,
    case: Case,
    seed: int,
    split: UnlearningSplit,
    task: UnlearningTask,
    gold: _Gold,
    original: torch.nn.Module,
    progress: BenchProgress,
) -> list[Row]:
    measure = _Measurer(split, task, cfg, seed)
    gold_runs = [measure(m) for m in gold.models]
    reference = mean_evaluation([g.evaluation for g in gold_runs])
    retrain_seconds = float(np.mean(gold.seconds))

    def row(label: str, m: Measurement, seconds: float, details: dict[str, Any]) -> Row:
        ev = m.evaluation
        return Row(
            method=label,
            scenario=case.scenario,
            case=case.name,
            seed=seed,
            ua=ev.ua,
            ra=ev.ra,
            ta=ev.ta,
            mia=ev.mia,
            avg_gap=avg_gap(ev, reference),
            relearn_ua=m.relearn_ua,
            audit_tpr=m.audit_tpr,
            seconds=seconds,
            rte_ratio=seconds / retrain_seconds,
            evaluation=ev.as_dict(),
            details=details,
        )

    gold_mean = Measurement(
        reference,
        float(np.mean([g.relearn_ua for g in gold_runs])),
        float(np.mean([g.audit_tpr for g in gold_runs])),
    )
    spread = {k: round(float(np.std([getattr(g.evaluation, k) for g in gold_runs])), 4) for k in HEADLINE}
    out = [
        row(RETRAIN, gold_mean, retrain_seconds, {"retrains": len(gold_runs), "std_between_retrains": spread}),
        row(FLOOR, measure(gold.floor), gold.floor_seconds, {}),
        row(ORIGINAL, measure(original), 0.0, {}),
    ]
    for run in (*cfg.methods, *cfg.ablations):
        params = cfg.params(run, case.scenario)
        result = create_method(run.method, **params).run(task, RunHooks())
        out.append(row(run.label, measure(result.model), result.seconds, {"params": params, **result.details}))
        progress(f"seed {seed} {case.name}: {run.label}")
    return out

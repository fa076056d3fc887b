"""Sequential erasures: a model unlearned request after request, judged on everything erased so far.

Per seed the original is trained once, exactly as `run_bench` trains it. A seeded order of the
train split's data subjects (numpy PCG64) gives `subjects_per_step` new subjects per step. Every
method starts from the original; step i erases its subjects' train samples with the split
make_split(subjects, seed=seed·1000+i, exclude=every row erased in steps < i), so an erased row
belongs to no later D_f, D_r or D̂_r, and the method runs on the model the previous step left.
At each checkpoint step the current model is scored against the *cumulative* erasure: a split
whose D_f is every row erased so far and whose D_r is the rest of the train split. The gold
standard there is the mean Evaluation of `gold_retrains` independent Retrains on that cumulative
D_r (each with its own init and data order, `retrain_seed(f"sequential:{seed}:{step}", j)`); one
more independent Retrain, scored against the same mean, is the floor. The Retrains are per
checkpoint and shared by every method.

Rows: the gold mean (`retrain`, Avg. Gap 0), the floor (`retrain (independent)`), the untouched
original, then every method, per seed and checkpoint. A method's `seconds` is its cumulative
unlearning wall time over the steps so far; the gold's and the floor's are one Retrain's at that
checkpoint (the cost of retraining once, not of retraining after every step).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from ltu_core.bench.config import BenchConfig
from ltu_core.bench.protocol import (
    FLOOR,
    ORIGINAL,
    RETRAIN,
    BenchProgress,
    deterministic,
    load_dataset,
    mean_evaluation,
    retrain_seed,
)
from ltu_core.bench.report import mean_std
from ltu_core.data import ForgetSpec, UnlearningDataset, UnlearningSplit, make_split
from ltu_core.methods import RunHooks, UnlearningTask, create_method
from ltu_core.metrics import Evaluation, avg_gap, evaluate
from ltu_core.models import build_model
from ltu_core.train import train_model

SCENARIO = "random"  # methods run with the random scenario's parameters


@dataclass(frozen=True)
class SequentialRow:
    """One model at one checkpoint of one seed's erasure sequence, against the cumulative gold."""

    method: str
    seed: int
    step: int
    forgotten: int  # samples erased in steps 1..step
    ua: float
    ra: float
    ta: float
    mia: float
    avg_gap: float  # against the mean of the checkpoint's gold Retrains
    seconds: float  # methods: cumulative unlearning wall time; retrain rows: one Retrain
    evaluation: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready row."""
        out = asdict(self)
        for k in ("ua", "ra", "ta", "mia", "avg_gap", "seconds"):
            out[k] = round(out[k], 4)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequentialRow:
        """A row read back from a results file."""
        return cls(**data)


def subject_order(data: UnlearningDataset, seed: int) -> np.ndarray:
    """The train split's data subjects (those with at least one train sample) in the seed's order."""
    subjects = np.unique(data.subject_ids[data.split_indices("train")])
    return np.random.Generator(np.random.PCG64(seed)).permutation(subjects)


def sequential_splits(
    cfg: BenchConfig, data: UnlearningDataset, *, steps: int, subjects_per_step: int, seed: int
) -> list[UnlearningSplit]:
    """The split of every step: its new subjects, with every row erased in earlier steps excluded."""
    order = subject_order(data, seed)
    if steps < 1 or subjects_per_step < 1:
        raise ValueError("steps and subjects_per_step must be at least 1")
    if steps * subjects_per_step > len(order):
        raise ValueError(
            f"{steps} steps of {subjects_per_step} subjects need {steps * subjects_per_step}; "
            f"the train split has {len(order)}"
        )
    splits: list[UnlearningSplit] = []
    erased = np.empty(0, dtype=np.int64)
    for i in range(1, steps + 1):
        ids = tuple(order[(i - 1) * subjects_per_step : i * subjects_per_step].tolist())
        split = make_split(
            data,
            ForgetSpec(kind="subjects", ids=ids),
            retain_fraction=cfg.retain_fraction,
            seed=seed * 1000 + i,
            exclude=erased,
        )
        splits.append(split)
        erased = np.union1d(erased, split.forget)
    return splits


def cumulative_split(cfg: BenchConfig, data: UnlearningDataset, erased: np.ndarray, *, seed: int) -> UnlearningSplit:
    """The checkpoint's judging split: D_f = every row erased so far, D_r = the rest of the train split."""
    spec = ForgetSpec(kind="samples", ids=tuple(data.sample_ids[np.sort(erased)].tolist()))
    return make_split(data, spec, retain_fraction=cfg.retain_fraction, seed=seed)


@dataclass(frozen=True)
class _Checkpoint:
    step: int
    split: UnlearningSplit
    reference: Evaluation  # the gold: mean Evaluation of the independent Retrains
    gold: list[Evaluation]
    gold_seconds: float
    floor: Evaluation
    floor_seconds: float


def _checkpoint_list(checkpoints: Sequence[int], steps: int) -> list[int]:
    chosen = sorted(set(checkpoints))
    if not chosen or chosen[0] < 1 or chosen[-1] > steps:
        raise ValueError(f"checkpoints must be non-empty steps between 1 and {steps}, got {list(checkpoints)}")
    return chosen


def run_sequential(
    cfg: BenchConfig,
    *,
    steps: int = 10,
    subjects_per_step: int = 3,
    checkpoints: Sequence[int] = (1, 5, 10),
    seed: int,
    dataset: UnlearningDataset | None = None,
    device: torch.device | str = "cpu",
    progress: BenchProgress = lambda _msg: None,
) -> list[SequentialRow]:
    """One seed's erasure sequence for every method of `cfg`; rows per checkpoint (see module docstring)."""
    chosen = _checkpoint_list(checkpoints, steps)
    reserved = {RETRAIN, FLOOR, ORIGINAL} & {run.label for run in cfg.methods}
    if reserved:
        raise ValueError(f"method label(s) {sorted(reserved)} are reserved for the reference rows")
    data = dataset if dataset is not None else load_dataset(cfg)
    with deterministic(cfg.threads):
        original = build_model(cfg.arch, seed=seed)
        train_model(original, data.view(data.split_indices("train")), cfg.recipe, seed=seed, device=device)
        progress(f"seed {seed}: original trained")
        splits = sequential_splits(cfg, data, steps=steps, subjects_per_step=subjects_per_step, seed=seed)
        marks = [_gold(cfg, data, original, splits, step, seed, device, progress) for step in chosen]

        def row(label: str, mark: _Checkpoint, ev: Evaluation, seconds: float) -> SequentialRow:
            return SequentialRow(
                method=label,
                seed=seed,
                step=mark.step,
                forgotten=len(mark.split.forget),
                ua=ev.ua,
                ra=ev.ra,
                ta=ev.ta,
                mia=ev.mia,
                avg_gap=avg_gap(ev, mark.reference),
                seconds=seconds,
                evaluation=ev.as_dict(),
            )

        rows: dict[tuple[int, str], SequentialRow] = {}
        for mark in marks:
            rows[mark.step, RETRAIN] = row(RETRAIN, mark, mark.reference, mark.gold_seconds)
            rows[mark.step, FLOOR] = row(FLOOR, mark, mark.floor, mark.floor_seconds)
            rows[mark.step, ORIGINAL] = row(
                ORIGINAL, mark, evaluate(original, mark.split, device=device, seed=seed), 0.0
            )
        by_step = {mark.step: mark for mark in marks}
        for run in cfg.methods:
            method = create_method(run.method, **cfg.params(run, SCENARIO))
            model, seconds = original, 0.0
            for i, split in enumerate(splits[: chosen[-1]], start=1):
                task = UnlearningTask.from_split(
                    model, cfg.arch, split, cfg.recipe, seed=seed * 1000 + i, device=device
                )
                result = method.run(task, RunHooks())
                model, seconds = result.model, seconds + result.seconds
                progress(f"seed {seed} step {i}: {run.label}")
                if i in by_step:
                    ev = evaluate(model, by_step[i].split, device=device, seed=seed)
                    rows[i, run.label] = row(run.label, by_step[i], ev, seconds)
    labels = [RETRAIN, FLOOR, ORIGINAL, *(run.label for run in cfg.methods)]
    return [rows[step, label] for step in chosen for label in labels]


def _gold(
    cfg: BenchConfig,
    data: UnlearningDataset,
    original: torch.nn.Module,
    splits: list[UnlearningSplit],
    step: int,
    seed: int,
    device: torch.device | str,
    progress: BenchProgress,
) -> _Checkpoint:
    """The checkpoint's cumulative split and its independent Retrains (gold models and the floor), scored."""
    erased = np.concatenate([s.forget for s in splits[:step]])
    split = cumulative_split(cfg, data, erased, seed=seed * 1000 + step)
    task = UnlearningTask.from_split(original, cfg.arch, split, cfg.recipe, seed=seed, device=device)
    key = f"sequential:{seed}:{step}"
    evals, seconds = [], []
    for j in range(cfg.gold_retrains + 1):
        result = create_method("retrain").run(replace(task, seed=retrain_seed(key, j)))
        evals.append(evaluate(result.model, split, device=device, seed=seed))
        seconds.append(result.seconds)
        progress(f"seed {seed} step {step}: independent retrain {j + 1}/{cfg.gold_retrains + 1}")
    *gold, floor = evals
    return _Checkpoint(
        step=step,
        split=split,
        reference=mean_evaluation(gold),
        gold=gold,
        gold_seconds=float(np.mean(seconds[:-1])),
        floor=floor,
        floor_seconds=seconds[-1],
    )


def count_sequential_units(cfg: BenchConfig, *, steps: int, checkpoints: Sequence[int]) -> int:
    """Progress messages `run_sequential` sends for one seed: original, Retrains, method steps."""
    chosen = _checkpoint_list(checkpoints, steps)
    return 1 + len(chosen) * (cfg.gold_retrains + 1) + len(cfg.methods) * chosen[-1]


# --- tables -------------------------------------------------------------------------------------------


def sequential_summary(rows: list[SequentialRow], labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Per method and checkpoint: Avg. Gap mean and std over seeds, and its ratio to the floor's mean gap.

    The ratio is mean gap / mean floor gap at the same checkpoint (as `report.floor_ratio`); the gold
    row (`retrain`, gap 0 by construction) is left out.
    """
    steps = sorted({r.step for r in rows})
    order = labels or [m for m in dict.fromkeys(r.method for r in rows) if m != RETRAIN]
    floor = {s: statistics.fmean(r.avg_gap for r in rows if r.method == FLOOR and r.step == s) for s in steps}
    out = []
    for label in order:
        cells = {}
        for s in steps:
            gaps = [r.avg_gap for r in rows if r.method == label and r.step == s]
            if gaps:
                mean, std = mean_std(gaps)
                cells[s] = {"n": len(gaps), "mean": mean, "std": std, "floor_ratio": mean / max(1e-9, floor[s])}
        if cells:
            out.append({"method": label, "steps": cells})
    return out


def sequential_table(rows: list[SequentialRow], labels: list[str] | None = None) -> str:
    """Markdown: per method, Avg. Gap at each checkpoint (mean ± std over seeds) and its ratio to the floor's."""
    steps = sorted({r.step for r in rows})
    forgotten = {s: statistics.fmean(r.forgotten for r in rows if r.step == s and r.method == FLOOR) for s in steps}
    head = " | ".join(f"step {s} ({forgotten[s]:.1f} forgotten): Avg. Gap ↓ | ÷ floor" for s in steps)
    lines = [f"| method | {head} |", "|---|" + "---|---|" * len(steps)]
    for entry in sequential_summary(rows, labels):
        cells = []
        for s in steps:
            cell = entry["steps"].get(s)
            if cell is None:
                cells.append("— | —")
                continue
            ratio = "1 (ref)" if entry["method"] == FLOOR else f"{cell['floor_ratio']:.2f}×"
            cells.append(f"{cell['mean']:.2f} ± {cell['std']:.2f} | {ratio}")
        lines.append(f"| {entry['method']} | {' | '.join(cells)} |")
    return "\n".join(lines)

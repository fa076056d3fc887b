"""Verification of forgetting: does D_f still look like training data to an attacker?

For a model that never saw D_f, D_f is just unseen data, so any membership score of its samples
is distributed like the score of other unseen samples. The verifier scores every sample by its
logit-style margin log p_y − log max_{c≠y} p_c (the signal confidence-based attacks threshold,
kept unsaturated near p_y = 1) and ranks each forget sample among a *control* set the model
never trained on (D_ref). Under "forgotten", those percentile ranks are uniform, so their mean
has expectation 1/2 and standard deviation 1/√(12·n). Forgetting passes when the mean rank is
not significantly high: mean ≤ 1/2 + z/√(12·n) (one-sided). Unlike a thresholded attacker's
non-member rate, this keeps its power on a single subject's handful of samples: a fully
memorised forget set ranks near 1 and fails from n = 2 at z = 2. Below that the test cannot fail
even a model that forgot nothing, and the verdict says `conclusive: false` (and does not pass).

Utility passes when test accuracy fell by at most `max_test_drop` points against the original.
The SVC attacker of the evaluation protocol (MIA-efficacy on D_f and on the control) is reported
beside the verdict, as information: a rate on a few samples moves in steps of 100/n points.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ltu_core.data.selection import UnlearningSplit
from ltu_core.mia.svc import SvcAttacker
from ltu_core.models.inference import Posteriors, predict_split


@dataclass(frozen=True)
class VerificationThresholds:
    """z: one-sided z-score of the forgetting test; max_test_drop: allowed TA loss in points."""

    z: float = 2.0
    max_test_drop: float = 5.0


@dataclass(frozen=True)
class Verdict:
    """The outcome and every number behind it (rates and accuracies in percent)."""

    passed: bool
    forgetting_passed: bool
    utility_passed: bool
    conclusive: bool  # False: D_f is too small for the forgetting test to fail at all
    forget_mean_rank: float  # mean percentile of D_f's margins among the control's, in [0, 1]
    rank_threshold: float  # 1/2 + z/√(12·n): pass at or below
    n_forget: int
    n_control: int
    forget_nonmember_rate: float  # SVC attacker: share of D_f called non-member
    control_nonmember_rate: float  # SVC attacker: share of the control called non-member
    test_accuracy: float
    original_test_accuracy: float
    thresholds: VerificationThresholds

    def as_dict(self) -> dict:
        """JSON-ready."""
        out = asdict(self)
        out["thresholds"] = asdict(self.thresholds)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def margin(post: Posteriors) -> np.ndarray:
    """log p_y − log max_{c≠y} p_c per sample (float64)."""
    probs = post.probs.double().clamp_min(1e-300)
    true = probs.gather(1, post.labels[:, None]).squeeze(1)
    other = probs.scatter(1, post.labels[:, None], 0.0).max(1).values.clamp_min(1e-300)
    return torch.nan_to_num(torch.log(true) - torch.log(other), nan=0.0).numpy()


def percentile_ranks(scores: np.ndarray, control: np.ndarray) -> np.ndarray:
    """For each score, the share of `control` below it (ties count half), in [0, 1]."""
    ordered = np.sort(control)
    below = np.searchsorted(ordered, scores, side="left")
    at_or_below = np.searchsorted(ordered, scores, side="right")
    return (below + at_or_below) / (2.0 * len(ordered))


def mean_percentile_rank(scores: np.ndarray, control: np.ndarray) -> float:
    """Mean of `percentile_ranks`: the verdict's statistic."""
    return float(np.mean(percentile_ranks(scores, control)))


def verify_forgetting(
    *,
    retain: Posteriors,
    test: Posteriors,
    forget: Posteriors,
    control: Posteriors,
    original_test_accuracy: float,
    thresholds: VerificationThresholds = VerificationThresholds(),
    seed: int = 0,
    attacker: SvcAttacker | None = None,
) -> Verdict:
    """Verdict for one model; all posteriors come from that model.

    `attacker`: the confidence SvcAttacker already fit on these retain and test posteriors, if any.
    """
    n = len(forget)
    if n == 0 or len(control) == 0:
        raise ValueError("verification needs at least one forget and one control sample")
    threshold = 0.5 + thresholds.z / math.sqrt(12.0 * n)
    conclusive = threshold < 1.0  # a mean rank is at most 1: above that, nothing can fail
    attacker = attacker or SvcAttacker(retain, test, feature="confidence", seed=seed)
    mean_rank = mean_percentile_rank(margin(forget), margin(control))
    forgetting_ok = conclusive and mean_rank <= threshold
    ta = test.accuracy()
    utility_ok = ta >= original_test_accuracy - thresholds.max_test_drop
    return Verdict(
        passed=forgetting_ok and utility_ok,
        forgetting_passed=forgetting_ok,
        utility_passed=utility_ok,
        conclusive=conclusive,
        forget_mean_rank=mean_rank,
        rank_threshold=threshold,
        n_forget=n,
        n_control=len(control),
        forget_nonmember_rate=attacker.nonmember_rate(forget),
        control_nonmember_rate=attacker.nonmember_rate(control),
        test_accuracy=ta,
        original_test_accuracy=original_test_accuracy,
        thresholds=thresholds,
    )


def verify_model(
    model: nn.Module,
    split: UnlearningSplit,
    *,
    original_test_accuracy: float,
    thresholds: VerificationThresholds = VerificationThresholds(),
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Verdict:
    """Verdict for `model` on a split's sets (control = D_ref, never trained on)."""
    post = predict_split(model, split, device=device)
    return verify_forgetting(
        retain=post["retain"],
        test=post["test"],
        forget=post["forget"],
        control=post["reference"],
        original_test_accuracy=original_test_accuracy,
        thresholds=thresholds,
        seed=seed,
    )


def score_summary(forget: Posteriors, control: Posteriors, *, points: int = 200, bins: int = 24) -> dict:
    """The verifier's member scores, compact enough for a request record (dashboards plot it).

    The forget set's margins sorted, each beside its percentile rank among the control (at most
    `points` evenly spaced order statistics), the mean rank the verdict tests, and a histogram of
    the control's margins on bins that also cover the forget margins. Plain JSON values.
    """
    f, c = margin(forget), margin(control)
    ranks = percentile_ranks(f, c)
    order = np.argsort(f)  # sorting both keeps each margin beside its rank
    keep = np.unique(np.linspace(0, len(f) - 1, min(len(f), points)).round().astype(int))
    edges = np.histogram_bin_edges(np.concatenate([f, c]), bins=bins)
    counts, _ = np.histogram(c, bins=edges)
    return {
        "n_forget": len(f),
        "n_control": len(c),
        "forget": [round(float(v), 4) for v in f[order][keep]],
        "forget_ranks": [round(float(v), 4) for v in ranks[order][keep]],
        "mean_rank": round(float(ranks.mean()), 4),
        "control_histogram": {"edges": [round(float(v), 4) for v in edges], "counts": [int(v) for v in counts]},
    }

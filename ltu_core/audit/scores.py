"""What the audit scores each sample by: how member-like it looks to one model.

- `margin` (the rank tier): log p_y − log max_{c≠y} p_c, the signal confidence attacks threshold,
  kept unsaturated near p_y = 1.
- `logit_confidence` (the likelihood-ratio tier): LiRA's φ = log p_y − log Σ_{c≠y} p_c, the
  logit-scaled confidence whose distribution over models is close to Gaussian (Carlini et al. 2022).
- `score_summary`: the forget set's margins beside the control's, compact enough for a request
  record (dashboards plot it).
"""

from __future__ import annotations

import numpy as np
import torch

from ltu_core.models.inference import Posteriors


def margin(post: Posteriors) -> np.ndarray:
    """log p_y − log max_{c≠y} p_c per sample (float64)."""
    probs = post.probs.double().clamp_min(1e-300)
    true = probs.gather(1, post.labels[:, None]).squeeze(1)
    other = probs.scatter(1, post.labels[:, None], 0.0).max(1).values.clamp_min(1e-300)
    return torch.nan_to_num(torch.log(true) - torch.log(other), nan=0.0).numpy()


def logit_confidence(post: Posteriors) -> np.ndarray:
    """φ = log p_y − log Σ_{c≠y} p_c per sample (float64); summing the others avoids 1 − p_y's cancellation."""
    probs = post.probs.double().clamp_min(1e-300)
    true = probs.gather(1, post.labels[:, None]).squeeze(1)
    rest = probs.scatter(1, post.labels[:, None], 0.0).sum(1).clamp_min(1e-300)
    return torch.nan_to_num(torch.log(true) - torch.log(rest), nan=0.0).numpy()


def percentile_ranks(scores: np.ndarray, control: np.ndarray) -> np.ndarray:
    """For each score, the share of `control` below it (ties count half), in [0, 1]."""
    ordered = np.sort(control)
    below = np.searchsorted(ordered, scores, side="left")
    at_or_below = np.searchsorted(ordered, scores, side="right")
    return (below + at_or_below) / (2.0 * len(ordered))


def mean_percentile_rank(scores: np.ndarray, control: np.ndarray) -> float:
    """Mean of `percentile_ranks`: the Mann–Whitney AUC of the scores against the control."""
    return float(np.mean(percentile_ranks(scores, control)))


def score_summary(forget: Posteriors, control: Posteriors, *, points: int = 200, bins: int = 24) -> dict:
    """The forget set's margins sorted, each beside its percentile rank among the control (at most
    `points` evenly spaced order statistics), their mean rank, and a histogram of the control's
    margins on bins that also cover the forget margins. Plain JSON values.
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

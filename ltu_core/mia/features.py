"""Membership-inference features of a model's posterior, differentiable (torch) throughout.

Each feature maps (probs [B, C], labels [B]) to [B, d]. The same functions feed the frozen
evaluation SVC (on detached values) and LTU's differentiable attackers (with gradients).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_EPS = 1e-12


def confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class probability p_y, [B, 1]."""
    return probs.gather(1, labels[:, None])


def log_odds_confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_y − log(1 − p_y), [B, 1]: confidence on a scale that resolves values near 1."""
    p = confidence(probs, labels).clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


def entropy(probs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy −Σ_c p_c log p_c, [B, 1] (label-free)."""
    return -(probs * torch.log(probs.clamp_min(_EPS))).sum(1, keepdim=True)


def modified_entropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Song & Mittal's modified entropy, [B, 1].

    Mentr(p, y) = −(1 − p_y) log p_y − Σ_{c≠y} p_c log(1 − p_c). The public SalUn/l1-sparse code
    gets it wrong twice: its "log(1 − p)" is log p, and `[:, labels]` swaps the true-class term
    into every row's columns of every label in the batch instead of each row's own label.
    """
    p_y = confidence(probs, labels)
    true_term = -(1 - p_y) * torch.log(p_y.clamp_min(_EPS))
    other = probs * torch.log((1 - probs).clamp_min(_EPS))
    mask = torch.ones_like(probs).scatter_(1, labels[:, None], 0.0)
    return true_term - (other * mask).sum(1, keepdim=True)


def sorted_posterior(probs: torch.Tensor, labels: torch.Tensor | None = None, k: int = 3) -> torch.Tensor:
    """Top-k posterior values in descending order as log-probabilities, [B, k] (label-free)."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).values
    return torch.log(top.clamp_min(_EPS))


def full_posterior(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The whole posterior, sorted descending, with the true-class probability appended, [B, C+1]."""
    return torch.cat([probs.sort(1, descending=True).values, confidence(probs, labels)], 1)


Feature = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FEATURES: dict[str, Feature] = {
    "confidence": confidence,
    "log_odds": log_odds_confidence,
    "entropy": entropy,
    "modified_entropy": modified_entropy,
    "sorted_posterior": sorted_posterior,
    "posterior": full_posterior,
}
"""Features by name, as config fields and records refer to them."""

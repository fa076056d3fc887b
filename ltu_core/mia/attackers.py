"""Differentiable membership-inference attackers: LTU's forgetting signal and the verifier.

Each attacker h_k reads one feature of a model's posterior and the label, standardises it, and
returns a member probability through a 2-layer MLP. Attackers are fit once on the *original*
model's outputs (members = D̂_r, non-members = D_ref), then frozen; gradients still flow through
them into whatever model produced the posterior, which is how LTU pushes D_f towards looking
unseen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ltu_core.mia import features as feat
from ltu_core.models.inference import Posteriors


def _log_entropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log(feat.entropy(probs) + 1e-8)


def _log_modified_entropy(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log(feat.modified_entropy(probs, labels) + 1e-8)


# Log scales: memorised samples sit within 1e-3 of a one-hot posterior, where raw values
# are too compressed for a small MLP to separate them from unseen ones.
ATTACKER_FEATURES = {
    "confidence": feat.log_odds_confidence,
    "entropy": _log_entropy,
    "modified_entropy": _log_modified_entropy,
    "sorted_posterior": feat.sorted_posterior,
}
DEFAULT_ATTACKERS = tuple(ATTACKER_FEATURES)


class Attacker(nn.Module):
    """h(φ(p, y)) → member probability; φ is one entry of ATTACKER_FEATURES."""

    def __init__(self, feature: str, in_dim: int, hidden: int = 16) -> None:
        super().__init__()
        if feature not in ATTACKER_FEATURES:
            raise ValueError(f"unknown attacker feature {feature!r}; choose from {list(ATTACKER_FEATURES)}")
        self.feature = feature
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def features(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Standardised feature [B, d]."""
        return (ATTACKER_FEATURES[self.feature](probs, labels) - self.mean) / self.std

    def logits(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Member logit [B]."""
        return self.net(self.features(probs, labels)).squeeze(1)

    def forward(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Member probability [B]."""
        return torch.sigmoid(self.logits(probs, labels))


def train_attackers(
    members: Posteriors,
    nonmembers: Posteriors,
    *,
    features: Sequence[str] = DEFAULT_ATTACKERS,
    seed: int = 0,
    steps: int = 100,
    lr: float = 0.03,
    hidden: int = 16,
) -> list[Attacker]:
    """Fit one frozen attacker per feature with class-balanced BCE (full batch, Adam)."""
    if len(members) == 0 or len(nonmembers) == 0:
        raise ValueError("attackers need at least one member and one non-member")
    probs = torch.cat([members.probs, nonmembers.probs]).detach()
    labels = torch.cat([members.labels, nonmembers.labels])
    target = torch.cat([torch.ones(len(members)), torch.zeros(len(nonmembers))])
    # Class-balanced weights: D̂_r and D_ref need not be the same size.
    weight = torch.where(target == 1, 0.5 / len(members), 0.5 / len(nonmembers)) * len(target)
    attackers = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in features:
            raw = ATTACKER_FEATURES[name](probs, labels)
            attacker = Attacker(name, raw.shape[1], hidden)
            attacker.mean.copy_(raw.mean(0))
            attacker.std.copy_(raw.std(0).clamp_min(1e-6) if len(raw) > 1 else torch.ones(raw.shape[1]))
            attackers.append(attacker)
    # One Adam over all attackers on the summed loss: Adam is per-parameter and the attackers
    # share none, so this is exactly K separate fits at the cost of one backward pass per step.
    opt = torch.optim.Adam([p for a in attackers for p in a.net.parameters()], lr=lr)
    for _ in range(steps):
        loss = sum(
            F.binary_cross_entropy_with_logits(a.logits(probs, labels), target, weight=weight) for a in attackers
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    for attacker in attackers:
        attacker.requires_grad_(False).eval()
    return attackers


@torch.no_grad()
def attacker_scores(attackers: Sequence[Attacker], post: Posteriors) -> np.ndarray:
    """Member probabilities [K, n] of every attacker on every sample."""
    return np.stack([a(post.probs, post.labels).numpy() for a in attackers])


@torch.no_grad()
def attacker_accuracy(attackers: Sequence[Attacker], members: Posteriors, nonmembers: Posteriors) -> list[float]:
    """Balanced accuracy (%) of each attacker on a members/non-members pair."""
    sm, sn = attacker_scores(attackers, members), attacker_scores(attackers, nonmembers)
    return [float(50 * ((sm[k] > 0.5).mean() + (sn[k] <= 0.5).mean())) for k in range(len(attackers))]

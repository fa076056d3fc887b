"""MIA-efficacy by the SVC protocol of the l1-sparse / SalUn papers, with its small-data fix.

An RBF SVC (C=3, gamma='auto') learns members vs non-members from one posterior feature:
members are a seeded slice of D_r, non-members the test set, both of size
n = min(|D_r|, |D_test|) (the reference code takes |D_test| members, and on data where
|D_r| < |D_test| the unbalanced fit calls everything non-member). MIA-efficacy is the share of
D_f the SVC predicts non-member, in percent: higher means more forgotten, and the target is
Retrain's value, not 100.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.svm import SVC

from ltu_core.mia.features import FEATURES
from ltu_core.models.inference import Posteriors

MIA_DIRECTION = "share of D_f predicted non-member (%); higher = more forgotten; target = Retrain's value"


def _balanced(members: Posteriors, nonmembers: Posteriors, seed: int) -> tuple[Posteriors, Posteriors]:
    n = min(len(members), len(nonmembers))
    rng = np.random.Generator(np.random.PCG64(seed))
    pick_m = torch.from_numpy(np.sort(rng.choice(len(members), n, replace=False)))
    pick_n = torch.from_numpy(np.sort(rng.choice(len(nonmembers), n, replace=False)))
    return members.subset(pick_m), nonmembers.subset(pick_n)


MIA_FEATURES = ("confidence", "entropy", "modified_entropy", "posterior")
"""The features MIA-efficacy is reported for (confidence is the headline)."""


class SvcAttacker:
    """An RBF SVC fit once on balanced members vs non-members by one feature; it then scores any
    number of target sets (the union's D_f, each request's share of it, the control set)."""

    def __init__(
        self, members: Posteriors, nonmembers: Posteriors, *, feature: str = "confidence", seed: int = 0
    ) -> None:
        if min(len(members), len(nonmembers)) < 2:
            raise ValueError("the SVC needs at least two members and two non-members")
        self.feature = feature
        m, nm = _balanced(members, nonmembers, seed)
        x = np.concatenate([self._features(m), self._features(nm)])
        y = np.concatenate([np.ones(len(m)), np.zeros(len(nm))])
        self._clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)

    def _features(self, post: Posteriors) -> np.ndarray:
        # A diverged model yields NaN posteriors; score them as a feature value of 0 rather than crash.
        values = FEATURES[self.feature](post.probs, post.labels)
        return torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).double().numpy()

    def nonmember_rate(self, target: Posteriors) -> float:
        """Share (%) of `target` this SVC calls non-member."""
        if len(target) == 0:
            raise ValueError("the target set is empty")
        return float(np.mean(self._clf.predict(self._features(target)) == 0)) * 100.0


def fit_svc_attackers(members: Posteriors, nonmembers: Posteriors, *, seed: int = 0) -> dict[str, SvcAttacker]:
    """One fitted SvcAttacker per MIA feature."""
    return {feature: SvcAttacker(members, nonmembers, feature=feature, seed=seed) for feature in MIA_FEATURES}


def svc_mia_efficacy(
    members: Posteriors, nonmembers: Posteriors, target: Posteriors, *, feature: str = "confidence", seed: int = 0
) -> float:
    """Share (%) of `target` an SVC, fit on balanced members vs non-members, calls non-member."""
    if len(target) == 0:
        raise ValueError("the target set is empty")
    return SvcAttacker(members, nonmembers, feature=feature, seed=seed).nonmember_rate(target)

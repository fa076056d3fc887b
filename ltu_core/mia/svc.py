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


def svc_mia_efficacy(
    members: Posteriors, nonmembers: Posteriors, target: Posteriors, *, feature: str = "confidence", seed: int = 0
) -> float:
    """Share (%) of `target` an SVC, fit on balanced members vs non-members, calls non-member."""
    if len(target) == 0:
        raise ValueError("the target set is empty")
    if min(len(members), len(nonmembers)) < 2:
        raise ValueError("the SVC needs at least two members and two non-members")
    # A diverged model yields NaN posteriors; score them as a feature value of 0 rather than crash.
    def fn(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nan_to_num(FEATURES[feature](probs, labels), nan=0.0, posinf=0.0, neginf=0.0)

    m, nm = _balanced(members, nonmembers, seed)
    x = torch.cat([fn(m.probs, m.labels), fn(nm.probs, nm.labels)]).double().numpy()
    y = np.concatenate([np.ones(len(m)), np.zeros(len(nm))])
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    pred = clf.predict(fn(target.probs, target.labels).double().numpy())
    return float(np.mean(pred == 0)) * 100.0

"""The evaluation protocol shared by LTU and every baseline: UA, RA, TA, MIA-efficacy, Avg. Gap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ltu_core.data.selection import UnlearningSplit
from ltu_core.mia.svc import SvcAttacker, fit_svc_attackers
from ltu_core.models.inference import Posteriors, predict_split

HEADLINE = ("ua", "ra", "ta", "mia")
"""The four numbers Avg. Gap averages over."""


@dataclass(frozen=True)
class Evaluation:
    """All numbers in percent. `mia` is the confidence-feature SVC efficacy (the headline)."""

    ua: float  # 100 − accuracy on D_f
    ra: float  # accuracy on D_r
    ra_seen: float  # accuracy on D̂_r (the part unlearning could read)
    ra_unseen: float  # accuracy on D_r \ D̂_r
    ta: float  # accuracy on D_test (without the forgotten class when a whole class is erased)
    mia: float
    mia_entropy: float
    mia_modified_entropy: float
    mia_posterior: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready, rounded to 1e-4."""
        return {k: round(v, 4) for k, v in asdict(self).items()}


def unlearning_accuracy(forget: Posteriors) -> float:
    """UA = 100 − accuracy on D_f."""
    return 100.0 - forget.accuracy()


def avg_gap(result: Evaluation, retrain: Evaluation) -> float:
    """Mean absolute difference to Retrain over UA, RA, TA and MIA-efficacy."""
    return sum(abs(getattr(result, k) - getattr(retrain, k)) for k in HEADLINE) / len(HEADLINE)


def evaluate(
    model: nn.Module, split: UnlearningSplit, *, device: torch.device | str = "cpu", seed: int = 0
) -> Evaluation:
    """Evaluate `model` on every set of `split` with the shared protocol."""
    return evaluate_posteriors(
        predict_split(model, split, names=("forget", "retain", "test"), device=device), split, seed=seed
    )


def evaluate_posteriors(
    post: dict[str, Posteriors],
    split: UnlearningSplit,
    *,
    seed: int = 0,
    attackers: Mapping[str, SvcAttacker] | None = None,
) -> Evaluation:
    """The protocol on posteriors already computed (keys forget, retain, test; see predict_split).

    `attackers` (fit_svc_attackers on these retain and test posteriors) lets several forget sets
    of one model share the SVC fits.
    """
    seen = torch.from_numpy(np.isin(split.retain, split.retain_subset))
    retain, forget, test = post["retain"], post["forget"], post["test"]
    if split.forgotten_class is not None:
        # SalUn's class-wise convention: a model without the class cannot classify its test
        # samples, so TA and the SVC's non-members are the test set without that class.
        test = test.subset(test.labels != split.forgotten_class)
    attackers = attackers or fit_svc_attackers(retain, test, seed=seed)
    mia = {feature: attacker.nonmember_rate(forget) for feature, attacker in attackers.items()}
    return Evaluation(
        ua=unlearning_accuracy(forget),
        ra=retain.accuracy(),
        ra_seen=retain.subset(seen).accuracy(),
        ra_unseen=retain.subset(~seen).accuracy() if bool((~seen).any()) else float("nan"),
        ta=test.accuracy(),
        mia=mia["confidence"],
        mia_entropy=mia["entropy"],
        mia_modified_entropy=mia["modified_entropy"],
        mia_posterior=mia["posterior"],
    )

"""Verification of forgetting: can a membership-inference attacker still tell D_f apart?

For a model that never saw D_f, D_f is just unseen data, so an attacker's "non-member" rate on
D_f matches its rate on any other unseen sample. The verifier therefore fits the SVC attacker of
the evaluation protocol (members: a D_r slice, non-members: the test set) on the model's
posteriors and compares its non-member rate on D_f with its rate on a *control* set the SVC did
not see (D_ref). Forgetting passes when D_f is not significantly more member-like than the
control: rate(D_f) ≥ rate(control) − z·SE, a one-sided two-proportion test. Utility passes when
test accuracy fell by at most `max_test_drop` points against the original.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ltu_core.data.selection import UnlearningSplit
from ltu_core.mia.svc import svc_mia_efficacy
from ltu_core.models.inference import Posteriors, predict


@dataclass(frozen=True)
class VerificationThresholds:
    """z: one-sided z-score of the forgetting test; max_test_drop: allowed TA loss in points."""

    z: float = 2.0
    max_test_drop: float = 5.0


@dataclass(frozen=True)
class Verdict:
    """The outcome and every number behind it (rates in percent)."""

    passed: bool
    forgetting_passed: bool
    utility_passed: bool
    forget_nonmember_rate: float  # SVC: share of D_f called non-member
    control_nonmember_rate: float  # SVC: share of the unseen control set called non-member
    tolerance: float  # z·SE in points
    test_accuracy: float
    original_test_accuracy: float
    thresholds: VerificationThresholds

    def as_dict(self) -> dict:
        """JSON-ready."""
        out = asdict(self)
        out["thresholds"] = asdict(self.thresholds)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def verify_forgetting(
    *,
    retain: Posteriors,
    test: Posteriors,
    forget: Posteriors,
    control: Posteriors,
    original_test_accuracy: float,
    thresholds: VerificationThresholds = VerificationThresholds(),
    seed: int = 0,
) -> Verdict:
    """Verdict for one model; all posteriors come from that model."""
    rate_f = svc_mia_efficacy(retain, test, forget, seed=seed)
    rate_c = svc_mia_efficacy(retain, test, control, seed=seed)
    p = (rate_f * len(forget) + rate_c * len(control)) / (100.0 * (len(forget) + len(control)))
    se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / len(forget) + 1 / len(control))) * 100.0
    tolerance = thresholds.z * se
    forgetting_ok = rate_f >= rate_c - tolerance
    ta = test.accuracy()
    utility_ok = ta >= original_test_accuracy - thresholds.max_test_drop
    return Verdict(
        passed=forgetting_ok and utility_ok,
        forgetting_passed=forgetting_ok,
        utility_passed=utility_ok,
        forget_nonmember_rate=rate_f,
        control_nonmember_rate=rate_c,
        tolerance=tolerance,
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
    sets = split.sets()
    post = {k: predict(model, sets[k], device=device) for k in ("retain", "test", "forget", "reference")}
    return verify_forgetting(
        retain=post["retain"],
        test=post["test"],
        forget=post["forget"],
        control=post["reference"],
        original_test_accuracy=original_test_accuracy,
        thresholds=thresholds,
        seed=seed,
    )

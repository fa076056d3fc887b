"""Verification: the rank test fails a memorising model, passes one that never saw D_f."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltu_core.mia import VerificationThresholds, verify_model
from ltu_core.mia.verify import margin, mean_percentile_rank
from ltu_core.models import Posteriors, build_model
from ltu_core.train import train_model


def test_mean_percentile_rank_by_hand():
    control = np.array([1.0, 2.0, 3.0, 4.0])
    assert mean_percentile_rank(np.array([0.0]), control) == 0.0
    assert mean_percentile_rank(np.array([5.0]), control) == 1.0
    assert mean_percentile_rank(np.array([2.0]), control) == pytest.approx(1.5 / 4)  # ties count half
    assert mean_percentile_rank(np.array([0.0, 5.0]), control) == 0.5


def test_margin_stays_finite_where_confidence_rounds_to_one():
    post = Posteriors(torch.tensor([[1.0, 1e-12, 0.0], [0.2, 0.5, 0.3]]), torch.tensor([0, 0]))
    m = margin(post)
    assert np.isfinite(m).all() and m[0] > 20 and m[1] == pytest.approx(np.log(0.2 / 0.5))


def test_memorising_model_fails_and_a_model_that_never_saw_the_forget_set_passes(
    trained, tiny_split, tiny_arch, tiny_recipe
):
    ta = 100.0  # utility is not under test here
    thresholds = VerificationThresholds(z=2.0, max_test_drop=100.0)
    original = verify_model(trained, tiny_split, original_test_accuracy=ta, thresholds=thresholds)
    assert original.conclusive and not original.forgetting_passed
    assert original.forget_mean_rank > original.rank_threshold

    never_saw = build_model(tiny_arch, seed=0)
    train_model(never_saw, tiny_split.sets()["retain"], tiny_recipe, seed=0)
    clean = verify_model(never_saw, tiny_split, original_test_accuracy=ta, thresholds=thresholds)
    assert clean.forgetting_passed and clean.passed
    assert clean.forget_mean_rank < original.forget_mean_rank


def test_a_single_sample_cannot_be_verified(trained, synthetic, tiny_split):
    from ltu_core.data import ForgetSpec, make_split

    one = make_split(synthetic, ForgetSpec(kind="samples", ids=(synthetic.sample_ids[tiny_split.forget[0]],)))
    verdict = verify_model(trained, one, original_test_accuracy=0.0)
    assert not verdict.conclusive and not verdict.passed and verdict.n_forget == 1


def test_utility_check(trained, tiny_split):
    verdict = verify_model(
        trained, tiny_split, original_test_accuracy=100.0, thresholds=VerificationThresholds(max_test_drop=1.0)
    )
    assert not verdict.utility_passed and not verdict.passed

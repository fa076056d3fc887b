"""Metrics against hand-computed values, and the MIA protocol's calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltu_core.data import make_synthetic
from ltu_core.metrics import Evaluation, avg_gap, unlearning_accuracy
from ltu_core.mia import svc_mia_efficacy
from ltu_core.mia.features import confidence, entropy, modified_entropy
from ltu_core.models import ArchConfig, Posteriors, build_model, predict
from ltu_core.train import TrainRecipe, train_model


def _post(rows, labels):
    return Posteriors(torch.tensor(rows, dtype=torch.float32), torch.tensor(labels))


def test_accuracy_and_unlearning_accuracy():
    post = _post([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], [0, 1, 1, 0])
    assert post.accuracy() == 50.0
    assert unlearning_accuracy(post) == 50.0


def test_avg_gap_is_mean_absolute_difference_of_the_four_headline_numbers():
    def ev(ua, ra, ta, mia):
        return Evaluation(ua, ra, ra, ra, ta, mia, 0, 0, 0)

    assert avg_gap(ev(10, 90, 80, 30), ev(12, 95, 80, 20)) == pytest.approx((2 + 5 + 0 + 10) / 4)
    # RA seen/unseen and the MIA variants do not enter the gap.
    assert avg_gap(Evaluation(1, 2, 50, 50, 3, 4, 9, 9, 9), Evaluation(1, 2, 0, 0, 3, 4, 0, 0, 0)) == 0


def test_features_against_hand_computed_values():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    y = torch.tensor([0])
    assert confidence(p, y).item() == pytest.approx(0.7)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert entropy(p).item() == pytest.approx(h, rel=1e-5)
    # Song & Mittal: −(1−p_y) log p_y − Σ_{c≠y} p_c log(1−p_c)
    m = -(0.3 * math.log(0.7)) - (0.2 * math.log(0.8) + 0.1 * math.log(0.9))
    assert modified_entropy(p, y).item() == pytest.approx(m, rel=1e-5)
    # Per-row labels: the true-class term of row 2 uses row 2's own label.
    p2 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    got = modified_entropy(p2, torch.tensor([0, 2]))
    m2 = -(0.2 * math.log(0.8)) - 2 * (0.1 * math.log(0.9))
    assert got[1].item() == pytest.approx(m2, rel=1e-5)


def test_svc_mia_on_separable_features():
    members = _post([[0.99, 0.01]] * 20, [0] * 20)
    nonmembers = _post([[0.55, 0.45]] * 20, [0] * 20)
    looks_member = _post([[0.99, 0.01]] * 5, [0] * 5)
    looks_unseen = _post([[0.56, 0.44]] * 5, [0] * 5)
    assert svc_mia_efficacy(members, nonmembers, looks_member) == 0.0
    assert svc_mia_efficacy(members, nonmembers, looks_unseen) == 100.0


def test_svc_balances_members_and_nonmembers():
    # 200 members vs 20 non-members: without balancing the SVC calls everything a member.
    rng = np.random.default_rng(0)
    m = rng.uniform(0.9, 1.0, 200)
    n = rng.uniform(0.5, 0.8, 20)
    members = _post([[v, 1 - v] for v in m], [0] * 200)
    nonmembers = _post([[v, 1 - v] for v in n], [0] * 20)
    target = _post([[v, 1 - v] for v in rng.uniform(0.5, 0.8, 10)], [0] * 10)
    assert svc_mia_efficacy(members, nonmembers, target) >= 90.0


def test_mia_efficacy_of_a_model_that_never_saw_the_forget_set_matches_unseen_data():
    data = make_synthetic(num_samples=1400, num_classes=4, image_size=8, noise=110.0, test_size=400, seed=3)
    arch = ArchConfig("resnet18", num_classes=4, img_size=8, width=0.125)
    model = build_model(arch, seed=0)
    train, test = data.split_indices("train"), data.split_indices("test")
    trained_on, never_seen = train[:400], train[400:800]  # "D_f" = never_seen: it is unseen data
    train_model(model, data.view(trained_on), TrainRecipe(epochs=15, batch_size=32, lr=0.05), seed=0)
    retain = predict(model, data.view(trained_on))
    svc_nonmembers = predict(model, data.view(test[:200]))
    control = predict(model, data.view(test[200:]))  # unseen, and not used to fit the SVC

    def rate(target):
        return svc_mia_efficacy(retain, svc_nonmembers, target)

    rate_forget, rate_control = rate(predict(model, data.view(never_seen))), rate(control)
    # Never-seen samples are called non-member as often as other unseen data (measured 11 vs 12;
    # two binomial standard errors of the difference are ~5.4 points here) and clearly more
    # often than members (0).
    assert abs(rate_forget - rate_control) <= 8
    assert rate_forget >= rate(predict(model, data.view(trained_on))) + 5


def test_class_erasure_reports_ta_without_the_class(synthetic, trained):
    from ltu_core.data import ForgetSpec, make_split
    from ltu_core.metrics import evaluate

    split = make_split(synthetic, ForgetSpec(kind="class", label=2), retain_fraction=0.25, seed=0)
    assert split.forgotten_class == 2
    test = predict(trained, split.sets()["test"])
    others = test.subset(test.labels != 2)
    assert evaluate(trained, split).ta == pytest.approx(others.accuracy())
    random = make_split(synthetic, ForgetSpec(kind="random", count=8, seed=0), retain_fraction=0.25, seed=0)
    assert random.forgotten_class is None
    assert evaluate(trained, random).ta == pytest.approx(predict(trained, random.sets()["test"]).accuracy())


def test_validation_view_reports_on_never_trained_rows_only(synthetic):
    from ltu_core.data import ForgetSpec, audit_rows, make_split

    split = make_split(synthetic, ForgetSpec(kind="random", count=8, seed=0), retain_fraction=0.25, seed=0)
    view = split.validation_view(100, seed=3)
    assert len(view.test) == 100 and view.info["reported_on"] == "validation"
    assert not set(view.test) & (set(split.test) | set(split.reference) | set(split.forget) | set(split.retain))
    assert set(view.test) <= set(audit_rows(split))
    assert np.array_equal(view.test, split.validation_view(100, seed=3).test)  # seeded
    assert np.array_equal(view.forget, split.forget) and np.array_equal(view.retain_subset, split.retain_subset)

"""The audit on models: D_audit is structurally out of every method's reach, the reference models'
plan and file, the likelihood-ratio tier's calibration and power, and verdicts on real tiny models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ltu_core.audit import (
    LIKELIHOOD_RATIO,
    REMEMBERED,
    AuditConfig,
    ReferenceScores,
    audit,
    logit_confidence,
    lr_pvalues,
    margin,
    mean_percentile_rank,
    plan_halves,
    train_references,
    verify_model,
)
from ltu_core.audit.stats import clopper_pearson, conformal_pvalues
from ltu_core.audit.verdict import Evidence
from ltu_core.data import ForgetSpec, audit_rows, draw_control, make_split
from ltu_core.data.dataset import SampleSet
from ltu_core.methods import UnlearningTask
from ltu_core.models import Posteriors, build_model
from ltu_core.train import TrainRecipe, train_model


def test_scores_by_hand():
    control = np.array([1.0, 2.0, 3.0, 4.0])
    assert mean_percentile_rank(np.array([2.0]), control) == pytest.approx(1.5 / 4)  # ties count half
    post = Posteriors(torch.tensor([[1.0, 1e-12, 0.0], [0.2, 0.5, 0.3]]), torch.tensor([0, 0]))
    m, phi = margin(post), logit_confidence(post)
    assert np.isfinite(m).all() and m[0] > 20 and m[1] == pytest.approx(np.log(0.2 / 0.5))
    assert np.isfinite(phi).all() and phi[0] > 20 and phi[1] == pytest.approx(np.log(0.2 / 0.8))


def test_no_method_can_read_d_audit(trained, tiny_arch, tiny_split, tiny_recipe):
    audit = audit_rows(tiny_split)
    assert len(audit) > 0
    assert not hasattr(tiny_split, "audit") and "audit" not in tiny_split.sets()
    task = UnlearningTask.from_split(trained, tiny_arch, tiny_split, tiny_recipe)
    for f in dataclasses.fields(task):
        value = getattr(task, f.name)
        if isinstance(value, SampleSet):
            assert not np.intersect1d(value.indices, audit).size, f"the task's {f.name} holds D_audit rows"
    split_rows = [tiny_split.forget, tiny_split.retain, tiny_split.reference, tiny_split.test]
    assert all(not np.intersect1d(rows, audit).size for rows in split_rows)
    never_trained = np.union1d(tiny_split.dataset.split_indices("holdout"), tiny_split.dataset.split_indices("test"))
    assert np.isin(audit, never_trained).all()


def test_control_draws_are_seeded_subsets():
    rows = np.arange(100, 400)
    a, b = draw_control(rows, 50, 7), draw_control(rows, 50, 8)
    assert np.array_equal(a, draw_control(rows, 50, 7)) and not np.array_equal(a, b)
    assert np.isin(a, rows).all() and len(a) == 50 and np.array_equal(draw_control(rows, 1000, 7), rows)


def test_reference_halves_are_complementary_and_balanced_in_every_even_prefix():
    train = np.arange(10, 111)  # an odd count
    plan = plan_halves(train, 120, 8, seed=3)
    assert not plan[:, :10].any() and not plan[:, 111:].any()
    for k in (2, 4, 6, 8):
        assert (plan[:k, train].sum(axis=0) == k // 2).all()
    assert np.array_equal(plan, plan_halves(train, 120, 8, seed=3))
    with pytest.raises(ValueError, match="even"):
        plan_halves(train, 120, 3, seed=0)


def test_reference_scores_round_trip(tmp_path):
    scores = ReferenceScores(
        phi=np.arange(12, dtype=np.float32).reshape(2, 6), trained_on=np.eye(2, 6, dtype=bool), seed=5
    )
    loaded = ReferenceScores.load(scores.save(tmp_path / "refs.safetensors", metadata={"model": "m"}))
    assert np.array_equal(loaded.phi, scores.phi) and np.array_equal(loaded.trained_on, scores.trained_on)
    assert loaded.seed == 5 and loaded.count == 2
    (tmp_path / "other.safetensors").write_bytes(b"not a file")
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        ReferenceScores.load(tmp_path / "other.safetensors")


def _simulated_references(rng, *, size: int, count: int, train: np.ndarray) -> tuple[ReferenceScores, np.ndarray]:
    """φ = per-sample difficulty + model noise (+ a memorisation bump where trained on)."""
    difficulty = rng.normal(0, 3, size=size)
    plan = plan_halves(train, size, count, seed=1)
    phi = difficulty + rng.normal(0, 0.5, size=(count, size)) + 1.0 * plan
    return ReferenceScores(phi=phi.astype(np.float32), trained_on=plan, seed=1), difficulty


def test_likelihood_ratio_tier_is_calibrated_and_beats_the_rank_tier_on_simulated_memorisation():
    rng = np.random.Generator(np.random.PCG64(11))
    size, train = 3000, np.arange(1000)
    audit_pool = np.arange(1000, 3000)
    refs, difficulty = _simulated_references(rng, size=size, count=4, train=train)
    null_fail = lr_fail = rank_fail = 0
    trials = 400
    for t in range(trials):
        control = draw_control(audit_pool, 1000, t)
        forget = rng.choice(train, size=4, replace=False)
        target = difficulty + rng.normal(0, 0.5, size=size)  # a model that never saw `forget`
        seen = target.copy()
        seen[forget] += 1.0  # the same model, had it trained on them
        keys = np.array(["s"] * 4)
        for phi, counter in ((target, "null"), (seen, "power")):
            high, low = lr_pvalues(
                refs, forget_rows=forget, forget_phi=phi[forget], control_rows=control, control_phi=phi[control]
            )
            lr = audit(Evidence(LIKELIHOOD_RATIO, high, low, keys, len(control), np.zeros(4)))
            if counter == "null":
                null_fail += lr.outcome == REMEMBERED
            else:
                lr_fail += lr.outcome == REMEMBERED
                rank_p = conformal_pvalues(phi[forget], phi[control])
                rank = audit(Evidence("rank", rank_p, 1 - rank_p, keys, len(control), np.zeros(4)))
                rank_fail += rank.outcome == REMEMBERED
    assert clopper_pearson(null_fail, trials)[0] <= 0.05
    assert lr_fail >= 2 * max(1, rank_fail), (lr_fail, rank_fail)


def test_lr_pvalues_refuse_controls_a_reference_trained_on():
    refs = ReferenceScores(phi=np.zeros((2, 10), np.float32), trained_on=plan_halves(np.arange(6), 10, 2, 0), seed=0)
    with pytest.raises(ValueError, match="control"):
        lr_pvalues(
            refs,
            forget_rows=np.array([0]),
            forget_phi=np.zeros(1),
            control_rows=np.array([1, 8]),
            control_phi=np.zeros(2),
        )


@pytest.fixture(scope="module")
def noisy(synthetic):
    """The session's images under shuffled labels: a model can only memorise them, so membership shows."""
    data = dataclasses.replace(synthetic, labels=np.random.Generator(np.random.PCG64(0)).permutation(synthetic.labels))
    train = data.split_indices("train")
    ids, counts = np.unique(data.subject_ids[train], return_counts=True)
    spec = ForgetSpec(kind="subjects", ids=tuple(ids[counts >= 3][:2]))
    return data, make_split(data, spec, retain_fraction=0.25, seed=0)


def test_a_model_that_memorised_the_subjects_fails_and_one_that_never_saw_them_passes(noisy, tiny_arch):
    # On the session's `synthetic` data the rank tier is weak by design: an easy unseen image gets
    # as large a margin as a memorised one. Under random labels only memorisation gives one.
    data, split = noisy
    recipe = TrainRecipe(epochs=40, batch_size=32, lr=0.05)
    config = AuditConfig(alpha=0.05, max_test_drop=100.0)  # utility is not under test here
    original = build_model(tiny_arch, seed=0)
    train_model(original, data.view(data.split_indices("train")), recipe, seed=0)
    caught = verify_model(original, split, original_test_accuracy=100.0, config=config)
    assert caught.conclusive and caught.outcome == REMEMBERED and not caught.forgetting_passed
    assert caught.n_subjects == 2 and caught.family_size == 2 and len(caught.subjects) == 2

    never_saw = build_model(tiny_arch, seed=0)
    train_model(never_saw, split.sets()["retain"], recipe, seed=0)
    clean = verify_model(never_saw, split, original_test_accuracy=100.0, config=config)
    assert clean.forgetting_passed and clean.passed and clean.conclusive
    assert clean.forget_mean_rank < caught.forget_mean_rank


def test_train_references_on_a_tiny_dataset(synthetic, tiny_arch):
    train = synthetic.split_indices("train")[10:]  # as if the first ten had been erased
    seen = []
    refs = train_references(
        synthetic,
        train,
        tiny_arch,
        TrainRecipe(epochs=1, batch_size=32),
        count=2,
        seed=4,
        progress=lambda phase, step, total: seen.append((phase, step, total)),
    )
    assert refs.phi.shape == (2, len(synthetic)) and np.isfinite(refs.phi).all()
    assert not refs.trained_on[:, synthetic.split_indices("train")[:10]].any(), "erased rows are never trained on"
    assert (refs.trained_on[:, train].sum(axis=0) == 1).all()
    assert seen[0] == ("references", 0, 2) and seen[-1] == ("references", 2, 2)


def test_the_committed_calibration_table_is_quoted_only_where_it_was_measured():
    from pathlib import Path

    from ltu_core.audit import CalibrationTable

    table = CalibrationTable.load(Path(__file__).resolve().parents[2] / "bench/results/audit-calibration.json")
    rank = table.quote("rank", 4, 0.05)
    assert rank["n"] == 4 and rank["trials"] >= 200 and rank["ci_low"] <= rank["false_failure_rate"] <= rank["ci_high"]
    assert rank["power"] is not None and len(rank["table_sha256"]) == 64
    assert table.quote("rank", 6, 0.05)["n"] == 4 and table.quote("rank", 40, 0.05)["n"] == 64  # nearest on a log scale
    assert table.quote("likelihood_ratio", 4, 0.05, 4)["n"] == 4
    assert table.quote("likelihood_ratio", 4, 0.05) is None, "an LR verdict without its K borrows no row"
    assert table.quote("likelihood_ratio", 4, 0.05, 6) is None and table.quote("rank", 4, 0.02) is None

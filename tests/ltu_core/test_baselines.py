"""Each baseline's defining behaviour, on the tiny fixtures."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from ltu_core.errors import MethodConfigError, UnlearningCancelled
from ltu_core.methods import RunHooks, create_method, create_test_method
from ltu_core.methods.base import distill_kl, working_copy
from ltu_core.methods.bs import neighbour_labels
from ltu_core.methods.l1_sparse import l1_norm
from ltu_core.methods.rl import random_wrong_labels
from ltu_core.methods.salun import saliency_mask
from ltu_core.models import build_model

BASELINES = ("ft", "ga", "rl", "l1_sparse", "salun", "scrub", "bs")


@torch.no_grad()
def cross_entropy(model, samples) -> float:
    """Mean CE of a model on a sample set."""
    x, y = samples.tensors()
    return F.cross_entropy(model(x), y).item()


def weights(model) -> list[torch.Tensor]:
    """Detached copies of a model's parameters, in order."""
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_reads_only_partial_data_reports_progress_and_is_seeded(name, tiny_task):
    # No D_r: a baseline that reached for it would fail here.
    task = dataclasses.replace(tiny_task, retain_full=None)
    seen = []
    first = create_test_method(name).run(task, RunHooks(progress=lambda *args: seen.append(args)))
    second = create_test_method(name).run(task)
    assert seen and seen[-1][0] == "unlearning" and seen[-1][1] == seen[-1][2] == first.details["steps"]
    assert all(torch.equal(a, b) for a, b in zip(weights(first.model), weights(second.model)))


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_stops_when_cancelled(name, tiny_task):
    with pytest.raises(UnlearningCancelled):
        create_test_method(name).run(tiny_task, RunHooks(should_cancel=lambda: True))


@pytest.mark.parametrize(
    "name, params",
    [(name, {"lr": -1.0}) for name in BASELINES]
    + [
        ("salun", {"mask_ratio": 1.5}),
        ("scrub", {"epochs": 2, "max_epochs": 3}),
        ("bs", {"epsilon": 0.0}),
        ("l1_sparse", {"alpha": -1e-3}),
        ("ft", {"momentum": 1.0}),
    ],
)
def test_config_rejects_bad_values(name, params):
    with pytest.raises(MethodConfigError):
        create_method(name, **params)


# Each baseline's SGD defaults, as tuned: the benchmark tables depend on them.
SGD_DEFAULTS = {  # name: (epochs, lr, batch_size, momentum, weight_decay)
    "ft": (10.0, 0.05, 32, 0.9, 5e-4),
    "ga": (2.0, 0.15, 32, 0.9, 0.0),
    "rl": (2.0, 2e-4, 32, 0.9, 5e-4),
    "l1_sparse": (10.0, 0.02, 32, 0.9, 5e-4),
    "salun": (2.0, 2e-4, 32, 0.9, 5e-4),
    "scrub": (3, 0.005, 32, 0.9, 5e-4),
    "bs": (2.0, 2e-4, 32, 0.9, 5e-4),
}


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_configs_extend_sgd_config_with_their_own_defaults(name):
    from ltu_core.methods import method_entry
    from ltu_core.methods.ft import SGDConfig

    config = create_method(name).config
    assert isinstance(config, SGDConfig)
    values = (config.epochs, config.lr, config.batch_size, config.momentum, config.weight_decay)
    assert values == SGD_DEFAULTS[name] and type(config.epochs) is type(SGD_DEFAULTS[name][0])
    with pytest.raises(MethodConfigError, match="batch_size must be positive"):  # SGDConfig's checks still run
        create_method(name, batch_size=0)
    create_method(name, **method_entry(name).test_params)


def test_ft_lowers_retained_loss(tiny_task, tiny_arch):
    # From an untrained model: the memorised fixture leaves FT nothing to lower.
    fresh = build_model(tiny_arch, seed=5)
    task = dataclasses.replace(tiny_task, model=fresh)
    result = create_method("ft", epochs=3.0, batch_size=8, lr=0.05).run(task)
    assert cross_entropy(result.model, task.retain_subset) < cross_entropy(fresh, task.retain_subset)


def test_ga_raises_forget_loss(tiny_task, trained):
    result = create_method("ga", epochs=1.0, batch_size=4, lr=0.01).run(tiny_task)
    assert cross_entropy(result.model, tiny_task.forget) > cross_entropy(trained, tiny_task.forget)


def test_random_labels_are_wrong_uniform_and_seeded():
    y = torch.arange(4000) % 10
    labels = random_wrong_labels(y, 10, torch.Generator().manual_seed(0))
    assert (labels != y).all() and labels.min() >= 0 and labels.max() <= 9
    for c in range(10):  # every wrong class is drawn, and only wrong ones
        assert set(labels[y == c].tolist()) == set(range(10)) - {c}
    assert torch.equal(labels, random_wrong_labels(y, 10, torch.Generator().manual_seed(0)))


def test_l1_penalty_shrinks_weights_relative_to_ft(tiny_task):
    common = dict(epochs=2.0, batch_size=8, lr=0.02)
    ft = create_method("ft", **common).run(tiny_task)
    sparse = create_method("l1_sparse", alpha=1e-2, **common).run(tiny_task)
    assert l1_norm(sparse.model) < l1_norm(ft.model)


def test_salun_changes_only_salient_weights_despite_momentum_and_decay(tiny_task, trained):
    # Weight decay and momentum move every weight they see; the unmasked ones must not move at all.
    method = create_method("salun", epochs=2.0, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.05)
    result = method.run(tiny_task)
    x_f, y_f = tiny_task.forget.tensors()
    masks = saliency_mask(working_copy(tiny_task), x_f, y_f, 0.5, 8)
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == round(0.5 * total) == result.details["salient_weights"]
    changed = 0
    for new, old, m in zip(weights(result.model), weights(trained), masks):
        assert torch.equal(new[~m], old[~m])  # bit-identical to θ_o
        changed += int((new[m] != old[m]).sum())
    assert changed > 0.25 * total


def test_scrub_trains_only_the_student_and_leaves_the_teacher(tiny_task, trained, monkeypatch):
    optimizers = []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    original = weights(trained)
    result = create_method("scrub", epochs=3, max_epochs=2, batch_size=4, lr=0.005).run(tiny_task)

    (opt,) = optimizers
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert held == {id(p) for p in result.model.parameters()}
    assert held.isdisjoint(id(p) for p in trained.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights(trained), original))  # teacher θ_o untouched
    assert any(not torch.equal(a, b) for a, b in zip(weights(result.model), original))  # student moved
    # The student left the teacher on D_f more than on D̂_r.
    with torch.no_grad():
        kl = {
            name: distill_kl(result.model(x), trained(x), 1.0).item()
            for name, (x, _) in (("forget", tiny_task.forget.tensors()), ("retain", tiny_task.retain_subset.tensors()))
        }
    assert kl["forget"] > kl["retain"]


def test_bs_neighbour_labels_are_the_nearest_wrong_class(tiny_task, trained):
    x_f, y_f = tiny_task.forget.tensors()
    model = working_copy(tiny_task)
    labels, _ = neighbour_labels(model, x_f, y_f, epsilon=0.5)
    assert (labels != y_f).all()
    # A vanishing step leaves the input where it was: the neighbour is θ_o's runner-up class.
    labels, _flipped = neighbour_labels(model, x_f, y_f, epsilon=1e-6)
    with torch.no_grad():
        runner_up = trained(x_f).topk(2).indices  # [n, 2]
    expected = torch.where(runner_up[:, 0] == y_f, runner_up[:, 1], runner_up[:, 0])
    assert torch.equal(labels, expected)


@pytest.mark.parametrize("method", ["ft", "ga", "scrub"])
def test_baselines_may_use_the_same_stop_rule(tiny_task, method):
    fixed = create_method(method, lr=0.05, stop_rule="none").run(tiny_task)
    ruled = create_method(method, lr=0.05, stop_rule="auc", check_every=2).run(tiny_task)
    assert "stop_checks" not in fixed.details
    assert ruled.details["stop_checks"] >= 1 and ruled.details["stop_auc_trace"]
    assert ruled.details["steps"] <= fixed.details["steps"]

"""LTU: the meta-gradient, Gradient Harmonization, the stop rule, hooks and determinism."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ltu_core.errors import MethodConfigError, UnlearningCancelled
from ltu_core.methods import RunHooks, create_method, create_test_method
from ltu_core.methods.ltu import LTU, LTUConfig, _Critic, harmonize
from ltu_core.mia import train_attackers
from ltu_core.models import predict


def _gradients(task, **cfg):
    """(g_r, g_f) of one LTU outer step on fixed batches, and the plain joint-loss gradient."""
    model = task.model
    model.eval()
    params = {n: p for n, p in model.named_parameters()}
    attackers = train_attackers(predict(model, task.retain_subset), predict(model, task.reference), steps=30)
    critic = _Critic(attackers, None)
    x_f, y_f = task.forget.tensors()
    x_r, y_r = task.retain_subset.tensors()
    method = LTU(LTUConfig(**cfg))
    g_r, g_f = method._task_gradients(
        model,
        params,
        critic,
        critic,
        (x_r[:4], y_r[:4]),
        (x_r[4:8], y_r[4:8]),
        (x_f[:4], y_f[:4]),
        (x_f[4:8], y_f[4:8]),
    )
    return g_r, g_f


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_meta_gradient_reaches_parameters_and_differs_from_joint_loss(tiny_task):
    g_r_meta, g_f_meta = _gradients(tiny_task, meta=True, second_order=True, inner_lr=0.5)
    g_r_plain, g_f_plain = _gradients(tiny_task, meta=False)
    meta, plain = _flat(g_r_meta) + _flat(g_f_meta), _flat(g_r_plain) + _flat(g_f_plain)
    assert meta.abs().sum() > 0 and plain.abs().sum() > 0
    # Every parameter tensor receives a gradient (no silent zero from a detached copy).
    assert all(g.abs().sum() > 0 for g in g_r_meta)
    assert not torch.allclose(meta, plain, rtol=1e-4, atol=1e-7)


def test_second_order_differs_from_first_order(tiny_task):
    g2 = _flat(_gradients(tiny_task, second_order=True, inner_lr=0.5)[0])
    g1 = _flat(_gradients(tiny_task, second_order=False, inner_lr=0.5)[0])
    assert not torch.allclose(g1, g2, rtol=1e-4, atol=1e-7)


def test_harmonization_removes_conflict_both_ways():
    g_r = [torch.tensor([1.0, 0.0]), torch.tensor([0.5])]
    g_f = [torch.tensor([-1.0, 1.0]), torch.tensor([0.0])]
    dot = lambda a, b: sum((x * y).sum() for x, y in zip(a, b))  # noqa: E731
    assert dot(g_r, g_f) < 0
    new_r, new_f, conflicts = harmonize(g_r, g_f, "global")
    assert conflicts == 1
    # Each projected vector is orthogonal to the other's original: neither undoes the other.
    assert dot(new_f, g_r) == pytest.approx(0.0, abs=1e-6)
    assert dot(new_r, g_f) == pytest.approx(0.0, abs=1e-6)
    assert dot(new_r, new_f) >= 0


def test_harmonization_leaves_non_conflicting_pairs_untouched():
    g_r = [torch.tensor([1.0, 2.0])]
    g_f = [torch.tensor([0.5, 0.1])]
    for mode in ("global", "per_layer", "one_sided"):
        new_r, new_f, conflicts = harmonize(g_r, g_f, mode)
        assert conflicts == 0
        assert torch.equal(new_r[0], g_r[0]) and torch.equal(new_f[0], g_f[0])


def test_one_sided_and_per_layer_modes():
    g_r = [torch.tensor([1.0, 0.0]), torch.tensor([1.0])]
    g_f = [torch.tensor([-1.0, 1.0]), torch.tensor([1.0])]
    new_r, new_f, _ = harmonize(g_r, g_f, "one_sided")
    assert torch.equal(new_r[0], g_r[0])  # remembering is never changed
    assert (new_f[0] * g_r[0]).sum() + (new_f[1] * g_r[1]).sum() == pytest.approx(0.0, abs=1e-6)
    new_r, new_f, conflicts = harmonize(g_r, g_f, "per_layer")
    assert conflicts == 1  # only the first tensor conflicts
    assert (new_f[0] * g_r[0]).sum() == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(new_f[1], g_f[1])
    _, _, none = harmonize(g_r, g_f, "none")
    assert none == 0


def test_ltu_forgets_on_the_tiny_task(tiny_task, tiny_split):
    result = create_method("ltu", max_passes=4.0, batch_size=4, attacker_steps=50, lr=0.05).run(tiny_task)
    x_f, y_f = tiny_task.forget.tensors()
    with torch.no_grad():
        before = F.cross_entropy(tiny_task.model.eval()(x_f), y_f)
        after = F.cross_entropy(result.model(x_f), y_f)
    assert after > before  # the forget set became less fitted
    d = result.details
    assert d["steps"] >= 1 and d["stop_reason"] in ("looks_unseen", "max_passes")
    assert d["member_score_forget"]["after"] < d["member_score_forget"]["before"]
    # Every knob is in the run record.
    assert set(result.record()["config"]) == set(LTUConfig.__dataclass_fields__)


def test_stop_rule_stops_once_forget_set_looks_unseen(tiny_task):
    result = create_method("ltu", max_passes=50.0, batch_size=4, attacker_steps=50, lr=0.05).run(tiny_task)
    assert result.details["stop_reason"] == "looks_unseen"
    assert result.details["steps"] < result.details["max_steps"]
    # Stopped at the fixed target: D_ref's member score under the original model.
    assert result.details["member_score_forget"]["after"] <= result.details["member_score_reference"]["before"]


def test_progress_and_cancellation(tiny_task):
    seen = []
    method = create_method("ltu", max_passes=1.0, batch_size=4, attacker_steps=20, stop_rule="none")
    method.run(tiny_task, RunHooks(progress=lambda *a: seen.append(a)))
    assert seen[0] == ("training_attackers", 0, 1) and seen[1] == ("training_attackers", 1, 1)
    unlearning = [(step, total) for phase, step, total in seen if phase == "unlearning"]
    assert unlearning and unlearning[-1][0] == unlearning[-1][1]
    with pytest.raises(UnlearningCancelled):
        create_method("ltu", stop_rule="none").run(tiny_task, RunHooks(should_cancel=lambda: True))


def test_same_seed_same_result(tiny_task):
    a = create_test_method("ltu").run(tiny_task).model.state_dict()
    b = create_test_method("ltu").run(tiny_task).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "params",
    [{"harmonization": "sideways"}, {"lr": -1.0}, {"attackers": []}, {"no_such_knob": 1}, {"lam": "big"}],
)
def test_bad_config_is_rejected(params):
    with pytest.raises(MethodConfigError):
        create_method("ltu", **params)

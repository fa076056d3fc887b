"""LTU: the meta-gradient, Gradient Harmonization, the stop rule, hooks and determinism."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from ltu_core.errors import MethodConfigError, UnlearningCancelled
from ltu_core.methods import RunHooks, create_method, create_test_method
from ltu_core.methods.ltu import LTU, LTUConfig, _Critic, _Remember, harmonize
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
        _Remember(x_r[:4], y_r[:4], None),
        _Remember(x_r[4:8], y_r[4:8], None),
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
    assert d["objective"] == "sample" and d["stop_member_score_forget_trace"]
    # Every knob is in the run record.
    assert set(result.record()["config"]) == set(LTUConfig.__dataclass_fields__)


def test_stop_rule_stops_once_forget_set_looks_unseen(tiny_task):
    result = create_method("ltu", max_passes=50.0, batch_size=4, attacker_steps=50, lr=0.05).run(tiny_task)
    assert result.details["stop_reason"] == "looks_unseen"
    assert result.details["steps"] < result.details["max_steps"]
    # Stopped once the member score fell below the fixed target (θ_o's view of D_ref + margin).
    trace = result.details["stop_member_score_forget_trace"]
    assert trace[-1] < trace[0]


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


def test_auc_stop_rule_reads_the_current_model_and_records_its_trace(tiny_task):
    result = create_method(
        "ltu", max_passes=50.0, batch_size=4, attacker_steps=30, lr=0.05, stop_rule="auc", refresh_every=2
    ).run(tiny_task)
    d = result.details
    assert d["stop_reason"] == "looks_unseen" and d["steps"] < d["max_steps"]
    # θ_o's D_f ranked above unseen data (no stop at step 0); the last check found it did not.
    assert d["steps"] >= 1 and d["stop_auc_trace"][-1] <= 0.5


def test_auc_stop_is_not_triggered_by_a_global_loss_of_confidence(tiny_task):
    from ltu_core.methods.stopping import UnseenStop

    model = tiny_task.model.eval()
    judge = UnseenStop.for_task(tiny_task, torch.Generator().manual_seed(0), threshold=0.5)
    before = judge.auc(model)

    class Cooled(torch.nn.Module):  # every output 10× less confident: damage, not forgetting
        def forward(self, x):
            return model(x) / 10.0

    after = judge.auc(Cooled())
    assert before > 0.5 and after > 0.5


def test_distillation_remembering_runs_and_differs_from_cross_entropy(tiny_task):
    ce = create_method("ltu", max_passes=1.0, batch_size=4, attacker_steps=10, stop_rule="none", remember="ce").run(
        tiny_task
    )
    kd = create_method(
        "ltu", max_passes=1.0, batch_size=4, attacker_steps=10, stop_rule="none", remember="distill"
    ).run(tiny_task)
    a, b = ce.model.state_dict(), kd.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def class_task(trained, synthetic, tiny_arch, tiny_recipe):
    from ltu_core.data import ForgetSpec, make_split
    from ltu_core.methods import UnlearningTask

    split = make_split(synthetic, ForgetSpec(kind="class", label=1), retain_fraction=0.25, seed=0)
    return UnlearningTask.from_split(trained, tiny_arch, split, tiny_recipe, seed=0)


def test_whole_class_request_gets_the_class_objective_and_the_class_goes(class_task):
    assert class_task.erased_labels == (1,)
    result = create_method("ltu", max_passes=30.0, batch_size=8, lr=0.05, remember="distill").run(class_task)
    d = result.details
    assert d["objective"] == "class" and d["stop_reason"] == "class_gone"
    x_f, y_f = class_task.forget.tensors()
    with torch.no_grad():
        assert (result.model(x_f).argmax(1) == y_f).float().mean() == 0.0
    # The class objective is only for whole labels.
    with pytest.raises(MethodConfigError):
        create_method("ltu", objective="sideways")


def test_random_forget_set_keeps_the_sample_objective(tiny_task):
    assert tiny_task.erased_labels == ()
    assert create_test_method("ltu").run(tiny_task).details["objective"] == "sample"

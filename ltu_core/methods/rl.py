"""RL: random labelling (Golatkar, Achille, Soatto — "Eternal Sunshine of the Spotless Net:
Selective Forgetting in Deep Networks", CVPR 2020; the RL baseline of Fan et al., ICLR 2024).

Relabels every forget sample with a random *wrong* class (drawn once, seeded) and fine-tunes θ_o
on those samples together with D̂_r under its true labels. The wrong labels erase what the model
learned from D_f; the retained samples keep the rest of its behaviour in place. SalUn is this
same training restricted to the most forget-salient weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningTask, working_copy
from ltu_core.methods.ft import SGDConfig, sgd_train
from ltu_core.methods.registry import register_method
from ltu_core.methods.stopping import stop_details, stop_rule_for


def random_wrong_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random class other than y[i] for every i."""
    # A shift in [1, C-1] modulo C is uniform over the C-1 wrong classes and never 0.
    shift = torch.randint(1, num_classes, y.shape, generator=generator)
    return (y + shift) % num_classes


def relabelled_data(task: UnlearningTask, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """D_f with random wrong labels followed by D̂_r with its true labels, as (x, y)."""
    x_f, y_f = task.forget.tensors()
    x_r, y_r = task.retain_subset.tensors()
    y_wrong = random_wrong_labels(y_f, task.arch.num_classes, generator)
    return torch.cat([x_f, x_r]), torch.cat([y_wrong, y_r])


@dataclass(frozen=True)
class RLConfig(SGDConfig):
    """SGD with momentum on D_f (random wrong labels) ∪ D̂_r for `epochs` passes."""

    epochs: float = 2.0
    lr: float = 2e-4


@register_method("rl", test_params=dict(epochs=1.0, batch_size=8))
class RL(UnlearningMethod):
    """RL: fine-tune on D_f with random wrong labels together with D̂_r."""

    Config = RLConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        model = working_copy(task)
        generator = torch.Generator().manual_seed(task.seed)
        x, y = (t.to(task.device) for t in relabelled_data(task, generator))
        stop = stop_rule_for(task, self.config)
        steps = sgd_train(model, x, y, self.config, hooks, generator=generator, stop=stop)
        return model, {"steps": steps, **stop_details(stop)}

"""GA: gradient ascent on the forget set (Thudi, Deza, Chandrasekaran, Papernot — "Unrolling SGD:
Understanding Factors Influencing Machine Unlearning", EuroS&P 2022; also Graves, Nagisetty,
Ganesh — "Amnesiac Machine Learning", AAAI 2021).

Undoes training on D_f by running SGD on the *negated* cross-entropy of D_f, i.e. pushing the
model up the loss surface of exactly the samples it must forget. It reads no retained data, so
nothing holds the rest of the model in place: the loss is unbounded and too many steps or too
large a learning rate collapse accuracy everywhere. Keep `epochs` and `lr` small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningTask, working_copy
from ltu_core.methods.ft import SGDConfig, sgd_train
from ltu_core.methods.registry import register_method
from ltu_core.methods.stopping import stop_details, stop_rule_for


def negative_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """−CE: minimising it is gradient ascent on the cross-entropy."""
    return -F.cross_entropy(model(x), y)


@dataclass(frozen=True)
class GAConfig(SGDConfig):
    """SGD with momentum on −CE(D_f) for `epochs` passes over D_f."""

    epochs: float = 2.0
    lr: float = 0.15
    weight_decay: float = 0.0
    stop_rule: str = "auc"  # validation: 3.05 against 3.70 for the best fixed-epoch setting


@register_method("ga", test_params=dict(epochs=1.0, batch_size=4))
class GA(UnlearningMethod):
    """GA: gradient ascent on the cross-entropy of D_f."""

    Config = GAConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        model = working_copy(task)
        x_f, y_f = (t.to(task.device) for t in task.forget.tensors())
        generator = torch.Generator().manual_seed(task.seed)
        stop = stop_rule_for(task, self.config)
        steps = sgd_train(
            model, x_f, y_f, self.config, hooks, generator=generator, objective=negative_cross_entropy, stop=stop
        )
        return model, {"steps": steps, **stop_details(stop)}

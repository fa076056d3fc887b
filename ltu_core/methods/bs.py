"""BS: Boundary Shrink (Chen, Gao, Liu, Peng, Wang — "Boundary Unlearning: Rapid Forgetting of
Deep Networks via Shifting the Decision Space", CVPR 2023).

Instead of random wrong labels, each forget sample is relabelled with its *nearest* wrong class:
one FGSM step of size ε (L∞, up the cross-entropy of θ_o) carries it across the closest decision
boundary, and the class θ_o then predicts, the true class excluded, is its neighbour label.
Fine-tuning on D_f with those labels shrinks the forgotten samples' region towards the classes
that border it, which disturbs the rest of the decision space less than arbitrary labels would.
It reads no retained data. The paper's code keeps the FGSM label even when the step fails to
leave the true class; here the true class is always excluded, so no sample is trained to its own
label.
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


def neighbour_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, float]:
    """Nearest wrong class of each sample after one FGSM step, and the share the step misclassified."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    x_adv = (x + epsilon * grad.sign()).clamp(-1.0, 1.0)  # images live in [-1, 1]
    with torch.no_grad():
        logits = model(x_adv)  # [n, C]
    flipped = float((logits.argmax(1) != y).float().mean())
    logits[torch.arange(len(y)), y] = float("-inf")
    return logits.argmax(1), flipped


@dataclass(frozen=True)
class BSConfig(SGDConfig):
    """FGSM bound `epsilon` (pixels in [-1, 1]) and SGD with momentum on relabelled D_f."""

    epochs: float = 2.0
    lr: float = 2e-4
    epsilon: float = 0.2  # the paper's 0.1 on [0, 1] pixels

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epsilon <= 0:
            raise ValueError("epsilon must be positive")


@register_method("bs", test_params=dict(epochs=1.0, batch_size=4))
class BS(UnlearningMethod):
    """BS: fine-tune on D_f relabelled with each sample's nearest wrong class (FGSM on θ_o)."""

    Config = BSConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        cfg: BSConfig = self.config
        model = working_copy(task)  # still θ_o: the attack below runs before any update
        x_f, y_f = (t.to(task.device) for t in task.forget.tensors())
        labels, flipped = neighbour_labels(model, x_f, y_f, cfg.epsilon)
        generator = torch.Generator().manual_seed(task.seed)
        stop = stop_rule_for(task, self.config)
        steps = sgd_train(model, x_f, labels, cfg, hooks, generator=generator, stop=stop)
        return model, {"steps": steps, "fgsm_flip_rate": round(flipped, 4), **stop_details(stop)}

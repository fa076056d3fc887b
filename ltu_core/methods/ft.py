"""FT: fine-tuning on retained data (Warnecke, Pirch, Wressnegger, Rieck — "Machine Unlearning of
Features and Labels", NDSS 2023; the FT baseline of Jia et al., NeurIPS 2023 and Fan et al.,
ICLR 2024).

Fine-tunes θ_o with cross-entropy on the retained subset D̂_r only, relying on catastrophic
forgetting to wash out what the model knew of D_f. It never looks at D_f. This file also holds
`sgd_train`, the SGD loop FT runs, which the other fine-tuning baselines (GA, RL, l1-sparse,
SalUn, BS) reuse with their own data and objective so that all of them train the same way, and
`SGDConfig`, the fields that loop reads, which their configs (and SCRUB's) extend with their own
defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningTask, cycle, steps_for, working_copy
from ltu_core.methods.registry import register_method
from ltu_core.methods.stopping import stop_details, stop_rule_for

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, float], torch.Tensor]
"""loss(model, x, y, t) to minimise on one batch; t ∈ [0, 1) is the share of training done."""


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
    """Plain cross-entropy of the model on a batch (the default objective)."""
    return F.cross_entropy(model(x), y)


@dataclass(frozen=True)
class SGDConfig:
    """SGD with momentum for `epochs` passes, with the range checks; the defaults are FT's.

    Each method's config extends it and overrides the defaults its method was tuned with; a
    subclass with checks of its own calls `super().__post_init__()`.
    """

    epochs: float = 10.0
    lr: float = 0.02
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # The same stop rule LTU may use (ltu_core.methods.stopping): none runs all epochs; auc ends
    # training once D_f ranks no higher than held-out unseen samples (AUC <= stop_auc), checked
    # every `check_every` steps with the attackers refit on the current model.
    stop_rule: str = "none"
    stop_auc: float = 0.5
    check_every: int = 5

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError("epochs, lr and batch_size must be positive")
        if self.stop_rule not in ("none", "auc") or self.check_every < 1 or not 0 <= self.stop_auc <= 1:
            raise ValueError("stop_rule must be 'none' or 'auc', check_every >= 1, stop_auc in [0, 1]")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum must lie in [0, 1) and weight_decay must be >= 0")


def sgd_train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: SGDConfig,
    hooks: RunHooks,
    *,
    generator: torch.Generator,
    objective: Objective = cross_entropy,
    after_step: Callable[[], None] | None = None,
    stop: Callable[[nn.Module], bool] | None = None,
) -> int:
    """Minimise `objective` over `cfg.epochs` shuffled passes of (x, y) with SGD; returns steps.

    `after_step` runs after every optimizer step (SalUn uses it to re-freeze weights); `stop`,
    checked every `cfg.check_every` steps, ends training early. x and y must already be on the
    model's device.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total = steps_for(cfg.epochs, len(y), cfg.batch_size)
    batches = cycle(x, y, cfg.batch_size, generator)
    for step in range(total):
        if stop is not None and step % cfg.check_every == 0 and stop(model):
            return step
        hooks.check_cancelled()
        xb, yb = next(batches)
        loss = objective(model, xb, yb, step / total)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        hooks.progress("unlearning", step + 1, total)
    return total


@dataclass(frozen=True)
class FTConfig(SGDConfig):
    """SGD with momentum on D̂_r for `epochs` passes (validation: lr 0.05, bench/results/tuning-random.json)."""

    lr: float = 0.05


@register_method("ft", test_params=dict(epochs=1.0, batch_size=8))
class FT(UnlearningMethod):
    """FT: fine-tune θ_o on D̂_r with cross-entropy (catastrophic forgetting of D_f)."""

    Config = FTConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        model = working_copy(task)
        x_r, y_r = (t.to(task.device) for t in task.retain_subset.tensors())
        generator = torch.Generator().manual_seed(task.seed)
        stop = stop_rule_for(task, self.config)
        steps = sgd_train(model, x_r, y_r, self.config, hooks, generator=generator, stop=stop)
        return model, {"steps": steps, **stop_details(stop)}

"""SalUn: saliency-based unlearning (Fan, Liu, Zhang, Wong, Wei, Liu — "SalUn: Empowering Machine
Unlearning via Gradient-based Weight Saliency in Both Image Classification and Generation",
ICLR 2024).

Weight saliency: the magnitude of each weight's gradient of the forget loss, |∇θ CE(θ_o; D_f)|.
One global threshold keeps the top `mask_ratio` of all weights (the paper's default is half);
only those are trained, with RL's objective (D_f under random wrong labels plus D̂_r), and every
other weight keeps θ_o's value. The public code masks the gradients only, so weight decay and
momentum still move the "frozen" weights; here they are written back to θ_o's values after every
optimizer step, so they are bit-identical to the original whatever the optimizer does.
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
from ltu_core.methods.rl import relabelled_data
from ltu_core.methods.stopping import stop_details, stop_rule_for


def saliency_mask(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: float, batch_size: int
) -> list[torch.Tensor]:
    """Per trainable parameter, a bool mask of the global top `ratio` of |∇θ CE(x, y)|."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    for start in range(0, len(y), batch_size):
        loss = F.cross_entropy(model(x[start : start + batch_size]), y[start : start + batch_size], reduction="sum")
        for g, d in zip(grads, torch.autograd.grad(loss, params)):
            g += d
    saliency = torch.cat([g.abs().flatten() for g in grads])  # [N] over all weights
    # topk rather than a `>= threshold` test: ties at the threshold cannot grow the mask.
    chosen = torch.zeros_like(saliency, dtype=torch.bool)
    chosen[saliency.topk(max(1, round(ratio * len(saliency)))).indices] = True
    return [m.view_as(p) for m, p in zip(chosen.split([p.numel() for p in params]), params)]


@dataclass(frozen=True)
class SalUnConfig(SGDConfig):
    """RL's fields plus `mask_ratio`, the share of weights (most salient first) that may change."""

    epochs: float = 2.0
    lr: float = 2e-4
    mask_ratio: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1:
            raise ValueError("mask_ratio must lie in (0, 1]")


@register_method("salun", test_params=dict(epochs=1.0, batch_size=8))
class SalUn(UnlearningMethod):
    """SalUn: RL restricted to the weights most salient for D_f's loss."""

    Config = SalUnConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        cfg: SalUnConfig = self.config
        model = working_copy(task)
        x_f, y_f = (t.to(task.device) for t in task.forget.tensors())
        masks = saliency_mask(model, x_f, y_f, cfg.mask_ratio, cfg.batch_size)
        params = [p for p in model.parameters() if p.requires_grad]
        originals = [p.detach().clone() for p in params]

        @torch.no_grad()
        def refreeze() -> None:
            for p, p0, m in zip(params, originals, masks):
                p.copy_(torch.where(m, p, p0))

        generator = torch.Generator().manual_seed(task.seed)
        x, y = (t.to(task.device) for t in relabelled_data(task, generator))
        stop = stop_rule_for(task, self.config)
        steps = sgd_train(model, x, y, cfg, hooks, generator=generator, after_step=refreeze, stop=stop)
        salient = sum(int(m.sum()) for m in masks)
        return model, {
            "steps": steps,
            "salient_weights": salient,
            "total_weights": sum(m.numel() for m in masks),
            **stop_details(stop),
        }

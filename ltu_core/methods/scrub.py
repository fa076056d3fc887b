"""SCRUB: teacher–student unlearning (Kurmanji, Triantafillou, Hayes, Triantafillou — "Towards
Unbounded Machine Unlearning", NeurIPS 2023).

The teacher is θ_o, frozen; the student starts as a copy of it. Each epoch alternates a *max*
pass over D_f, which pushes the student's softened outputs away from the teacher's (maximise
KL(teacher ‖ student)), and a *min* pass over D̂_r, which keeps them close (minimise KL) while
fitting the true labels (cross-entropy). Max passes run only in the first `max_epochs` epochs;
the remaining min-only epochs repair what the max passes damaged on retained data.

The public reference code builds its optimizer over the teacher, so the student never learns.
Here the teacher is not a model at all: BatchNorm is frozen and there is no augmentation, so its
outputs are fixed and are computed once from θ_o before training; the only parameters any
optimizer sees are the student's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningTask, cycle, distill_kl, steps_for, working_copy
from ltu_core.methods.ft import SGDConfig
from ltu_core.methods.registry import register_method
from ltu_core.methods.stopping import stop_details, stop_rule_for


@dataclass(frozen=True)
class SCRUBConfig(SGDConfig):
    """`epochs` min passes over D̂_r, the first `max_epochs` each preceded by a max pass over D_f.

    The min-step loss is `kl_weight`·KL + `ce_weight`·CE (the paper's α and γ).
    """

    epochs: int = 3  # an int, unlike SGDConfig's: whole min passes, the first `max_epochs` each after a max pass
    lr: float = 0.005
    max_epochs: int = 2
    temperature: float = 4.0
    kl_weight: float = 1.0
    ce_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.max_epochs <= self.epochs:
            raise ValueError("max_epochs must lie in [0, epochs]")
        if self.temperature <= 0 or self.kl_weight < 0 or self.ce_weight < 0:
            raise ValueError("temperature must be positive, kl_weight and ce_weight >= 0")


@register_method("scrub", test_params=dict(epochs=1, max_epochs=1, batch_size=8))
class SCRUB(UnlearningMethod):
    """SCRUB: a student pulled away from the frozen teacher θ_o on D_f and kept close on D̂_r."""

    Config = SCRUBConfig

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        cfg: SCRUBConfig = self.config
        student = working_copy(task)
        x_f, _ = (t.to(task.device) for t in task.forget.tensors())
        x_r, y_r = (t.to(task.device) for t in task.retain_subset.tensors())
        with torch.no_grad():  # the frozen teacher θ_o: the student before its first step
            teacher_f, teacher_r = student(x_f), student(x_r)
        opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        generator = torch.Generator().manual_seed(task.seed)
        # Batches carry sample positions in place of labels, to look up the teacher's logits.
        forget = cycle(x_f, torch.arange(len(x_f), device=task.device), cfg.batch_size, generator)
        retain = cycle(x_r, torch.arange(len(x_r), device=task.device), cfg.batch_size, generator)
        per_max, per_min = steps_for(1, len(x_f), cfg.batch_size), steps_for(1, len(x_r), cfg.batch_size)
        total = cfg.max_epochs * per_max + cfg.epochs * per_min
        step = 0
        stop = stop_rule_for(task, cfg)

        def descend(loss: torch.Tensor) -> None:
            nonlocal step
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            hooks.progress("unlearning", step, total)

        for epoch in range(cfg.epochs):
            for _ in range(per_max if epoch < cfg.max_epochs else 0):
                hooks.check_cancelled()
                x, pos = next(forget)
                descend(-distill_kl(student(x), teacher_f[pos], cfg.temperature))
            if stop is not None and stop(student):  # checked once per epoch, after its max pass
                break
            for _ in range(per_min):
                hooks.check_cancelled()
                x, pos = next(retain)
                logits = student(x)
                kl = distill_kl(logits, teacher_r[pos], cfg.temperature)
                descend(cfg.kl_weight * kl + cfg.ce_weight * F.cross_entropy(logits, y_r[pos]))
        return student, {"steps": step, "max_steps": cfg.max_epochs * per_max, **stop_details(stop)}

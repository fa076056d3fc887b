"""Retrain: exact unlearning, the gold standard every other method is measured against.

Trains a fresh model from scratch on all of D_r with the original recipe. It is the only
method that reads beyond D̂_r, and the service's fallback when approximate unlearning fails
verification.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ltu_core.methods.base import RunHooks, UnlearningMethod, UnlearningTask
from ltu_core.methods.registry import register_method
from ltu_core.models.factory import build_model
from ltu_core.train.recipe import train_model


@dataclass(frozen=True)
class RetrainConfig:
    """`epochs` 0 keeps the original recipe's; `init_seed` -1 derives the init from the run seed."""

    epochs: int = 0
    init_seed: int = -1

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError("epochs must be >= 0 (0 = the original recipe's)")


@register_method("retrain", test_params=dict(epochs=1))
class Retrain(UnlearningMethod):
    """Retrain from scratch on D_r with the original recipe (exact unlearning)."""

    Config = RetrainConfig
    reads_full_retain = True

    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        cfg: RetrainConfig = self.config
        recipe = task.recipe
        if cfg.epochs:
            recipe = replace(recipe, epochs=cfg.epochs)
        init_seed = task.seed if cfg.init_seed < 0 else cfg.init_seed
        model = build_model(task.arch, seed=init_seed).to(task.device)
        assert task.retain_full is not None  # guaranteed by reads_full_retain
        train_model(
            model,
            task.retain_full,
            recipe,
            seed=task.seed,
            device=task.device,
            progress=lambda _phase, step, total: hooks.progress("retraining", step, total),
            should_cancel=hooks.should_cancel,
        )
        return model, {"epochs": recipe.epochs, "init_seed": init_seed, "samples": len(task.retain_full)}

"""The one training recipe, used for the original model and for Retrain alike.

Retrain is the gold standard only if it is trained exactly like the original, minus D_f; so both
call `train_model` with the same `TrainRecipe` and seed rules, and differ only in their data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ltu_core.data.dataset import SampleSet
from ltu_core.errors import UnlearningCancelled

Progress = Callable[[str, int, int], None]


def no_progress(phase: str, step: int, total: int) -> None:
    """Default progress callback: ignore."""


def never_cancel() -> bool:
    """Default cancellation check: never."""
    return False


@dataclass(frozen=True)
class TrainRecipe:
    """SGD with momentum, cosine learning-rate decay, optional flip/shift augmentation."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # "sgd" | "adamw"
    label_smoothing: float = 0.0
    augment: bool = False

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        """The optimizer this recipe trains with."""
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'sgd' or 'adamw'")


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Random shifts of up to 2 px (translation only: flips would change digit identity).
    b = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx = torch.randint(0, 5, (b,), generator=generator)
    dy = torch.randint(0, 5, (b,), generator=generator)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])


def train_model(
    model: nn.Module,
    data: SampleSet,
    recipe: TrainRecipe,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Progress = no_progress,
    should_cancel: Callable[[], bool] = never_cancel,
) -> nn.Module:
    """Train `model` in place on `data`; same (initial weights, data, recipe, seed) → same result."""
    if len(data) == 0:
        raise ValueError("cannot train on an empty set")
    device = torch.device(device)
    model.to(device).train()
    optimizer = recipe.make_optimizer(model.parameters())
    # A ragged last batch of a few samples gives BatchNorm wild batch statistics, which can
    # derail training (seen: 898 samples in batches of 64 left a 2-sample batch every epoch and
    # the model never fit). Reshuffling every epoch still shows every sample.
    drop_last = len(data) >= recipe.batch_size
    steps_per_epoch = len(data) // recipe.batch_size if drop_last else 1
    total = recipe.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, total)))
    )
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(recipe.epochs):
        for x, y in data.batches(recipe.batch_size, shuffle=True, generator=generator, drop_last=drop_last):
            if should_cancel():
                raise UnlearningCancelled("training cancelled")
            if len(y) < 2:  # BatchNorm cannot train on a single sample
                continue
            if recipe.augment:
                x = _augment(x, generator)
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            progress("train", step, total)
    model.eval()
    return model

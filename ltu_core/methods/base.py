"""The interface every unlearning method implements, and the task it is given.

A method reads an `UnlearningTask` (the original model, D_f, the partial retained subset D̂_r,
the non-member reference slice D_ref and, for exact retraining only, all of D_r) and returns a
new model. It never modifies the original. `run` times the call (RTE: everything the method
does, MI-attacker training included, evaluation excluded) and seeds torch for repeatability.
"""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from ltu_core.data.dataset import SampleSet
from ltu_core.data.selection import UnlearningSplit
from ltu_core.errors import UnlearningCancelled
from ltu_core.models.factory import ArchConfig
from ltu_core.train.recipe import Progress, TrainRecipe, never_cancel, no_progress


@dataclass(frozen=True, eq=False)
class UnlearningTask:
    """Everything a method may read. Only methods with `reads_full_retain` touch `retain_full`."""

    model: nn.Module  # θ_o, trained on D; never modified
    arch: ArchConfig
    forget: SampleSet  # D_f
    retain_subset: SampleSet  # D̂_r (partial access)
    reference: SampleSet  # D_ref: never-trained-on samples, the attackers' non-members
    recipe: TrainRecipe  # the original model's recipe (Retrain trains with it)
    retain_full: SampleSet | None = None  # D_r
    # Labels D_f takes entirely (no retained sample carries them): a whole-class erasure. Read off
    # the split's label metadata, never from images.
    erased_labels: tuple[int, ...] = ()
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def from_split(
        cls,
        model: nn.Module,
        arch: ArchConfig,
        split: UnlearningSplit,
        recipe: TrainRecipe,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> UnlearningTask:
        """The task for one split of a dataset."""
        sets = split.sets()
        labels = split.dataset.labels
        erased = sorted(set(labels[split.forget].tolist()) - set(labels[split.retain].tolist()))
        return cls(
            model=model,
            arch=arch,
            forget=sets["forget"],
            retain_subset=sets["retain_subset"],
            reference=sets["reference"],
            recipe=recipe,
            retain_full=sets["retain"],
            erased_labels=tuple(int(c) for c in erased),
            seed=seed,
            device=torch.device(device),
        )


@dataclass(frozen=True)
class RunHooks:
    """How a method reports progress (phase, step, total) and learns it should stop."""

    progress: Progress = no_progress
    should_cancel: Callable[[], bool] = never_cancel

    def check_cancelled(self) -> None:
        """Raise UnlearningCancelled if the caller asked to stop."""
        if self.should_cancel():
            raise UnlearningCancelled("unlearning cancelled")


@dataclass
class UnlearningResult:
    """The unlearned model and the record of how it was made."""

    model: nn.Module
    seconds: float  # RTE: wall clock of the unlearning procedure
    method: str
    config: dict[str, Any]
    details: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """JSON-ready record (no model)."""
        return {
            "method": self.method,
            "config": self.config,
            "seconds": round(self.seconds, 4),
            "details": self.details,
        }


class UnlearningMethod(ABC):
    """Base class; subclasses set `name`, `Config` (a frozen dataclass) and implement `unlearn`."""

    name: ClassVar[str]
    Config: ClassVar[type]
    reads_full_retain: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def run(self, task: UnlearningTask, hooks: RunHooks = RunHooks()) -> UnlearningResult:
        """Unlearn, timed and seeded; the original model is left untouched."""
        if len(task.forget) == 0:
            raise ValueError("the forget set is empty")
        if self.reads_full_retain and task.retain_full is None:
            raise ValueError(f"method {self.name!r} needs the full retained set D_r")
        start = time.perf_counter()
        # manual_seed also reseeds CUDA, so fork (and later restore) that state too.
        cuda = [task.device.index or 0] if task.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(task.seed)
            model, details = self.unlearn(task, hooks)
        seconds = time.perf_counter() - start
        return UnlearningResult(model.eval(), seconds, self.name, asdict(self.config), details)

    @abstractmethod
    def unlearn(self, task: UnlearningTask, hooks: RunHooks) -> tuple[nn.Module, dict[str, Any]]:
        """Return (new model, method-specific details for the run record)."""


# --- helpers shared by the method files -------------------------------------------------------


def working_copy(task: UnlearningTask) -> nn.Module:
    """A trainable copy of θ_o in eval mode: BatchNorm statistics stay the original's.

    Unlearning batches are small and often all-forget; letting them overwrite BatchNorm's
    running statistics would change the model on every input, not just on D_f.
    """
    model = copy.deepcopy(task.model).to(task.device).eval()
    model.requires_grad_(True)
    return model


def cycle(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches over in-memory tensors (reshuffled every pass)."""
    n = len(y)
    batch_size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = perm[start : start + batch_size]
            yield x[idx], y[idx]


def steps_for(epochs: float, n: int, batch_size: int) -> int:
    """Number of optimizer steps that make `epochs` passes over n samples (at least one)."""
    return max(1, int(round(epochs * max(1, n // max(1, min(batch_size, n))))))


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of outputs softened by T, × T² so the gradient's scale does not depend on T."""
    t = temperature
    log_s, log_t = F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * t * t

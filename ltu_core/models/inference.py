"""Running a model over a sample set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ltu_core.data.dataset import SampleSet
from ltu_core.data.selection import UnlearningSplit


@dataclass(frozen=True)
class Posteriors:
    """A model's softmax outputs on a set, with the true labels."""

    probs: torch.Tensor  # [n, C] float32
    labels: torch.Tensor  # [n] int64

    def __len__(self) -> int:
        return len(self.labels)

    def accuracy(self) -> float:
        """Top-1 accuracy in percent (0 for an empty set)."""
        if len(self) == 0:
            return 0.0
        return float((self.probs.argmax(1) == self.labels).float().mean()) * 100.0

    def subset(self, positions: torch.Tensor) -> Posteriors:
        """The rows at `positions`."""
        return Posteriors(self.probs[positions], self.labels[positions])


@torch.no_grad()
def predict(
    model: nn.Module, samples: SampleSet, *, device: torch.device | str = "cpu", batch_size: int = 512
) -> Posteriors:
    """Softmax outputs of `model` (in eval mode) on every sample, in set order."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for x, y in samples.batches(batch_size):
        probs.append(model(x.to(device)).float().softmax(1).cpu())
        labels.append(y)
    model.train(was_training)
    if not probs:
        return Posteriors(torch.empty(0, 0), torch.empty(0, dtype=torch.int64))
    return Posteriors(torch.cat(probs), torch.cat(labels))


def predict_split(
    model: nn.Module,
    split: UnlearningSplit,
    *,
    names: tuple[str, ...] = ("forget", "retain", "test", "reference"),
    device: torch.device | str = "cpu",
) -> dict[str, Posteriors]:
    """Posteriors of `model` on the named sets of a split: one inference pass that evaluation,
    verification and score summaries can all share."""
    sets = split.sets()
    return {name: predict(model, sets[name], device=device) for name in names}

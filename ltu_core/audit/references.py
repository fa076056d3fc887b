"""Reference models of the likelihood-ratio tier: trained once per model lineage, read by every audit.

K reference ("shadow") models are trained with the model's own recipe, each on a random half of
its training data, in complementary pairs so that every training sample is *out* of exactly K/2
of them (Carlini et al. 2022, offline LiRA). What the audit needs from them is small: each model's
logit-scaled confidence φ on every row of the dataset and which rows it trained on. That is what
`ReferenceScores` holds and stores; the reference weights themselves are dropped after scoring
(they were trained on people who may later ask to be erased, and the audit never reads them).

The per-sample statistic for a forget sample x is t(x) = φ_θ(x) − mean_{r out of x} φ_r(x): how
much more confident the audited model is on x than models that never saw x. A hard sample that
no model is sure of and an easy one every model is sure of are put on one scale, which is where
the tier's power over the rank tier comes from. The p-value is not read off a fitted Gaussian
(whose tails are the weak point of LiRA with few references): each audit control z, which no model
ever saw, gets the same statistic against the *same* out-references, t(z) = φ_θ(z) − mean φ_r(z),
and p(x) = (1 + #{t(z) ≥ t(x)}) / (m + 1). Under the null x and z are exchangeable, so the
p-value is exact whatever the number of references.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ltu_core.audit.scores import logit_confidence
from ltu_core.audit.stats import conformal_pvalues
from ltu_core.data.dataset import UnlearningDataset
from ltu_core.models.factory import ArchConfig, build_model
from ltu_core.models.inference import predict
from ltu_core.train.recipe import Progress, TrainRecipe, never_cancel, no_progress, train_model

FORMAT = "ltu-audit-references"


@dataclass(frozen=True, eq=False)
class ReferenceScores:
    """K reference models' φ on every dataset row, and which rows each trained on."""

    phi: np.ndarray  # [K, N] float32
    trained_on: np.ndarray  # [K, N] bool
    seed: int

    def __post_init__(self) -> None:
        if self.phi.shape != self.trained_on.shape or self.phi.ndim != 2:
            raise ValueError("phi and trained_on must both be [K, N]")

    @property
    def count(self) -> int:
        """K, the number of reference models."""
        return self.phi.shape[0]

    def out_of(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), K] bool: the references that never saw each row."""
        return ~self.trained_on[:, rows].T

    def save(self, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
        """One safetensors file (nothing is ever unpickled); `metadata` goes into its header."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"format": FORMAT, "seed": str(self.seed), "metadata": json.dumps(metadata or {}, sort_keys=True)}
        tensors = {
            "phi": torch.from_numpy(np.ascontiguousarray(self.phi, dtype=np.float32)),
            "trained_on": torch.from_numpy(np.ascontiguousarray(self.trained_on, dtype=np.uint8)),
        }
        save_file(tensors, str(path), metadata=header)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceScores:
        """Read a file written by `save`; ValueError when it is not one."""
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise ValueError(f"{path} is not an {FORMAT} file")
            phi, trained_on = f.get_tensor("phi").numpy(), f.get_tensor("trained_on").numpy().astype(bool)
        return cls(phi=phi, trained_on=trained_on, seed=int(header["seed"]))


def plan_halves(train_rows: np.ndarray, dataset_size: int, count: int, seed: int) -> np.ndarray:
    """[count, dataset_size] bool: count/2 random halves of `train_rows` and their complements.

    Models 2j and 2j+1 split the training data between them, so every train row is in exactly
    count/2 models, and so is it in every prefix of an even number of models (the calibration
    benchmark compares K = 2, 4, ... from one training).
    """
    if count < 2 or count % 2:
        raise ValueError(f"the number of reference models must be even and at least 2, got {count}")
    rng = np.random.Generator(np.random.PCG64([seed, 7]))
    plan = np.zeros((count, dataset_size), dtype=bool)
    for pair in range(count // 2):
        order = rng.permutation(train_rows)
        half = len(order) // 2 + rng.integers(0, 2) * (len(order) % 2)  # an odd row count alternates sides
        plan[2 * pair, order[:half]] = True
        plan[2 * pair + 1, order[half:]] = True
    return plan


def train_references(
    dataset: UnlearningDataset,
    train_rows: np.ndarray,
    arch: ArchConfig,
    recipe: TrainRecipe,
    *,
    count: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Progress = no_progress,
    should_cancel: Callable[[], bool] = never_cancel,
) -> ReferenceScores:
    """Train `count` reference models on balanced halves of `train_rows` and score every row.

    progress("references", k, count) after each model; UnlearningCancelled when `should_cancel`
    turns True (checked inside training).
    """
    plan = plan_halves(np.asarray(train_rows), len(dataset), count, seed)
    readable = dataset.readable_rows()  # a tombstoned row has no pixels to score: its φ stays NaN
    everything = dataset.view(readable)
    phi = np.full((count, len(dataset)), np.nan, dtype=np.float32)
    progress("references", 0, count)
    for k in range(count):
        model = build_model(arch, seed=seed * 1000 + k + 1)
        train_model(
            model,
            dataset.view(np.flatnonzero(plan[k])),
            recipe,
            seed=seed * 1000 + k + 1,
            device=device,
            should_cancel=should_cancel,
        )
        phi[k, readable] = logit_confidence(predict(model, everything, device=device))
        progress("references", k + 1, count)
    return ReferenceScores(phi=phi, trained_on=plan, seed=seed)


def lr_pvalues(
    references: ReferenceScores,
    *,
    forget_rows: np.ndarray,
    forget_phi: np.ndarray,
    control_rows: np.ndarray,
    control_phi: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per forget sample: (p remembered, p over-forgotten) of the likelihood-ratio tier.

    `forget_phi` / `control_phi`: the audited model's φ on those rows. Every control row must be
    out of every reference (audit data no model trained on); a forget row out of none of them
    cannot be tested (ValueError).
    """
    out = references.out_of(np.asarray(forget_rows))
    if references.trained_on[:, control_rows].any():
        raise ValueError("an audit control sample was in a reference model's training data")
    if not out.any(axis=1).all():
        raise ValueError("a forget sample is in every reference model: the references cannot test it")
    p_high, p_low = np.empty(len(forget_rows)), np.empty(len(forget_rows))
    control_ref = references.phi[:, control_rows].astype(np.float64)  # [K, m]
    forget_ref = references.phi[:, forget_rows].astype(np.float64)  # [K, n]
    patterns, which = np.unique(out, axis=0, return_inverse=True)
    for i, pattern in enumerate(patterns):  # samples sharing their out-references share the control statistic
        members = np.flatnonzero(which.reshape(-1) == i)
        t_control = control_phi - control_ref[pattern].mean(axis=0)
        t_forget = forget_phi[members] - forget_ref[pattern][:, members].mean(axis=0)
        p_high[members] = conformal_pvalues(t_forget, t_control)
        p_low[members] = conformal_pvalues(-t_forget, -t_control)
    return p_high, p_low

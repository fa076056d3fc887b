"""The dataset type every part of the library shares.

An `UnlearningDataset` is a table of samples: a uint8 image, a label, a split and two stable
identifiers, `sample_id` (unique per sample) and `subject_id` (the data subject it belongs to).
Images may be a `numpy.memmap`, so a dataset larger than memory is read batch by batch; the
per-sample metadata (ids, labels, splits) is small and always held in memory.

A `SampleSet` is a view: a dataset plus an index array. Forget sets, the partial retained subset
D̂_r, the reference slice and the test set are all sample sets over one dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ltu_core.errors import DatasetFormatError

SPLITS = ("train", "test", "holdout")
"""`train` trained the model; `test` is for reporting; `holdout` was never trained on and is where
membership-inference attackers draw their non-member reference samples from."""


def hash_order(sample_ids: np.ndarray, salt: str) -> np.ndarray:
    """Positions of `sample_ids` sorted by sha256(salt + ":" + id): an order every machine agrees on."""
    keys = [hashlib.sha256(f"{salt}:{sid}".encode()).hexdigest() for sid in sample_ids]
    return np.argsort(np.asarray(keys), kind="stable")


@dataclass(frozen=True, eq=False)
class UnlearningDataset:
    """Images with labels, splits, sample ids and subject ids, one row per sample."""

    name: str
    images: np.ndarray  # [N, C, H, W] uint8, possibly a read-only memmap
    labels: np.ndarray  # [N] int64
    sample_ids: np.ndarray  # [N] str
    subject_ids: np.ndarray  # [N] str
    splits: np.ndarray  # [N] str, each one of SPLITS
    num_classes: int
    # Tombstoned rows (format version 2): their pixels were purged and are zeros; no set may read them.
    purged_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DatasetFormatError(
                f"images must be a uint8 array of shape [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        for field_name in ("images", "sample_ids", "subject_ids", "splits"):
            if len(getattr(self, field_name)) != n:
                raise DatasetFormatError(f"{field_name} has {len(getattr(self, field_name))} rows, labels has {n}")
        if n == 0:
            raise DatasetFormatError("the dataset has no samples")
        if self.num_classes < 2:
            raise DatasetFormatError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.labels.min() < 0 or self.labels.max() >= self.num_classes:
            raise DatasetFormatError(
                f"labels must lie in [0, {self.num_classes - 1}], found [{self.labels.min()}, {self.labels.max()}]"
            )
        unknown = set(np.unique(self.splits)) - set(SPLITS)
        if unknown:
            raise DatasetFormatError(f"unknown split(s) {sorted(unknown)}; allowed: {list(SPLITS)}")
        if len(np.unique(self.sample_ids)) != n:
            raise DatasetFormatError("sample_id values must be unique")
        if np.any(self.sample_ids == "") or np.any(self.subject_ids == ""):
            raise DatasetFormatError("sample_id and subject_id must not be empty")
        if not np.any(self.splits == "train"):
            raise DatasetFormatError("the dataset has no 'train' samples")
        purged = self.purged_rows
        if len(purged) and (len(np.unique(purged)) != len(purged) or purged.min() < 0 or purged.max() >= n):
            raise DatasetFormatError(f"purged rows must be distinct row indices in [0, {n - 1}]")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of every image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def readable_rows(self) -> np.ndarray:
        """Every row index but the tombstoned ones."""
        return np.setdiff1d(np.arange(len(self)), self.purged_rows)

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices of one split, in dataset order."""
        return np.flatnonzero(self.splits == split)

    def view(self, indices: np.ndarray) -> SampleSet:
        """A sample set over the given row indices."""
        return SampleSet(self, np.asarray(indices, dtype=np.int64))

    def with_train_size(self, n: int) -> UnlearningDataset:
        """The same dataset training on only `n` of its train rows; the surplus becomes `holdout`.

        The rows kept are the first `n` train rows in sha256("split:" + sample_id) order, the
        convention the built-in loaders split by (so a built-in dataset cut this way has the same
        train rows as one loaded with `train_size=n` and the same test size). Re-labelled rows were
        never trained on, so they legitimately serve as non-member references. Images, labels, ids
        and every other split are shared unchanged; nothing is copied but the split column.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"train size must be an integer, got {n!r}")
        train = self.split_indices("train")
        if n < 2:
            raise ValueError(f"train size must be at least 2, got {n}")
        if n > len(train):
            raise ValueError(f"train size {n} exceeds the {len(train)} train samples of {self.name!r}")
        surplus = train[hash_order(self.sample_ids[train], "split")[n:]]
        splits = self.splits.astype("<U7")  # a copy, wide enough for "holdout" even if no row had it
        splits[surplus] = "holdout"
        return UnlearningDataset(
            name=self.name,
            images=self.images,
            labels=self.labels,
            sample_ids=self.sample_ids,
            subject_ids=self.subject_ids,
            splits=splits,
            num_classes=self.num_classes,
            purged_rows=self.purged_rows,
        )


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, C, H, W] → float32 in [-1, 1]; the one normalisation every model sees."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


@dataclass(frozen=True, eq=False)
class SampleSet:
    """A subset of a dataset's rows."""

    dataset: UnlearningDataset
    indices: np.ndarray  # [n] int64 row indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        """[n] int64 labels of the rows."""
        return self.dataset.labels[self.indices]

    @property
    def sample_ids(self) -> np.ndarray:
        """[n] sample ids of the rows."""
        return self.dataset.sample_ids[self.indices]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Materialise the rows as (x [n, C, H, W] float32, y [n] int64); a tombstoned row is refused."""
        purged = self.dataset.purged_rows
        if len(purged) and np.isin(self.indices, purged).any():
            raise DatasetFormatError(
                f"{self.dataset.name}: rows {sorted(set(self.indices.tolist()) & set(purged.tolist()))[:5]} are "
                "tombstoned (their pixels were purged); leave them out of every set"
            )
        # Reading sorted rows keeps a memmap's access sequential; then restore the caller's order.
        order = np.argsort(self.indices, kind="stable")
        rows = np.empty((len(self.indices), *self.dataset.image_shape), dtype=np.uint8)
        rows[order] = self.dataset.images[self.indices[order]]
        return to_float(rows), torch.from_numpy(self.labels.astype(np.int64))

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) batches, reading only one batch of images at a time."""
        idx = self.indices
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator).numpy()]
        end = len(idx) - len(idx) % batch_size if drop_last and len(idx) >= batch_size else len(idx)
        for start in range(0, end, batch_size):
            yield self.dataset.view(idx[start : start + batch_size]).tensors()

    def subset(self, positions: np.ndarray) -> SampleSet:
        """The rows at the given positions of this set."""
        return SampleSet(self.dataset, self.indices[np.asarray(positions, dtype=np.int64)])

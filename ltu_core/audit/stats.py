"""The statistics of the erasure audit: per-sample p-values, their combination, the family correction.

Everything here is exact or conservative under the null hypothesis "the audited model never saw
these samples", and each piece is checked against simulated nulls in the suite and measured on
real retrained models by `bench/audit_calibration.py`.

- `conformal_pvalues`: a forget sample scored against m control samples the model never saw. Under
  the null the sample is exchangeable with the controls, so its rank among them is uniform and
  p = (1 + #{controls scoring at least as high}) / (m + 1) is an exact p-value (ties counted
  against the sample, so it is conservative). It is the Mann–Whitney test of one sample against m;
  its smallest value is 1/(m + 1), which is why the control set must be large for a family of
  subjects to be testable at all.
- `simes`: one p-value per data subject from its samples' p-values. A subject's samples are
  correlated (same person, same camera); Simes' combination stays valid when they are positively
  dependent (PRDS), which correlated images of one person are. `bonferroni` (n · min p) is valid
  under any dependence, at a cost in power.
- `holm`: Holm's step-down adjustment over the subjects of a request, and over every subject of
  a coalesced run, so that a run of twenty requests fails a truly unlearned model no more often
  than one request does (family-wise error ≤ α under any dependence between subjects).
- `clopper_pearson`: the exact binomial interval of a measured rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

COMBINATIONS = ("simes", "bonferroni")


def conformal_pvalues(scores: np.ndarray, control: np.ndarray) -> np.ndarray:
    """For each score, (1 + #{control ≥ score}) / (m + 1): small when the score is unusually high."""
    control = np.sort(np.asarray(control, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    if len(control) == 0:
        raise ValueError("a p-value needs at least one control sample")
    at_least = len(control) - np.searchsorted(control, scores, side="left")
    return (1.0 + at_least) / (len(control) + 1.0)


def combine(pvalues: np.ndarray, method: str = "simes") -> float:
    """One p-value from several of one subject: Simes (valid under positive dependence) or Bonferroni."""
    p = np.sort(np.asarray(pvalues, dtype=np.float64))
    n = len(p)
    if n == 0:
        raise ValueError("cannot combine zero p-values")
    if method == "simes":
        return float(min(1.0, np.min(n * p / np.arange(1, n + 1))))
    if method == "bonferroni":
        return float(min(1.0, n * p[0]))
    raise ValueError(f"unknown combination {method!r}; use one of {', '.join(COMBINATIONS)}")


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (reject the i-th hypothesis at level α when its adjusted p ≤ α)."""
    p = np.asarray(pvalues, dtype=np.float64)
    s = len(p)
    if s == 0:
        return p
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((s - np.arange(s)) * p[order])
    adjusted = np.empty(s)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def smallest_attainable(n_control: int, family: int) -> float:
    """The smallest Holm-adjusted subject p-value possible with m controls and `family` subjects.

    A conformal p-value is at least 1/(m + 1), and so is a Simes combination of them; Holm
    multiplies the smallest by the family size. Above α the test cannot fail anything.
    """
    return min(1.0, family / (n_control + 1.0))


def clopper_pearson(failures: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval of failures / trials."""
    from scipy.stats import beta  # scipy.stats takes seconds to import; only the benchmark and tests need it

    if trials <= 0:
        return 0.0, 1.0
    tail = (1.0 - level) / 2.0
    low = 0.0 if failures == 0 else float(beta.ppf(tail, failures, trials - failures + 1))
    high = 1.0 if failures == trials else float(beta.ppf(1.0 - tail, failures + 1, trials - failures))
    return low, high

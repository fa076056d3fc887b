"""Paired comparison of two methods over the same units (seeds, or seed × class).

The test is the exact sign-flip permutation test of the mean paired difference: under the null
hypothesis each difference is symmetric about zero, so every assignment of signs is equally
likely, and the p-value is the share of the 2^n sign assignments whose mean is at least as
extreme as the observed one (Monte Carlo, seeded, above 20 units). It assumes only symmetry and
independence across units, not normality; with n units the smallest attainable one-sided p is
2^-n (1/32 at five seeds). Its error rate under the null is simulated in tests/ltu_core/test_bench.py.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

EXACT_MAX_UNITS = 20
MONTE_CARLO_DRAWS = 1 << 16


def signflip_pvalue(diffs: np.ndarray | list[float], *, alternative: str = "less", seed: int = 0) -> float:
    """p-value of mean(diffs) under sign symmetry; `less`: evidence that the mean is below 0."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise ValueError("need a non-empty 1-d array of paired differences")
    if alternative not in ("less", "greater", "two-sided"):
        raise ValueError("alternative must be 'less', 'greater' or 'two-sided'")
    n = len(d)
    if n <= EXACT_MAX_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        rng = np.random.Generator(np.random.PCG64(seed))
        signs = rng.choice((1.0, -1.0), size=(MONTE_CARLO_DRAWS, n))
    means = signs @ np.abs(d) / n
    observed = d.mean()
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if alternative == "less":
        return float(np.mean(means <= observed + tol))
    if alternative == "greater":
        return float(np.mean(means >= observed - tol))
    return float(np.mean(np.abs(means) >= abs(observed) - tol))


@dataclass(frozen=True)
class PairedComparison:
    """Method A against method B on the same units (A − B; lower Avg. Gap is better)."""

    a: str
    b: str
    n: int
    mean_diff: float
    a_better: int  # units where A's value is strictly lower
    p_less: float  # one-sided: A's mean is lower than B's

    @classmethod
    def of(cls, a: str, b: str, a_values: list[float], b_values: list[float]) -> PairedComparison:
        """Compare paired values (same units, same order)."""
        if len(a_values) != len(b_values) or not a_values:
            raise ValueError("paired values must be non-empty and of equal length")
        d = np.asarray(a_values, dtype=np.float64) - np.asarray(b_values, dtype=np.float64)
        return cls(a, b, len(d), float(d.mean()), int((d < 0).sum()), signflip_pvalue(d, alternative="less"))

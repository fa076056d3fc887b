"""The audit's statistics: exact by hand, and calibrated under simulated nulls (seeded, deterministic).

The simulations are the suite's guard on the certificate's promise: on data the model never saw,
the rank tier may fail a subject (or a coalesced run of 20 subjects) at most α of the time, also
when a subject's samples are strongly correlated. A drift above α fails the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from ltu_core.audit import Evidence, audit, decide, subject_results
from ltu_core.audit.stats import clopper_pearson, combine, conformal_pvalues, holm, smallest_attainable
from ltu_core.audit.verdict import FORGOTTEN, INCONCLUSIVE, OVER_FORGOTTEN, RANK, REMEMBERED, AuditConfig

ALPHA = 0.05


def test_conformal_pvalues_by_hand():
    control = np.array([1.0, 2.0, 3.0, 4.0])
    p = conformal_pvalues(np.array([5.0, 4.0, 2.5, 0.0]), control)
    assert p.tolist() == pytest.approx([1 / 5, 2 / 5, 3 / 5, 1.0])  # ties count against the sample
    with pytest.raises(ValueError):
        conformal_pvalues(np.array([1.0]), np.array([]))


def test_simes_bonferroni_and_holm_by_hand():
    assert combine(np.array([0.04, 0.5, 0.01]), "simes") == pytest.approx(0.03)  # min(3·0.01/1, 3·0.04/2, 0.5)
    assert combine(np.array([0.04, 0.5, 0.01]), "bonferroni") == pytest.approx(0.03)
    assert combine(np.array([0.02, 0.02, 0.02]), "simes") == pytest.approx(0.02)
    assert combine(np.array([0.02, 0.02, 0.02]), "bonferroni") == pytest.approx(0.06)
    assert holm([0.01, 0.04, 0.03]).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]).tolist() == pytest.approx([0.5, 0.002])
    with pytest.raises(ValueError, match="unknown combination"):
        combine(np.array([0.1]), "fisher")


def test_clopper_pearson_matches_known_values():
    low, high = clopper_pearson(10, 200)  # R: binom.test(10, 200)$conf.int
    assert (low, high) == pytest.approx((0.0242342, 0.0900275), abs=1e-6)
    assert clopper_pearson(0, 50)[0] == 0.0 and clopper_pearson(50, 50)[1] == 1.0


def _evidence(scores: np.ndarray, control: np.ndarray, subjects: np.ndarray) -> Evidence:
    return Evidence(
        RANK,
        conformal_pvalues(scores, control),
        conformal_pvalues(-scores, -control),
        subjects,
        len(control),
        np.full(len(scores), 0.5),
    )


def _null_rate(rng: np.random.Generator, *, n: int, subjects: int, rho: float, trials: int, m: int = 400) -> float:
    """Share of trials in which the audit fails a family whose samples the model never saw."""
    failures = 0
    for _ in range(trials):
        control = rng.normal(size=m)
        shared = rng.normal(size=(subjects, 1))  # a subject's samples share a component: correlated
        scores = (np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.normal(size=(subjects, n))).ravel()
        keys = np.repeat(np.arange(subjects).astype(str), n)
        verdict = audit(_evidence(scores, control, keys), config=AuditConfig(alpha=ALPHA))
        failures += verdict.outcome == REMEMBERED
    return failures / trials


@pytest.mark.parametrize(
    ("n", "subjects", "rho"),
    [(1, 1, 0.0), (4, 1, 0.0), (16, 1, 0.0), (4, 1, 0.9), (16, 1, 0.6), (4, 20, 0.0), (4, 20, 0.9)],
)
def test_rank_tier_null_failure_rate_stays_at_or_below_alpha(n, subjects, rho):
    trials = 1500
    rate = _null_rate(
        np.random.Generator(np.random.PCG64([n, subjects, int(rho * 10)])),
        n=n,
        subjects=subjects,
        rho=rho,
        trials=trials,
    )
    low, _ = clopper_pearson(round(rate * trials), trials)
    assert low <= ALPHA, f"false-failure rate {rate:.3f} is significantly above alpha {ALPHA}"


def test_the_old_mean_rank_test_was_miscalibrated_where_the_new_one_is_not():
    # The z-test of the mean rank with SD 1/√(12n) ignores the control's own noise and the subject's
    # correlation; at n = 16 correlated samples it fails a model that never saw them far above 2.3 %.
    rng = np.random.Generator(np.random.PCG64(5))
    old_failures, trials, n, m = 0, 1500, 16, 90
    for _ in range(trials):
        control, shared = rng.normal(size=m), rng.normal()
        scores = np.sqrt(0.6) * shared + np.sqrt(0.4) * rng.normal(size=n)
        mean_rank = np.mean([(control < s).mean() for s in scores])
        old_failures += mean_rank > 0.5 + 2.0 / np.sqrt(12 * n)
    assert old_failures / trials > 0.1
    assert _null_rate(np.random.Generator(np.random.PCG64(6)), n=n, subjects=1, rho=0.6, trials=trials, m=m) <= 0.05


def test_power_over_forgetting_and_inconclusive_outcomes():
    rng = np.random.Generator(np.random.PCG64(1))
    control = rng.normal(size=400)
    keys = np.array(["a"] * 4)
    remembered = audit(_evidence(rng.normal(size=4) + 4.0, control, keys))
    assert remembered.outcome == REMEMBERED and not remembered.forgetting_passed and remembered.conclusive
    over = audit(_evidence(rng.normal(size=4) - 4.0, control, keys))
    assert over.outcome == OVER_FORGOTTEN and over.over_forgetting and over.forgetting_passed
    clean = audit(_evidence(rng.normal(size=4), control, keys))
    assert clean.outcome == FORGOTTEN and clean.passed and not clean.over_forgetting
    tiny = audit(_evidence(rng.normal(size=4) + 4.0, control[:10], keys))  # 1/11 > α: nothing can fail
    assert tiny.outcome == INCONCLUSIVE and not tiny.conclusive and not tiny.passed
    assert smallest_attainable(10, 1) == pytest.approx(1 / 11)


def test_holm_runs_over_the_whole_family_of_a_coalesced_run():
    rng = np.random.Generator(np.random.PCG64(2))
    control = rng.normal(size=400)
    scores = np.concatenate([rng.normal(size=4) + 2.2, rng.normal(size=76)])
    keys = np.repeat(np.arange(20).astype(str), 4)
    evidence = _evidence(scores, control, keys)
    alone = audit(evidence.subset(np.arange(4)))
    results = subject_results(evidence)
    in_run = decide(
        results[:1],
        evidence.subset(np.arange(4)),
        family_size=20,
        config=AuditConfig(),
        test_accuracy=1,
        original_test_accuracy=1,
    )
    assert results[0].adjusted_remembered >= alone.subjects[0].adjusted_remembered
    assert in_run.family_size == 20 and in_run.min_adjusted_p == results[0].adjusted_remembered


def test_utility_check_and_config_validation():
    rng = np.random.Generator(np.random.PCG64(3))
    evidence = _evidence(rng.normal(size=4), rng.normal(size=400), np.array(["a"] * 4))
    verdict = audit(evidence, config=AuditConfig(max_test_drop=1.0), test_accuracy=90.0, original_test_accuracy=95.0)
    assert verdict.forgetting_passed and not verdict.utility_passed and not verdict.passed
    with pytest.raises(ValueError, match="alpha"):
        AuditConfig(alpha=0.0)
    with pytest.raises(ValueError, match="combination"):
        AuditConfig(combine="fisher")

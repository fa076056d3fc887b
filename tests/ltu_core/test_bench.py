"""The benchmark protocol: independent Retrains, the class convention, determinism, the paired test."""

from __future__ import annotations

import numpy as np
import pytest

from ltu_core.bench import (
    FLOOR,
    ORIGINAL,
    RETRAIN,
    BenchConfig,
    MethodRun,
    cases,
    environment,
    markdown_table,
    paired_comparisons,
    paired_table,
    retrain_seed,
    run_bench,
    signflip_pvalue,
)
from ltu_core.models import ArchConfig
from ltu_core.train import TrainRecipe

TINY = BenchConfig(
    dataset="synthetic",
    dataset_args={"num_samples": 160, "num_classes": 4, "noise": 100.0, "extra_holdout": 120},
    arch=ArchConfig("resnet18", num_classes=4, img_size=8, width=0.125),
    recipe=TrainRecipe(epochs=2, batch_size=32),
    seeds=(1, 2),
    scenarios=("random", "class"),
    classes=(1, 2),
    forget_count=8,
    gold_retrains=2,
    relearn_steps=3,
    methods=(
        MethodRun("ltu", "ltu", {"max_passes": 1.0, "attacker_steps": 10}),
        MethodRun("ft", "ft", {"epochs": 1.0}),
    ),
    ablations=(MethodRun("ltu -meta", "ltu", {"meta": False, "max_passes": 1.0, "attacker_steps": 10}),),
    scenario_params={"class": {"ft": {"lr": 0.001}}},
)


@pytest.fixture(scope="module")
def tiny_rows():
    messages: list[str] = []
    rows = run_bench(TINY, progress=messages.append)
    return rows, messages


def _comparable(rows):
    return [{k: v for k, v in r.as_dict().items() if k not in ("seconds", "rte_ratio")} for r in rows]


def test_rows_gold_floor_and_methods(tiny_rows):
    rows, messages = tiny_rows
    # 2 originals, 2 × 3 random Retrains (per seed) + 2 × 3 class Retrains (shared), 2 × 3 cases × 3 runs.
    assert len(messages) == 2 + 6 + 6 + 2 * 3 * 3
    labels = [r.method for r in rows if r.case == "random" and r.seed == 1]
    assert labels == [RETRAIN, FLOOR, ORIGINAL, "ltu", "ft", "ltu -meta"]
    by = {(r.case, r.seed, r.method): r for r in rows}
    gold = by[("random", 1, RETRAIN)]
    assert gold.avg_gap == 0 and gold.rte_ratio == 1 and gold.details["retrains"] == 2
    assert by[("random", 1, ORIGINAL)].seconds == 0
    assert by[("class 1", 2, "ft")].details["params"] == {"lr": 0.001, "epochs": 1.0}  # scenario override
    assert {r.case for r in rows} == {"random", "class 1", "class 2"}
    row = by[("random", 1, "ltu")].as_dict()
    assert {"case", "relearn_ua", "audit_tpr", "avg_gap", "rte_ratio"} <= set(row)
    table = markdown_table(rows, "random")
    assert table.count("\n") == 1 + 6 and "| ltu |" in table and "1 (ref)" in table


def test_class_scenario_follows_salun(tiny_rows):
    rows, _ = tiny_rows
    # A Retrain never saw the class: it cannot classify D_f (UA 100), and TA leaves the class out,
    # so the gold TA is not capped at (1 − 1/C).
    gold = [r for r in rows if r.case == "class 1" and r.method == RETRAIN]
    assert all(r.ua == 100.0 for r in gold)
    # The class's Retrains are shared by every seed: the same gold UA/RA/TA/MIA-efficacy inputs.
    assert gold[0].ta == gold[1].ta


def test_retrains_are_independent_of_the_original_and_of_each_other():
    seeds = {retrain_seed("random:8:1", j) for j in range(4)}
    assert len(seeds) == 4 and not seeds & {1, 2}
    assert retrain_seed("class:1", 0) != retrain_seed("class:2", 0)
    assert [c.name for c in cases(TINY, 1)] == ["random", "class 1", "class 2"]
    assert cases(TINY, 1)[0].spec != cases(TINY, 2)[0].spec  # the random draw follows the seed
    assert cases(TINY, 1)[1].spec == cases(TINY, 2)[1].spec  # a class does not


def test_two_runs_give_identical_rows(tiny_rows):
    rows, _ = tiny_rows
    again = run_bench(TINY)
    assert _comparable(again) == _comparable(rows)
    env = environment(TINY)
    assert env["threads"] == TINY.threads and env["torch"] and env["deterministic_algorithms"]


def test_paired_comparisons_cover_every_method(tiny_rows):
    rows, _ = tiny_rows
    comparisons = {c.b: c for c in paired_comparisons(rows, "random")}
    assert set(comparisons) == {FLOOR, ORIGINAL, "ft", "ltu -meta"}
    assert all(c.n == 2 for c in comparisons.values())
    assert comparisons["ft"].p_less in (0.25, 0.5, 0.75, 1.0)  # 2 units: multiples of 1/4
    table = paired_table(rows, "class")  # units are seeds, each the mean over its classes
    assert "| s1 | s2 |" in table and "| ft |" in table


def test_signflip_exact_values():
    assert signflip_pvalue([-1.0, -2.0, -3.0, -4.0, -5.0]) == pytest.approx(1 / 32)
    assert signflip_pvalue([1.0, 2.0, 3.0]) == 1.0
    assert signflip_pvalue([-1.0, 1.0], alternative="two-sided") == 1.0
    with pytest.raises(ValueError):
        signflip_pvalue([])


@pytest.mark.parametrize("n", [5, 8, 25])
def test_signflip_error_rate_under_the_null_is_at_most_alpha(n):
    # Symmetric, heavy-tailed null differences (t with 2 d.o.f.): the rejection rate at α = 0.05
    # must not exceed α beyond simulation noise (2,000 trials: SE ≈ 0.005).
    rng = np.random.default_rng(n)
    trials = 2000 if n <= 8 else 400
    rejections = sum(signflip_pvalue(rng.standard_t(2, n), seed=i) <= 0.05 for i in range(trials))
    assert rejections / trials <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)


def test_signflip_has_power_against_a_shift():
    rng = np.random.default_rng(0)
    rejections = sum(signflip_pvalue(rng.normal(-1.0, 1.0, 8)) <= 0.05 for _ in range(300))
    assert rejections / 300 > 0.6


def test_config_rejects_unknown_scenarios():
    with pytest.raises(ValueError, match="scenario"):
        BenchConfig(scenarios=("sideways",))
    with pytest.raises(ValueError):
        BenchConfig(gold_retrains=0)

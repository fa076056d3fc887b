"""bench/scale.py's core on tiny synthetic data: one row per train size, with both wall times and LTU's gap."""

from __future__ import annotations

import json
from pathlib import Path

from ltu_core.bench import BenchConfig, MethodRun
from ltu_core.data import make_synthetic
from ltu_core.models import ArchConfig
from ltu_core.train import TrainRecipe
from tests.support import load_bench_script

REPO = Path(__file__).resolve().parents[2]
TEST_SIZE = 40


scale = load_bench_script("scale")

CFG = BenchConfig(
    dataset="synthetic",
    dataset_args={},
    arch=ArchConfig("resnet18", num_classes=4, img_size=8, width=0.125),
    recipe=TrainRecipe(epochs=2, batch_size=32),
    seeds=(1,),
    scenarios=("random",),
    forget_count=10,
    gold_retrains=1,
)
LTU_TINY = MethodRun("ltu", "ltu", {"max_passes": 1.0, "attacker_steps": 10})


def _synthetic(n: int):
    """n train samples, 40 test, 200 holdout."""
    return make_synthetic(num_samples=n + TEST_SIZE, test_size=TEST_SIZE, num_classes=4, noise=100.0, extra_holdout=200)


def test_one_row_per_size():
    messages = []
    rows = scale.run_scale(CFG, (60, 120), seed=1, ltu=LTU_TINY, load=_synthetic, progress=messages.append)
    assert [r["train_size"] for r in rows] == [60, 120]
    assert len(messages) == 3 * 2
    for r in rows:
        assert r["sizes"]["forget"] == CFG.forget_count
        assert r["retrain_seconds"] > 0 and r["ltu_seconds"] > 0
        assert r["ltu_over_retrain"] > 0 and r["ltu_avg_gap"] >= 0 and r["original_avg_gap"] >= 0
        assert r["ltu_params"] == LTU_TINY.params
    json.dumps(rows)  # the results file can hold them
    table = scale.scale_table(rows)
    assert table.count("\n") == 1 + 2 and "| 60 |" in table and "| 120 |" in table

"""The benchmark runner: rows, the Retrain reference, ratios and the table."""

from __future__ import annotations

from ltu_core.bench import BenchConfig, MethodRun, markdown_table, run_bench
from ltu_core.models import ArchConfig
from ltu_core.train import TrainRecipe


def test_tiny_benchmark_rows_and_table():
    cfg = BenchConfig(
        dataset="synthetic",
        dataset_args={"num_samples": 160, "num_classes": 4, "noise": 100.0},
        arch=ArchConfig("resnet18", num_classes=4, img_size=8, width=0.125),
        recipe=TrainRecipe(epochs=2, batch_size=32),
        seeds=(1,),
        scenarios=("random", "class"),
        forget_count=8,
        methods=(
            MethodRun("ltu", "ltu", {"max_passes": 1.0, "attacker_steps": 10}),
            MethodRun("ft", "ft", {"epochs": 1.0}),
        ),
        ablations=(MethodRun("ltu -meta", "ltu", {"meta": False, "max_passes": 1.0, "attacker_steps": 10}),),
        scenario_params={"class": {"ft": {"lr": 0.001}}},
    )
    messages = []
    rows = run_bench(cfg, progress=messages.append)
    assert len(messages) == 1 + 2 * 5
    labels = [r.method for r in rows if r.scenario == "random"]
    assert labels == ["retrain", "retrain (2nd seed)", "original", "ltu", "ft", "ltu -meta"]
    by = {(r.scenario, r.method): r for r in rows}
    assert by[("random", "retrain")].avg_gap == 0 and by[("random", "retrain")].rte_ratio == 1
    assert by[("random", "original")].seconds == 0
    assert by[("class", "ft")].details["params"] == {"epochs": 1.0, "lr": 0.001}  # scenario override
    assert by[("class", "original")].ua == 0 or by[("class", "original")].ua < 100
    row = by[("random", "ltu")].as_dict()
    assert {"method", "seed", "ua", "ra", "ta", "mia", "avg_gap", "seconds", "rte_ratio"} <= set(row)
    table = markdown_table(rows, "random")
    assert table.count("\n") == 1 + 6 and "| ltu |" in table and "1 (ref)" in table

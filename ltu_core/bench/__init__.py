"""The benchmark: LTU against independent Retrains and every baseline, under one protocol.

`config` names what is compared (presets), `protocol` runs it deterministically, `report` turns
rows into tables and paired comparisons, `stats` holds the paired test, `sequential` runs the
robustness benchmark of many successive requests on one model.
"""

from ltu_core.bench.config import ABLATIONS, BASELINES, CLASSES, LTU, PRESETS, BenchConfig, MethodRun
from ltu_core.bench.protocol import (
    FLOOR,
    ORIGINAL,
    RETRAIN,
    Case,
    Row,
    cases,
    count_units,
    environment,
    load_dataset,
    random_spec,
    retrain_seed,
    run_bench,
)
from ltu_core.bench.report import (
    floor_ratio,
    markdown_table,
    paired_comparisons,
    paired_table,
    render,
    render_results,
    summarize,
)
from ltu_core.bench.sequential import (
    SequentialRow,
    count_sequential_units,
    run_sequential,
    sequential_splits,
    sequential_summary,
    sequential_table,
)
from ltu_core.bench.stats import PairedComparison, signflip_pvalue

__all__ = [
    "ABLATIONS",
    "BASELINES",
    "CLASSES",
    "FLOOR",
    "LTU",
    "ORIGINAL",
    "PRESETS",
    "RETRAIN",
    "BenchConfig",
    "Case",
    "MethodRun",
    "PairedComparison",
    "Row",
    "SequentialRow",
    "cases",
    "count_sequential_units",
    "count_units",
    "environment",
    "floor_ratio",
    "load_dataset",
    "markdown_table",
    "paired_comparisons",
    "paired_table",
    "random_spec",
    "render",
    "render_results",
    "retrain_seed",
    "run_bench",
    "run_sequential",
    "sequential_splits",
    "sequential_summary",
    "sequential_table",
    "signflip_pvalue",
    "summarize",
]

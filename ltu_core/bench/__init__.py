"""The benchmark: LTU against independent Retrains and every baseline, under one protocol.

`config` names what is compared (presets), `protocol` runs it deterministically, `report` turns
rows into tables and paired comparisons, `stats` holds the paired test.
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
from ltu_core.bench.report import floor_ratio, markdown_table, paired_comparisons, paired_table, summarize
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
    "cases",
    "count_units",
    "environment",
    "floor_ratio",
    "load_dataset",
    "markdown_table",
    "paired_comparisons",
    "paired_table",
    "random_spec",
    "retrain_seed",
    "run_bench",
    "signflip_pvalue",
    "summarize",
]

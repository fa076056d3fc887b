"""The README's benchmark tables are the committed results files, rendered: cell for cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltu_core.bench import SequentialRow, render_results, sequential_table
from tests.support import load_bench_script

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
README = (REPO / "README.md").read_text()


def _tables(markdown: str) -> list[str]:
    """The markdown tables of a text, each as one block of consecutive `|` lines."""
    blocks, current = [], []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks


@pytest.mark.parametrize("name", ["random", "class", "class-round1"])
def test_readme_quotes_every_table_of_the_benchmark(name):
    payload = json.loads((RESULTS / f"{name}.json").read_text())
    tables = _tables(render_results(payload))
    assert tables
    for table in tables:
        assert table in README, f"README does not quote this table of {name}.json:\n{table}"
    assert payload["environment"]["threads"] >= 1 and len(payload["environment"]["commit"]) == 40


def test_readme_quotes_the_sequential_and_scale_tables():
    sequential = json.loads((RESULTS / "sequential.json").read_text())
    table = sequential_table([SequentialRow.from_dict(r) for r in sequential["rows"]])
    assert table in README
    scale = load_bench_script("scale")
    assert scale.scale_table(json.loads((RESULTS / "scale.json").read_text())["rows"]) in README


def _validated_best(name: str) -> dict[str, dict]:
    summary = json.loads((RESULTS / f"tuning-{name}.json").read_text())["summary"]
    best: dict[str, dict] = {}
    for row in summary:
        if row["method"] != "original" and (
            row["method"] not in best or row["avg_gap"] < best[row["method"]]["avg_gap"]
        ):
            best[row["method"]] = row
    return best


def test_defaults_and_class_settings_are_what_validation_chose():
    from ltu_core.bench.config import CLASS_PARAMS
    from ltu_core.methods import create_method

    for method, row in _validated_best("random").items():
        config = create_method(method).config
        assert {k: getattr(config, k) for k in row["params"]} == row["params"], method
    for method, row in _validated_best("class").items():
        config = create_method(method, **CLASS_PARAMS.get(method, {})).config
        assert {k: getattr(config, k) for k in row["params"]} == row["params"], method

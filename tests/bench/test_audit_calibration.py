"""bench/audit_calibration.py keeps working: its quick mode runs the whole protocol in-process, writes
a table `ltu_core.audit.CalibrationTable` can read and quote, and is deterministic.

The measured rates are never asserted (bench/ is not part of pass/fail; the statistics' calibration
is asserted on simulated nulls in tests/ltu_core/test_audit_stats.py); the schema, the bounds of
every rate and the repeatability are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltu_core.audit import CalibrationTable
from tests.support import load_bench_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "audit_calibration.py"
REQUIRED = ("tier", "n", "model", "trials", "alpha", "failure_rate", "ci_low", "ci_high")


calibration = load_bench_script("audit_calibration")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("calibration") / "audit-calibration.json"
    document = calibration.main(["--mode", "quick", "--quiet", "--json", str(out)])
    return document, out


def test_quick_run_writes_a_complete_table(quick):
    document, out = quick
    assert json.loads(out.read_text()) == json.loads(json.dumps(document))
    cfg = document["config"]
    rows = document["rows"]
    for row in rows:
        assert all(key in row for key in REQUIRED), row
        assert 0.0 <= row["ci_low"] <= row["failure_rate"] <= row["ci_high"] <= 1.0
        assert 0.0 <= row["over_forgetting_rate"] <= 1.0
        assert row["trials"] > 0 and row["targets"] >= 1
        for key in ("tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"):
            assert 0.0 <= row[key] <= 1.0
        assert (row["references"] is None) == (row["tier"] == "rank")
    single = [r for r in rows if "family" not in r]
    for tier, k in [("rank", None)] + [("likelihood_ratio", k) for k in cfg["reference_counts"]]:
        for n in cfg["sizes"]:
            for model in ("retrain", "original", *cfg["methods"]):
                match = [
                    r
                    for r in single
                    if (r["tier"], r["references"], r["n"], r["model"], r["alpha"])
                    == (tier, k, n, model, cfg["alphas"][0])
                ]
                assert len(match) == 1, (tier, k, n, model)
                assert match[0]["trials"] == cfg["trials"]
    assert next(r for r in single if r["model"] == "retrain")["targets"] == cfg["targets"]
    coalesced = [r for r in rows if "family" in r]
    assert {(r["tier"], r["references"]) for r in coalesced} == {("rank", None)} | {
        ("likelihood_ratio", k) for k in cfg["reference_counts"]
    }
    assert all(r["family"] == cfg["coalesce_subjects"] and r["model"] == "retrain" for r in coalesced)
    tails = document["per_sample_null"]
    assert {(e["tier"], e["references"]) for e in tails} == {(r["tier"], r["references"]) for r in coalesced}
    for e in tails:
        assert e["samples"] == cfg["targets"] * round(cfg["pool_fraction"] * document["split"]["train"])
        assert 0 <= e["remembered_count"] <= e["samples"] and e["ci_low"] <= e["remembered_rate"] <= e["ci_high"]
    for key in ("commit", "torch", "timm", "numpy", "torch_threads"):
        assert key in document["environment"]
    assert document["seconds"]["total"] > 0
    summary = document["summary"]
    assert summary["default_references"] in (None, *cfg["reference_counts"])
    assert isinstance(summary["calibrated"], bool)


def test_the_service_can_quote_the_table(quick):
    _, out = quick
    table = CalibrationTable.load(out)
    quoted = table.quote("rank", 3, 0.05)
    assert quoted is not None and quoted["n"] == 4 and quoted["power"] is not None
    assert quoted["false_failure_rate"] == next(
        r["failure_rate"] for r in table.rows if (r["tier"], r["n"], r["model"]) == ("rank", 4, "retrain")
    )
    assert table.quote("likelihood_ratio", 1, 0.05, 2)["n"] == 1


def test_quick_run_is_deterministic(quick):
    document, _ = quick
    again = calibration.run(calibration.quick_config(), quiet=True)
    assert again["rows"] == document["rows"]
    assert again["summary"] == document["summary"]

    def accuracies(doc: dict) -> dict:
        return {name: info["accuracy"] for name, info in doc["models"].items()}

    assert accuracies(again) == accuracies(document)

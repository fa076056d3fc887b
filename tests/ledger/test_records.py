"""The typed run records: JSON round trips, tolerant reads of older rows, refusals, and the column type."""

from __future__ import annotations

import math

import pytest

from ledger.records import Calibration, Metrics, SubjectEvidence, Verdict, Verification, from_json, to_json

VERDICT = Verdict(
    passed=True,
    forgetting_passed=True,
    utility_passed=True,
    conclusive=True,
    n_forget=4,
    n_control=900,
    test_accuracy=90.0,
    original_test_accuracy=91.0,
    outcome="forgotten",
    tier="rank",
    alpha=0.05,
    subjects=[SubjectEvidence("ab12", 4, 0.4, 0.6, 0.4, 0.6)],
    calibration=Calibration("0" * 64, 4, 400, 0.045, 0.027, 0.07, 0.2),
    forget_mean_rank=0.52,
    forget_nonmember_rate=None,
    control_nonmember_rate=50.0,
)


def test_a_verdict_written_before_the_audit_records_still_loads():
    old = {
        "passed": True,
        "forgetting_passed": True,
        "utility_passed": True,
        "conclusive": True,
        "forget_mean_rank": 0.52,
        "rank_threshold": 0.81,
        "n_forget": 4,
        "n_control": 90,
        "forget_nonmember_rate": None,
        "control_nonmember_rate": 50.0,
        "test_accuracy": 90.0,
        "original_test_accuracy": 91.0,
        "thresholds": {"z": 2.0, "max_test_drop": 5.0},
    }
    verdict = from_json(Verdict, old)
    assert verdict.forget_mean_rank == 0.52 and verdict.subjects == [] and verdict.calibration is None


def test_a_record_survives_a_json_round_trip():
    record = Verification(passed=True, exact=False, before=VERDICT, after=VERDICT)
    assert from_json(Verification, to_json(record)) == record


def test_older_rows_load_missing_fields_default_and_unknown_keys_are_ignored():
    assert from_json(Verification, {"passed": False, "retired_field": 1}) == Verification(passed=False)
    assert from_json(Metrics, {"ua": 3, "ta": 90.5}) == Metrics(ua=3.0, ta=90.5)  # ints read as floats


@pytest.mark.parametrize(
    "data",
    [
        {},  # passed is required
        {"passed": "yes"},
        {"passed": True, "after": {"passed": True}},  # an incomplete verdict
        {"passed": True, "after": [1, 2]},
    ],
)
def test_a_malformed_record_is_refused_with_its_path(data):
    with pytest.raises(ValueError, match="Verification"):
        from_json(Verification, data)


def test_non_finite_numbers_become_null():
    assert to_json(Metrics(ua=math.nan, ra=math.inf, ta=1.0))["ua"] is None


def test_the_column_takes_records_only_and_json_paths_still_query(tmp_path):
    from sqlalchemy import create_engine, select
    from sqlalchemy.exc import StatementError
    from sqlalchemy.orm import Session

    from ledger.tables import Base, ModelVersion

    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    Base.metadata.create_all(engine, tables=[ModelVersion.__table__])
    base = {"model_id": "m", "sha256": "0" * 64, "size_bytes": 1, "storage_key": "k"}
    with Session(engine) as session:
        session.add(ModelVersion(number=1, metrics=Metrics(ta=91.0), **base))
        session.commit()
        assert session.scalars(select(ModelVersion)).one().metrics == Metrics(ta=91.0)
        assert session.scalar(select(ModelVersion.metrics["ta"].as_float())) == 91.0
    with Session(engine) as session, pytest.raises(StatementError, match="expected a Metrics record"):
        session.add(ModelVersion(number=2, metrics={"ta": 91.0}, **base))
        session.commit()

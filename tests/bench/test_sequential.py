"""Sequential erasures on a tiny config: rows per checkpoint, cumulative counts, erased rows never read
again, each step continuing from the previous step's model, and repeatability."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ltu_core.bench import FLOOR, ORIGINAL, RETRAIN, BenchConfig, MethodRun, load_dataset
from ltu_core.bench import sequential as seq
from ltu_core.models import ArchConfig
from ltu_core.train import TrainRecipe
from tests.support import load_bench_script

REPO = Path(__file__).resolve().parents[2]
STEPS, PER_STEP, CHECKPOINTS = 3, 2, (1, 3)
CFG = BenchConfig(
    dataset="synthetic",
    dataset_args={"num_samples": 160, "num_classes": 4, "noise": 100.0, "extra_holdout": 200},
    arch=ArchConfig("resnet18", num_classes=4, img_size=8, width=0.125),
    recipe=TrainRecipe(epochs=2, batch_size=32),
    seeds=(1,),
    scenarios=("random",),
    gold_retrains=1,
    methods=(
        MethodRun("ltu", "ltu", {"max_passes": 1.0, "attacker_steps": 10}),
        MethodRun("ft", "ft", {"epochs": 1.0}),
    ),
    ablations=(),
)
LABELS = [RETRAIN, FLOOR, ORIGINAL, "ltu", "ft"]
KEYS = {"method", "seed", "step", "forgotten", "ua", "ra", "ta", "mia", "avg_gap", "seconds"}


def _run(**kwargs):
    return seq.run_sequential(CFG, steps=STEPS, subjects_per_step=PER_STEP, checkpoints=CHECKPOINTS, seed=1, **kwargs)


@pytest.fixture(scope="module")
def recorded():
    """One run with create_method wrapped so every method run's task is recorded."""
    tasks: list[tuple[str, object, object]] = []  # (method name, task, result model)
    messages: list[str] = []
    real = seq.create_method

    def spying(name, **params):
        method = real(name, **params)
        run = method.run

        def recording_run(task, hooks=None):
            result = run(task) if hooks is None else run(task, hooks)
            tasks.append((name, task, result.model))
            return result

        method.run = recording_run
        return method

    patch = pytest.MonkeyPatch()
    patch.setattr(seq, "create_method", spying)
    try:
        rows = _run(progress=messages.append)
    finally:
        patch.undo()
    return rows, tasks, messages


def test_rows_at_every_checkpoint_for_every_method(recorded):
    rows, _, messages = recorded
    assert [(r.step, r.method) for r in rows] == [(s, m) for s in CHECKPOINTS for m in LABELS]
    assert len(messages) == seq.count_sequential_units(CFG, steps=STEPS, checkpoints=CHECKPOINTS)
    for r in rows:
        assert r.seed == 1
        assert 0 <= r.ua <= 100 and 0 <= r.ra <= 100 and 0 <= r.ta <= 100 and 0 <= r.mia <= 100
        assert r.avg_gap >= 0 and r.seconds >= 0
        assert set(r.as_dict()) >= KEYS
    by = {(r.step, r.method): r for r in rows}
    for s in CHECKPOINTS:
        assert by[s, RETRAIN].avg_gap == 0
        assert by[s, ORIGINAL].seconds == 0
        assert by[s, FLOOR].seconds > 0
    # A method's seconds add up over the steps.
    assert by[3, "ltu"].seconds > by[1, "ltu"].seconds > 0
    table = seq.sequential_table(rows)
    assert table.count("\n") == 1 + 4  # header, rule, floor, original, ltu, ft (the gold row is left out)
    assert "| ltu |" in table and "1 (ref)" in table and "step 3" in table


def test_cumulative_forgotten_counts_grow(recorded):
    rows, _, _ = recorded
    data = load_dataset(CFG)
    splits = seq.sequential_splits(CFG, data, steps=STEPS, subjects_per_step=PER_STEP, seed=1)
    per_step = [len(s.forget) for s in splits]
    assert all(n >= 1 for n in per_step)
    forgotten = {r.step: r.forgotten for r in rows if r.method == "ltu"}
    assert forgotten == {s: sum(per_step[:s]) for s in CHECKPOINTS}
    assert forgotten[3] > forgotten[1]
    assert {r.forgotten for r in rows if r.step == 3} == {forgotten[3]}  # every row of a step: the same erasure


def test_erased_rows_are_never_read_again(recorded):
    _, tasks, _ = recorded
    data = load_dataset(CFG)
    splits = seq.sequential_splits(CFG, data, steps=STEPS, subjects_per_step=PER_STEP, seed=1)
    train = data.split_indices("train")
    erased = np.empty(0, dtype=np.int64)
    for i, split in enumerate(splits, start=1):
        assert len(split.forget) > 0
        # Step i erases the train samples of its subjects, none of which was erased before.
        subjects = np.unique(data.subject_ids[split.forget])
        assert len(subjects) == PER_STEP
        expected = train[np.isin(data.subject_ids[train], subjects)]
        np.testing.assert_array_equal(split.forget, np.sort(expected))
        for rows in (split.forget, split.retain, split.retain_subset):
            assert not np.isin(rows, erased).any(), f"step {i} reads a row erased earlier"
        np.testing.assert_array_equal(
            np.sort(np.concatenate([split.forget, split.retain])), np.setdiff1d(train, erased)
        )
        erased = np.union1d(erased, split.forget)

    # The methods were given exactly these sets, step after step, each on the previous step's model.
    for label in ("ltu", "ft"):
        mine = [(task, model) for name, task, model in tasks if name == label]
        assert len(mine) == max(CHECKPOINTS)
        for i, (task, _) in enumerate(mine):
            np.testing.assert_array_equal(task.forget.indices, splits[i].forget)
            np.testing.assert_array_equal(task.retain_subset.indices, splits[i].retain_subset)
            if i:
                assert task.model is mine[i - 1][1]
    # The gold Retrains train on the cumulative D_r: train minus everything erased by the checkpoint.
    retrains = [task for name, task, _ in tasks if name == "retrain"]
    assert len(retrains) == len(CHECKPOINTS) * (CFG.gold_retrains + 1)
    for k, step in enumerate(CHECKPOINTS):
        gone = np.concatenate([s.forget for s in splits[:step]])
        for task in retrains[k * (CFG.gold_retrains + 1) : (k + 1) * (CFG.gold_retrains + 1)]:
            np.testing.assert_array_equal(task.retain_full.indices, np.setdiff1d(train, gone))
            np.testing.assert_array_equal(task.forget.indices, np.sort(gone))
        assert len({t.seed for t in retrains}) == len(retrains)  # every Retrain its own seed


def test_two_runs_give_identical_rows(recorded):
    first, _, _ = recorded
    second = _run()

    def strip(rows):
        return [{k: v for k, v in r.as_dict().items() if k != "seconds"} for r in rows]

    assert json.dumps(strip(first)) == json.dumps(strip(second))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="checkpoints"):
        seq.run_sequential(CFG, steps=3, checkpoints=(4,), seed=1)
    with pytest.raises(ValueError, match="reserved"):
        seq.run_sequential(replace(CFG, methods=(MethodRun("original", "ft"),)), steps=1, checkpoints=(1,), seed=1)
    with pytest.raises(ValueError, match="subjects"):
        seq.sequential_splits(CFG, load_dataset(CFG), steps=100, subjects_per_step=3, seed=1)


def test_script_writes_config_environment_and_rows(tmp_path, monkeypatch, capsys):
    script = load_bench_script("sequential")
    monkeypatch.setitem(script.PRESETS, "tiny", CFG)
    out = tmp_path / "sequential.json"
    args = ["--preset", "tiny", "--seeds", "1", "--steps", "1", "--checkpoints", "1", "--methods", "ft"]
    document = script.main([*args, "--json", str(out), "--quiet"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(document))
    assert {"config", "environment", "rows"} <= set(document)
    assert document["environment"]["threads"] == CFG.threads
    assert [r["method"] for r in document["rows"]] == [RETRAIN, FLOOR, ORIGINAL, "ft"]
    assert "| ft |" in capsys.readouterr().out

"""`ltu bench` on a user's ltu-dataset (folder or tar): the model fits the data, the JSON records the
config, the dataset and the environment, and every bad option is one line and exit status 2."""

from __future__ import annotations

import json

import pytest

from ltu_cli.main import main
from ltu_core.data import make_synthetic, pack_dataset, write_dataset

TINY = ["--preset", "smoke", "--epochs", "1", "--methods", "ltu,ft", "--no-ablations", "--threads", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """96 noisy 1×8×8 images in 3 classes (72 train, 24 test) and 60 holdout, as an ltu-dataset folder."""
    data = make_synthetic(num_samples=96, num_classes=3, image_size=8, noise=100.0, extra_holdout=60, seed=3)
    return write_dataset(data, tmp_path_factory.mktemp("bench-data") / "mine")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A 3-channel, 5-class, 6 px dataset packed as the upload form (.tar)."""
    root = tmp_path_factory.mktemp("bench-tar")
    data = make_synthetic(num_samples=80, num_classes=5, image_size=6, channels=3, extra_holdout=40, seed=4)
    return pack_dataset(write_dataset(data, root / "rgb"), root / "rgb.tar")


def test_bench_on_a_dataset_folder(folder, tmp_path, capsys):
    out = tmp_path / "results" / "bench.json"
    argv = ["bench", *TINY, "--dataset", str(folder), "--train-size", "48", "--forget-count", "6"]
    code = main([*argv, "--scenarios", "random,class", "--classes", "1", "--seeds", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    payload = json.loads(out.read_text())
    assert payload["preset"] == "smoke" and payload["dataset"] == str(folder)
    arch = payload["config"]["arch"]
    assert (arch["num_classes"], arch["in_chans"], arch["img_size"]) == (3, 1, 8)  # from the data, not digits
    assert payload["config"]["recipe"]["epochs"] == 1 and payload["config"]["classes"] == [1]
    assert payload["config"]["forget_count"] == 6 and payload["config"]["threads"] == 1
    assert payload["dataset_splits"] == {"train": 48, "test": 24, "holdout": 84}  # 24 surplus train rows
    env = payload["environment"]
    assert {"commit", "dirty", "torch", "numpy", "python", "machine", "threads", "deterministic_algorithms"} <= set(env)
    assert env["threads"] == 1 and payload["wall_seconds"] >= 0
    units = [(r["case"], r["method"]) for r in payload["rows"]]
    per_case = ["retrain", "retrain (independent)", "original", "ltu", "ft"]
    assert units == [("random", m) for m in per_case] + [("class 1", m) for m in per_case]
    assert all(r["seed"] == 1 for r in payload["rows"])
    for heading in ("### random forgetting", "### class 1 forgetting", "### class forgetting — per-seed"):
        assert heading in printed
    assert printed.count("ltu Avg. Gap / floor = ") == 2 and "| ft |" in printed and "LTU ablations" not in printed


def test_bench_on_a_tar_fits_channels_classes_and_stem(archive, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", *TINY, "--dataset", str(archive), "--forget-count", "4", "--gold-retrains", "2"]
    code = main([*argv, "--no-small-stem", "--width", "0.0625", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    payload = json.loads(out.read_text())
    arch = payload["config"]["arch"]
    assert (arch["num_classes"], arch["in_chans"], arch["img_size"]) == (5, 3, 6)
    assert arch["small_stem"] is False and arch["width"] == 0.0625
    gold = next(r for r in payload["rows"] if r["method"] == "retrain")
    assert gold["details"]["retrains"] == 2


def _fails_cleanly(argv, capsys, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--preset", "full"], "unknown preset 'full'; available: smoke, random, class"),
        (["--seeds", "1,x"], "--seeds '1,x': expected comma-separated integers"),
        (["--seeds", ""], "expected comma-separated integers"),
        (["--seeds", "1,1"], "a value is repeated"),
        (["--seeds", "-1"], "every value must be at least 0"),
        (["--scenarios", "random,subjects"], "unknown scenario(s) ['subjects']"),
        (["--classes", "2"], "--classes needs the class scenario"),
        (["--scenarios", "class", "--classes", "1,a"], "--classes '1,a': expected comma-separated integers"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--epochs", "2.5"], "--epochs '2.5': expected an integer"),
        (["--forget-count", "-3"], "--forget-count must be at least 1"),
        (["--gold-retrains", "0"], "--gold-retrains must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--width", "0"], "--width must be positive"),
        (["--width", "nan"], "--width must be positive"),
        (["--train-size", "1"], "--train-size must be at least 2"),
        (["--methods", "ltu,nope"], "unknown method label(s) ['nope']"),
        (["--methods", ","], "--methods names no method label"),
        (["--preset", "random", "--methods", "ltu -meta", "--no-ablations"], "nothing to compare"),
    ],
)
def test_bad_options_fail_before_any_data_is_read(options, message, capsys):
    _fails_cleanly(["bench", *options], capsys, message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--scenarios", "class", "--classes", "0,3"], "--classes: class 3 is outside 'synthetic''s labels 0..2"),
        (["--scenarios", "class"], "the preset's classes [2, 3, 4, 6, 7] (pass --classes): class 3 is outside"),
        (["--forget-count", "72"], "--forget-count must be smaller than the 72 train samples"),
        (["--train-size", "73"], "--train-size: train size 73 exceeds the 72 train samples"),
        (["--train-size", "30"], "the preset's forget count 40 must be smaller than the 30 train samples"),
        (["--arch", "no_such_net"], "--arch 'no_such_net'"),
    ],
)
def test_options_that_do_not_fit_the_dataset(folder, options, message, capsys):
    _fails_cleanly(["bench", "--dataset", str(folder), *options], capsys, message)


def test_dataset_errors_are_one_line(tmp_path, capsys):
    _fails_cleanly(["bench", "--dataset", str(tmp_path / "nothing")], capsys, "no such dataset")
    _fails_cleanly(["bench", "--dataset", "digits", "--train-size", "5000"], capsys, "does not fit 1797 samples")

"""`ltu train | unlearn | bench`: the happy path, and every bad input as one line + exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ltu_cli.main import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny model trained by `ltu train` on the built-in synthetic dataset."""
    out = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    code = main(["train", "--dataset", "synthetic", "--epochs", "2", "--width", "0.125", "--out", str(out)])
    assert code == 0 and out.exists()
    return out


def test_unlearn_writes_a_checkpoint_and_a_record(checkpoint, tmp_path, capsys):
    out = tmp_path / "unlearned.safetensors"
    code = main(
        [
            "unlearn",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "synthetic",
            "--forget",
            "random:8",
            "--method",
            "ltu",
            "--param",
            "max_passes=1",
            "--param",
            "attacker_steps=10",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and out.exists()
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["split"]["sizes"]["forget"] == 8
    assert record["run"]["method"] == "ltu" and record["run"]["config"]["max_passes"] == 1.0
    assert set(record["metrics_before"]) >= {"ua", "ra", "ta", "mia"} and "passed" in record["verification"]
    assert "verification:" in capsys.readouterr().out


def _fails_cleanly(argv, capsys, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_unknown_method(checkpoint, tmp_path, capsys):
    _fails_cleanly(
        [
            "unlearn",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "synthetic",
            "--forget",
            "random:4",
            "--method",
            "magic",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capsys,
        "unknown unlearning method 'magic'",
    )


def test_empty_forget_set(checkpoint, tmp_path, capsys):
    _fails_cleanly(
        [
            "unlearn",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "synthetic",
            "--forget",
            "samples:",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capsys,
        "cannot read forget spec",
    )
    _fails_cleanly(
        [
            "unlearn",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "synthetic",
            "--forget",
            "subjects:nobody",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capsys,
        "has a training sample",
    )


def test_forget_set_equal_to_the_training_set(checkpoint, tmp_path, capsys):
    _fails_cleanly(
        [
            "unlearn",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "synthetic",
            "--forget",
            "random:1.0",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capsys,
        "whole training set",
    )


def test_dataset_that_does_not_match_the_format(checkpoint, tmp_path, capsys):
    bogus = tmp_path / "data.tar"
    bogus.write_bytes(b"not a tar" * 100)
    _fails_cleanly(
        [
            "unlearn",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            str(bogus),
            "--forget",
            "random:4",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capsys,
        "not an uncompressed tar",
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    _fails_cleanly(
        ["train", "--dataset", str(folder), "--out", str(tmp_path / "m.safetensors")], capsys, "missing manifest.json"
    )


def test_checkpoint_that_is_not_safetensors(tmp_path, capsys):
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    _fails_cleanly(
        [
            "unlearn",
            "--checkpoint",
            str(pickle),
            "--dataset",
            "synthetic",
            "--forget",
            "random:4",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capsys,
        "not a safetensors checkpoint",
    )


def test_dataset_that_does_not_fit_the_checkpoint(checkpoint, tmp_path, capsys):
    _fails_cleanly(
        [
            "unlearn",
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "digits",
            "--forget",
            "random:4",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capsys,
        "does not fit the checkpoint",
    )


def test_bench_rejects_unknown_preset_and_labels(capsys):
    _fails_cleanly(["bench", "--preset", "huge"], capsys, "unknown preset 'huge'")
    _fails_cleanly(["bench", "--methods", "ltu,nope"], capsys, "unknown method label")


def test_the_console_script_prints_no_traceback(tmp_path):
    # The real entry point, in a fresh process.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ltu_cli.main",
            "unlearn",
            "--checkpoint",
            str(tmp_path / "none.safetensors"),
            "--dataset",
            "synthetic",
            "--forget",
            "random:4",
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "no such checkpoint" in done.stderr and "Traceback" not in done.stderr

"""`ltu dataset pack` (images + CSV, and .npz) and `ltu dataset validate`: round trips through the
library's reader, one precise line and exit 2 for every kind of bad input, and validate refusing what
the service refuses."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import ltu

SPLITS = ["train", "train", "train", "train", "train", "train", "test", "test", "holdout", "holdout"]


def gray(seed: int, size=(6, 5)) -> np.ndarray:
    """A [H, W] uint8 image (5 wide, 6 high by default)."""
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)


def write_images(folder: Path, rows: list[dict]) -> tuple[Path, Path]:
    """The rows' images (a PNG of an `image` array, `image` bytes as they are, no file without one) and the
    CSV of every row, its header the first row's keys but `image`."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if isinstance(row.get("image"), np.ndarray):
            Image.fromarray(row["image"]).save(images / row["file"])
        elif isinstance(row.get("image"), bytes):
            (images / row["file"]).write_bytes(row["image"])
    table = folder / "table.csv"
    header = [k for k in rows[0] if k != "image"]
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[row.get(k, "") for k in header] for row in rows])
    return images, table


def good_rows() -> list[dict]:
    return [
        {"file": f"img{i}.png", "label": i % 3, "subject_id": f"person-{i // 2}", "split": split, "image": gray(i)}
        for i, split in enumerate(SPLITS)
    ]


def read_back(archive: Path, tmp_path: Path):
    from ltu_core.data import read_dataset, unpack_dataset

    return read_dataset(unpack_dataset(archive, tmp_path / "unpacked"))


def test_pack_from_images_and_csv_round_trips_and_validates(tmp_path, capsys):
    rows = good_rows()
    images, table = write_images(tmp_path, rows)
    out = tmp_path / "mine.tar"
    assert ltu("dataset", "pack", "--images", str(images), "--csv", str(table), "--out", str(out)) == 0
    assert "10 images of 1×6×5, 3 classes, 5 subjects; train 6, test 2, holdout 2" in capsys.readouterr().out
    data = read_back(out, tmp_path)
    assert data.name == "mine" and data.num_classes == 3
    np.testing.assert_array_equal(np.asarray(data.images), np.stack([r["image"][None] for r in rows]))
    assert data.sample_ids.tolist() == [r["file"] for r in rows]  # sample_id defaults to the file
    assert data.subject_ids.tolist() == [r["subject_id"] for r in rows]
    assert data.labels.tolist() == [r["label"] for r in rows] and data.splits.tolist() == SPLITS

    assert ltu("dataset", "validate", str(out)) == 0
    assert capsys.readouterr().out.startswith(f"ok: {out}: 'mine', 10 images of 1×6×5")


def test_pack_takes_sample_ids_a_class_count_and_converts_mixed_images_to_rgb(tmp_path):
    rows = good_rows()
    for row in rows:
        row["sample_id"] = "s-" + row["file"]
    rows[1]["image"] = np.stack([gray(1), gray(2), gray(3)], axis=-1)  # one colour image: all become RGB
    images, table = write_images(tmp_path, rows)
    out = tmp_path / "rgb.tar"
    argv = ["--images", str(images), "--csv", str(table), "--num-classes", "5", "--name", "faces", "--out", str(out)]
    assert ltu("dataset", "pack", *argv) == 0
    data = read_back(out, tmp_path)
    assert data.name == "faces" and data.num_classes == 5 and data.image_shape == (3, 6, 5)
    assert data.sample_ids.tolist() == ["s-" + r["file"] for r in rows]
    np.testing.assert_array_equal(data.images[0], np.stack([rows[0]["image"]] * 3))  # gray → R = G = B
    np.testing.assert_array_equal(data.images[1], rows[1]["image"].transpose(2, 0, 1))


def test_pack_from_npz_round_trips(tmp_path, capsys):
    x = np.stack([gray(i) for i in range(10)])
    arrays = {"x": x, "y": np.arange(10) % 2, "subject_ids": np.arange(10) // 3, "splits": np.asarray(SPLITS)}
    np.savez(tmp_path / "arrays.npz", **arrays)
    out = tmp_path / "arrays.tar"
    assert ltu("dataset", "pack", "--npz", str(tmp_path / "arrays.npz"), "--out", str(out)) == 0
    data = read_back(out, tmp_path)
    np.testing.assert_array_equal(np.asarray(data.images), x[:, None])  # [N, H, W]: one channel
    assert data.sample_ids.tolist() == [f"arrays-{i}" for i in range(10)]
    assert data.subject_ids.tolist() == [str(i // 3) for i in range(10)]  # integer ids become text
    assert data.num_classes == 2 and "4 subjects" in capsys.readouterr().out

    chw = np.stack([np.stack([gray(i), gray(i + 1), gray(i + 2)]) for i in range(10)])
    ids = np.asarray([f"photo-{i}" for i in range(10)])
    np.savez(tmp_path / "chw.npz", **{**arrays, "x": chw, "sample_ids": ids})
    assert ltu("dataset", "pack", "--npz", str(tmp_path / "chw.npz"), "--out", str(tmp_path / "chw.tar")) == 0
    data = read_back(tmp_path / "chw.tar", tmp_path / "again")
    np.testing.assert_array_equal(np.asarray(data.images), chw)
    assert data.sample_ids.tolist() == ids.tolist()


def _edit_row(index: int, **changes):
    def edit(rows: list[dict]) -> list[dict]:
        rows[index].update(changes)
        return rows

    return edit


def _drop_column(column: str):
    def edit(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != column} for row in rows]

    return edit


def _missing_image(rows: list[dict]) -> list[dict]:
    del rows[4]["image"]
    return rows


def _not_an_image(rows: list[dict]) -> list[dict]:
    rows[5]["image"] = b"not a png"
    return rows


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop_column("subject_id"), "table.csv: missing column(s) subject_id; the header must name file, label"),
        (_drop_column("split"), "missing column(s) split"),
        (_edit_row(0, subjectid="x"), "unexpected column(s) subjectid"),
        (_edit_row(3, split="validation"), "table.csv:5: split 'validation' is not one of train, test, holdout"),
        (_edit_row(2, label="cat"), "table.csv:4: label 'cat' is not a class index (0, 1, 2, ...)"),
        (_edit_row(2, label="²"), "table.csv:4: label '²' is not a class index"),
        (_edit_row(2, label="-1"), "table.csv:4: label '-1' is not a class index"),
        (_edit_row(1, subject_id=""), "table.csv:3: subject_id is empty"),
        (_edit_row(7, image=gray(7, size=(6, 6))), "table.csv:9: img7.png is 6×6 pixels, but img0.png (line 2) is 5×6"),
        (_missing_image, "table.csv:6: img4.png: no such image in"),
        (_not_an_image, "table.csv:7: img5.png: not an image Pillow can read"),
        (_edit_row(3, sample_id="img0.png"), "sample_id values must be unique"),
        (_edit_row(0, subject_id="x" * 256), "subject_ids[0] has 256 characters; the service takes ids of at most 255"),
    ],
)
def test_bad_images_or_csv_are_one_precise_line(tmp_path, capsys, edit, message):
    rows = good_rows()
    for row in rows:
        row.setdefault("sample_id", row["file"])
    images, table = write_images(tmp_path, edit(rows))
    out = tmp_path / "out.tar"
    assert ltu("dataset", "pack", "--images", str(images), "--csv", str(table), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltu dataset: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_row_with_too_few_fields_and_bad_option_combinations(tmp_path, capsys):
    images, table = write_images(tmp_path, good_rows())
    table.write_text(table.read_text() + "img0.png,1\n")
    assert ltu("dataset", "pack", "--images", str(images), "--csv", str(table), "--out", str(tmp_path / "o.tar")) == 2
    assert "table.csv:12: expected 4 fields, one per column of the header" in capsys.readouterr().err
    assert ltu("dataset", "pack", "--images", str(images), "--out", str(tmp_path / "o.tar")) == 2
    assert "--images needs --csv" in capsys.readouterr().err
    assert ltu("dataset", "pack", "--images", str(images), "--csv", str(table), "--out", "/no/such/dir/o.tar") == 2
    assert "the folder /no/such/dir does not exist" in capsys.readouterr().err


def _npz(**changes) -> dict:
    arrays = {
        "x": np.stack([gray(i) for i in range(10)]),
        "y": np.arange(10) % 2,
        "subject_ids": np.asarray([f"p{i // 2}" for i in range(10)]),
        "splits": np.asarray(SPLITS),
    }
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (_npz(splits=None), "missing array(s) splits; an .npz for ltu holds x, y, subject_ids, splits"),
        (_npz(labels=np.arange(10)), "unexpected array(s) labels"),
        (
            _npz(x=np.zeros((10, 6, 5), dtype=np.float32)),
            "x must be uint8 of shape [N, C, H, W] or [N, H, W], got float32",
        ),
        (_npz(x=np.zeros((10, 30), dtype=np.uint8)), "got uint8 [10, 30]"),
        (_npz(y=np.arange(9)), "y must have shape [10] (one per image of x), got [9]"),
        (_npz(y=np.linspace(0, 1, 10)), "y must hold integer class indices, got float64"),
        (_npz(y=np.arange(10) - 1), "y[0] is -1; class indices start at 0"),
        (_npz(splits=np.asarray([*SPLITS[:-1], "val"])), "splits[9] is 'val', not one of train, test, holdout"),
        (_npz(subject_ids=np.asarray([f"p{i}" for i in range(10)], dtype=object)), "subject_ids is an object array"),
        (_npz(subject_ids=np.ones(10)), "subject_ids must be strings (numpy dtype str), got float64"),
        (_npz(splits=np.asarray(["test"] * 10)), "the dataset has no 'train' samples"),
    ],
)
def test_bad_npz_arrays_are_one_precise_line(tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    assert ltu("dataset", "pack", "--npz", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "o.tar")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_file_that_is_not_an_npz(tmp_path, capsys):
    (tmp_path / "fake.npz").write_bytes(b"\x80\x04 pickled?")
    assert ltu("dataset", "pack", "--npz", str(tmp_path / "fake.npz"), "--out", str(tmp_path / "o.tar")) == 2
    assert "fake.npz: not a numpy .npz file" in capsys.readouterr().err


# --- validate, against what the service refuses ------------------------------------------------------


def rebuilt(archive: Path, target: Path, *, replace: dict[str, bytes] | None = None, add: dict | None = None) -> Path:
    """A copy of a dataset tar with members replaced or added."""
    with tarfile.open(archive) as source, tarfile.open(target, "w") as out:
        for member in source.getmembers():
            data = (replace or {}).get(member.name, source.extractfile(member).read())
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return target


def test_validate_refuses_what_the_service_refuses(api, tmp_path, capsys):
    images, table = write_images(tmp_path, good_rows())
    good = tmp_path / "good.tar"
    assert ltu("dataset", "pack", "--images", str(images), "--csv", str(table), "--out", str(good)) == 0
    with tarfile.open(good) as tar:
        index = tar.extractfile("samples.csv").read().decode()
        manifest = tar.extractfile("manifest.json").read().decode()
    long_id = index.replace("person-0", "p" * 256, 1)
    broken = {
        "an extra entry": (rebuilt(good, tmp_path / "extra.tar", add={"notes.txt": b"hi"}), "unexpected entries"),
        "a label out of range": (
            rebuilt(good, tmp_path / "label.tar", replace={"samples.csv": index.replace(",2,", ",7,", 1).encode()}),
            "labels must lie in [0, 2]",
        ),
        "an unknown split": (
            rebuilt(good, tmp_path / "split.tar", replace={"samples.csv": index.replace(",test", ",dev", 1).encode()}),
            "split 'dev' is not one of train, test, holdout",
        ),
        "pixels missing": (
            rebuilt(good, tmp_path / "short.tar", replace={"images.u8": b"\0" * 10}),
            "images.u8: 10 bytes, but 10 images of shape [1, 6, 5] need 300",
        ),
        "an id too long": (
            rebuilt(good, tmp_path / "long.tar", replace={"samples.csv": long_id.encode()}),
            "subject_ids[0] has 256 characters",
        ),
        "a NUL in an id": (
            rebuilt(good, tmp_path / "nul.tar", replace={"samples.csv": index.replace("person-0", "a\0b", 1).encode()}),
            "samples.csv holds a NUL character",
        ),
        "a name too long": (
            rebuilt(
                good,
                tmp_path / "name.tar",
                replace={"manifest.json": manifest.replace('"good"', '"' + "n" * 201 + '"').encode()},
            ),
            "must be at most 200 characters",
        ),
    }
    for what, (archive, message) in broken.items():
        assert ltu("dataset", "validate", str(archive)) == 2, what
        assert message in capsys.readouterr().err, what
        answer = api.http.post(
            "/v1/datasets", files={"archive": (archive.name, archive.read_bytes())}, headers=api.client.headers
        )
        assert 400 <= answer.status_code < 500, (what, answer.status_code)
    assert ltu("dataset", "validate", str(good)) == 0
    assert api.client.register_dataset(good).num_samples == 10

    (tmp_path / "plain.txt").write_text("not a tar")
    assert ltu("dataset", "validate", str(tmp_path / "plain.txt")) == 2
    assert "not an uncompressed tar archive" in capsys.readouterr().err
    assert ltu("dataset", "validate", str(tmp_path / "nothing.tar")) == 2
    assert "nothing.tar: no such file or folder" in capsys.readouterr().err


def test_the_commands_constants_are_the_formats_and_the_services():
    from api import uploads
    from ltu_cli import dataset
    from ltu_core.data import SPLITS as LIBRARY_SPLITS

    assert dataset.SPLITS == LIBRARY_SPLITS == uploads.SPLITS
    assert dataset.MAX_ID_LENGTH == uploads.MAX_ID_LENGTH
    assert dataset.MAX_NAME_LENGTH == uploads.MAX_NAME_LENGTH
    assert uploads.ARCH_BOUNDS["num_classes"][1] == dataset.MAX_CLASSES

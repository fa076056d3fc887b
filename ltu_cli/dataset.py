"""`ltu dataset pack` and `ltu dataset validate`: your own data as the ltu-dataset tar the service takes.

`pack` reads either a folder of images with a CSV, or one .npz of arrays (the columns and arrays are
below and in the README, "Your own data"), and writes the tar through ltu_core's `write_dataset` and
`pack_dataset`, so it is the documented format by construction. `validate` opens a tar with ltu_core's
reader, whose checks the service's upload check mirrors, and adds the service's own bound on id
lengths. Either prints one summary line, or one line naming the file, line or array and what is wrong.

Images are read with Pillow, 8 bits per channel, and must all have one size: when every image is
grayscale the dataset has one channel, otherwise each is converted to RGB (alpha dropped). Pixels
go through a memmap in a temporary folder, so a folder larger than memory packs.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltu_cli.common import CLIError

CSV_COLUMNS = ("file", "label", "subject_id", "split")
CSV_OPTIONAL = ("sample_id",)  # default: the `file` value
NPZ_ARRAYS = ("x", "y", "subject_ids", "splits")
NPZ_OPTIONAL = ("sample_ids",)  # default: <name>-<row>
SPLITS = ("train", "test", "holdout")  # ltu_core.data.SPLITS (a test compares them); kept here for a light import
# The service's bounds beyond the format (api/uploads.py; a test compares them): id and name lengths, classes.
MAX_ID_LENGTH = 255
MAX_NAME_LENGTH = 200
MAX_CLASSES = 100_000
GRAYSCALE_MODES = {"1", "L", "LA"}
EIGHT_BIT_MODES = GRAYSCALE_MODES | {"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
CLASS_INDEX = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() would also take "١", " 1" and "1_0"


def register(sub: argparse._SubParsersAction) -> None:
    """Add dataset pack and dataset validate."""
    p = sub.add_parser("dataset", help="build an ltu-dataset tar from images + CSV or an .npz, or check one")
    actions = p.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    k = actions.add_parser(
        "pack",
        help="write an ltu-dataset tar from a folder of images + a CSV, or from an .npz",
        description="From images: --images DIR --csv FILE, the CSV with the header "
        "file,label,subject_id,split[,sample_id] (file: a path under DIR; label: the class index 0..K-1; "
        "split: train, test or holdout; sample_id defaults to file). From arrays: --npz FILE with x (uint8, "
        "[N, C, H, W] or [N, H, W]), y (integers [N]), subject_ids and splits (strings [N]) and optionally "
        "sample_ids (strings [N]; default <name>-<row>).",
    )
    source = k.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="folder of PNG/JPEG images named by the CSV")
    source.add_argument("--npz", type=Path, metavar="FILE", help="numpy .npz with x, y, subject_ids, splits")
    k.add_argument("--csv", type=Path, metavar="FILE", help="with --images: one row per image (columns above)")
    k.add_argument("--num-classes", type=int, metavar="K", help="number of classes (default: the largest label + 1)")
    k.add_argument("--name", help="the dataset's name in its manifest (default: the output file's stem)")
    k.add_argument("--out", required=True, type=Path, metavar="TAR", help="the tar to write")
    k.set_defaults(handler=cmd_pack)

    v = actions.add_parser(
        "validate",
        help="check an ltu-dataset tar (or folder) before uploading it: a summary, or the first problem",
    )
    v.add_argument("dataset", type=Path, metavar="FILE", help="the .tar (or an ltu-dataset folder)")
    v.set_defaults(handler=cmd_validate)


@dataclass(frozen=True)
class Columns:
    """One row per sample, as read from the user's files."""

    images: Any  # [N, C, H, W] uint8
    labels: Any
    sample_ids: Any
    subject_ids: Any
    splits: Any


def cmd_pack(args: argparse.Namespace) -> int:
    """Read the images + CSV or the .npz, check them, write the tar."""
    from ltu_core.data import UnlearningDataset, pack_dataset, write_dataset

    if args.images is not None and args.csv is None:
        raise CLIError("--images needs --csv, the table of file, label, subject_id and split")
    if args.npz is not None and args.csv is not None:
        raise CLIError("--csv goes with --images; an .npz carries its labels, subjects and splits itself")
    if not args.out.parent.is_dir():
        raise CLIError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    name = args.name or args.out.stem
    with tempfile.TemporaryDirectory(prefix="ltu-pack-") as tmp:
        work = Path(tmp)
        if args.npz is not None:
            columns = read_npz(args.npz, name)
        else:
            columns = read_images(args.images, args.csv, work / "pixels.u8")
        num_classes = args.num_classes or int(columns.labels.max()) + 1
        dataset = UnlearningDataset(
            name=name,
            images=columns.images,
            labels=columns.labels,
            sample_ids=columns.sample_ids,
            subject_ids=columns.subject_ids,
            splits=columns.splits,
            num_classes=num_classes,
        )
        folder = write_dataset(dataset, work / "dataset")
        check_service_bounds(dataset, folder)
        pack_dataset(folder, args.out)
        print(f"wrote {args.out}: {summary(dataset)}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Open the tar as the service's upload check would; print what it holds or the first problem."""
    from ltu_core.data import read_dataset, unpack_dataset
    from ltu_settings import ApiSettings

    path: Path = args.dataset
    with tempfile.TemporaryDirectory(prefix="ltu-validate-") as tmp:
        if path.is_dir():
            folder = path
        elif path.is_file():
            folder = unpack_dataset(path, Path(tmp) / "dataset")
        else:
            raise CLIError(f"{path}: no such file or folder")
        dataset = read_dataset(folder)
        check_service_bounds(dataset, folder)
        print(f"ok: {path}: {summary(dataset)}")
    limit = ApiSettings.model_fields["max_dataset_bytes"].default
    if path.is_file() and path.stat().st_size > limit:
        print(
            f"note: {path.stat().st_size} bytes is over the service's default upload limit of {limit} "
            "(LTU_MAX_DATASET_BYTES); the server must be configured with a larger one",
            file=sys.stderr,
        )
    return 0


# --- reading the user's files ----------------------------------------------------------------------


def read_images(folder: Path, table: Path, pixels: Path) -> Columns:
    """The CSV's rows and their images (checked for size and mode first, then decoded into `pixels`)."""
    import numpy as np

    if not folder.is_dir():
        raise CLIError(f"--images {folder}: not a folder")
    rows = read_csv(table)
    sizes = [(lineno, row["file"], _image_header(folder, table, lineno, row["file"])) for lineno, row in rows]
    first_line, first_file, (first_size, _) = sizes[0]
    for lineno, file, (size, _) in sizes:
        if size != first_size:
            raise CLIError(
                f"{table}:{lineno}: {file} is {size[0]}×{size[1]} pixels, but {first_file} (line {first_line}) is "
                f"{first_size[0]}×{first_size[1]}: every image must have the same size (resize them first)"
            )
    grayscale = all(mode in GRAYSCALE_MODES for _, _, (_, mode) in sizes)
    width, height = first_size
    shape = (len(rows), 1 if grayscale else 3, height, width)
    images = np.memmap(pixels, dtype=np.uint8, mode="w+", shape=shape)
    for index, (_, row) in enumerate(rows):
        images[index] = _decode(folder / row["file"], grayscale)
    images.flush()
    return Columns(
        images=np.memmap(pixels, dtype=np.uint8, mode="r", shape=shape),
        labels=np.asarray([int(row["label"]) for _, row in rows], dtype=np.int64),
        sample_ids=np.asarray([row.get("sample_id") or row["file"] for _, row in rows], dtype=str),
        subject_ids=np.asarray([row["subject_id"] for _, row in rows], dtype=str),
        splits=np.asarray([row["split"] for _, row in rows], dtype=str),
    )


def read_csv(table: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every data row, each field checked; the first problem is a CLIError."""
    if not table.is_file():
        raise CLIError(f"--csv {table}: no such file")
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            reader.fieldnames = header
            _check_header(table, header)
            rows = [(lineno, _check_row(table, lineno, row)) for lineno, row in enumerate(reader, start=2)]
    except UnicodeDecodeError:
        raise CLIError(f"{table}: not UTF-8 text") from None
    except csv.Error as exc:
        raise CLIError(f"{table}: malformed CSV ({exc})") from None
    if not rows:
        raise CLIError(f"{table}: no rows below the header")
    return rows


def _check_header(table: Path, header: list[str]) -> None:
    expected = ", ".join(CSV_COLUMNS) + f" (and optionally {', '.join(CSV_OPTIONAL)})"
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise CLIError(f"{table}: missing column(s) {', '.join(missing)}; the header must name {expected}")
    unknown = [c for c in header if c not in CSV_COLUMNS + CSV_OPTIONAL]
    if unknown:
        raise CLIError(f"{table}: unexpected column(s) {', '.join(unknown)}; the header must name {expected}")
    if len(set(header)) != len(header):
        raise CLIError(f"{table}: a column is named twice; the header must name {expected}")


def _check_row(table: Path, lineno: int, row: dict[str | None, Any]) -> dict[str, str]:
    if None in row or None in row.values():
        raise CLIError(f"{table}:{lineno}: expected {len(row) - (None in row)} fields, one per column of the header")
    for column in ("file", "subject_id", "label", "split"):
        if not row[column]:
            raise CLIError(f"{table}:{lineno}: {column} is empty")
    if not CLASS_INDEX.fullmatch(row["label"]):
        raise CLIError(f"{table}:{lineno}: label {row['label']!r} is not a class index (0, 1, 2, ...)")
    if row["split"] not in SPLITS:
        raise CLIError(f"{table}:{lineno}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
    return row  # type: ignore[return-value]


def _image_header(folder: Path, table: Path, lineno: int, file: str) -> tuple[tuple[int, int], str]:
    from PIL import Image, UnidentifiedImageError

    path = folder / file
    if not path.is_file():
        raise CLIError(f"{table}:{lineno}: {file}: no such image in {folder}")
    try:
        with Image.open(path) as image:  # reads the header only
            size, mode = image.size, image.mode
    except (UnidentifiedImageError, OSError) as exc:
        raise CLIError(f"{table}:{lineno}: {file}: not an image Pillow can read ({exc})") from None
    if mode not in EIGHT_BIT_MODES:
        raise CLIError(f"{table}:{lineno}: {file}: mode {mode} is not 8 bits per channel; convert it first")
    return size, mode


def _decode(path: Path, grayscale: bool):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L" if grayscale else "RGB"), dtype=np.uint8)
    return pixels[None] if grayscale else pixels.transpose(2, 0, 1)


def read_npz(path: Path, name: str) -> Columns:
    """The arrays of an .npz, each checked for name, shape and dtype; never unpickled."""
    import zipfile

    import numpy as np

    if not path.is_file():
        raise CLIError(f"--npz {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            _check_array_names(path, set(npz.files))
            arrays = {a: _array(npz, path, a) for a in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CLIError(f"{path}: not a numpy .npz file ({exc})") from None
    images = arrays["x"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise CLIError(
            f"{path}: x must be uint8 of shape [N, C, H, W] or [N, H, W], got {images.dtype} {list(images.shape)}"
            " (scale to 0-255 and cast; move a channels-last axis with x.transpose(0, 3, 1, 2))"
        )
    n = len(images)
    for array in ("y", "subject_ids", "splits", "sample_ids"):
        if array in arrays and arrays[array].shape != (n,):
            raise CLIError(
                f"{path}: {array} must have shape [{n}] (one per image of x), got {list(arrays[array].shape)}"
            )
    labels = arrays["y"]
    if labels.dtype.kind not in "iu":
        raise CLIError(f"{path}: y must hold integer class indices, got {labels.dtype}")
    if labels.min() < 0:
        raise CLIError(f"{path}: y[{int(np.argmin(labels))}] is {labels.min()}; class indices start at 0")
    for array, kinds in (("subject_ids", "Uiu"), ("sample_ids", "Uiu"), ("splits", "U")):
        if array in arrays and arrays[array].dtype.kind not in kinds:
            raise CLIError(f"{path}: {array} must be strings (numpy dtype str), got {arrays[array].dtype}")
    splits = arrays["splits"]
    unknown_splits = ~np.isin(splits, SPLITS)
    if unknown_splits.any():
        row = int(np.argmax(unknown_splits))
        raise CLIError(f"{path}: splits[{row}] is {str(splits[row])!r}, not one of {', '.join(SPLITS)}")
    sample_ids = arrays["sample_ids"] if "sample_ids" in arrays else np.asarray([f"{name}-{i}" for i in range(n)])
    return Columns(
        images=images if images.ndim == 4 else images[:, None],
        labels=labels.astype(np.int64),
        sample_ids=sample_ids.astype(str),
        subject_ids=arrays["subject_ids"].astype(str),
        splits=splits.astype(str),
    )


def _check_array_names(path: Path, names: set[str]) -> None:
    problems = []
    if missing := [a for a in NPZ_ARRAYS if a not in names]:
        problems.append("missing array(s) " + ", ".join(missing))
    if unknown := sorted(names - set(NPZ_ARRAYS + NPZ_OPTIONAL)):
        problems.append("unexpected array(s) " + ", ".join(unknown))
    if problems:
        expected = f"{', '.join(NPZ_ARRAYS)} (and optionally {', '.join(NPZ_OPTIONAL)})"
        raise CLIError(f"{path}: {'; '.join(problems)}; an .npz for ltu holds {expected}")


def _array(npz, path: Path, name: str):
    try:
        return npz[name]
    except ValueError:  # an object array, which only unpickling could read
        raise CLIError(
            f"{path}: {name} is an object array; save ids as strings (np.asarray(ids, dtype=str)), never pickled"
        ) from None


# --- what the service adds, and the summary --------------------------------------------------------


def check_service_bounds(dataset, folder: Path) -> None:
    """What the service refuses beyond the format: long ids or names, too many classes, NUL characters."""
    import numpy as np

    if len(dataset.name) > MAX_NAME_LENGTH or "\0" in dataset.name:
        raise CLIError(f"the name {dataset.name[:40]!r} must be at most {MAX_NAME_LENGTH} characters, without NUL")
    if dataset.num_classes > MAX_CLASSES:
        raise CLIError(f"{dataset.num_classes} classes; the service takes at most {MAX_CLASSES}")
    if "\0" in (folder / "samples.csv").read_text(encoding="utf-8"):
        raise CLIError("samples.csv holds a NUL character (U+0000), which the service refuses in any field")
    for column in ("sample_ids", "subject_ids"):
        lengths = np.char.str_len(getattr(dataset, column))
        if lengths.max() > MAX_ID_LENGTH:
            row = int(np.argmax(lengths))
            raise CLIError(
                f"{column}[{row}] has {int(lengths[row])} characters; the service takes ids of at most {MAX_ID_LENGTH}"
            )


def summary(dataset) -> str:
    """One line: what the service will see."""
    import numpy as np

    c, h, w = dataset.image_shape
    counts = ", ".join(f"{split} {int(np.sum(dataset.splits == split))}" for split in ("train", "test", "holdout"))
    note = "" if np.any(dataset.splits == "holdout") else " (no holdout: the test split is halved for the audit)"
    return (
        f"{dataset.name!r}, {len(dataset)} images of {c}×{h}×{w}, {dataset.num_classes} classes, "
        f"{len(np.unique(dataset.subject_ids))} subjects; {counts}{note}"
    )

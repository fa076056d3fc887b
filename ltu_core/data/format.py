"""The on-disk dataset format users bring their own data in ("ltu-dataset", versions 1 and 2).

A dataset is a folder of three files, or the same three files in one uncompressed tar archive
(the form the service accepts as an upload):

    manifest.json   {"format": "ltu-dataset", "version": 1, "name": "...", "num_classes": 10,
                     "image_shape": [C, H, W], "num_samples": N}
    samples.csv     header `sample_id,subject_id,label,split`, then one row per sample;
                    row i describes image i. split is train, test or holdout.
    images.u8       N*C*H*W raw uint8 pixel values, C-order, no header.

Version 2 is version 1 with tombstones: the service rewrites a stored dataset to it when it purges
erased subjects' pixels (`tombstone_rows`). Its manifest adds `"purged_rows": [row, ...]`; those
rows keep their place (every row index stays valid) and their samples.csv line, but their pixels
are zeros, and reading them through any sample set raises (`SampleSet.tensors`). A dataset with
no tombstones is written as version 1, the only version uploads take.

`images.u8` is opened as a read-only memmap, so a dataset larger than memory streams: only the
rows a batch needs are read. The CSV (ids, labels, splits) is read whole; it is small next to
the pixels. Files are validated on open; every mismatch is a `DatasetFormatError` naming the
file and what is wrong.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np

from ltu_core.data.dataset import SPLITS, UnlearningDataset
from ltu_core.errors import DatasetFormatError

FORMAT_NAME = "ltu-dataset"
FORMAT_VERSION = 1  # what a dataset without tombstones is written as
TOMBSTONED_VERSION = 2  # adds the manifest's purged_rows
MANIFEST, INDEX, IMAGES = "manifest.json", "samples.csv", "images.u8"
INDEX_HEADER = ["sample_id", "subject_id", "label", "split"]


def write_dataset(dataset: UnlearningDataset, folder: str | os.PathLike) -> Path:
    """Write `dataset` as an ltu-dataset folder; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": dataset.name,
        "num_classes": int(dataset.num_classes),
        "image_shape": list(dataset.image_shape),
        "num_samples": len(dataset),
    }
    if len(dataset.purged_rows):
        manifest.update(version=TOMBSTONED_VERSION, purged_rows=sorted(int(r) for r in dataset.purged_rows))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    with open(folder / INDEX, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_HEADER)
        for row in zip(dataset.sample_ids, dataset.subject_ids, dataset.labels, dataset.splits):
            writer.writerow([row[0], row[1], int(row[2]), row[3]])
    with open(folder / IMAGES, "wb") as f:
        chunk = 4096
        for start in range(0, len(dataset), chunk):
            f.write(np.ascontiguousarray(dataset.images[start : start + chunk]).tobytes())
    return folder


def read_manifest(folder: Path) -> dict:
    """Read and check manifest.json."""
    path = folder / MANIFEST
    if not path.is_file():
        raise DatasetFormatError(f"{folder}: missing {MANIFEST} (is this an ltu-dataset folder?)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError, huge ints
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise DatasetFormatError(f"{path}: 'format' must be {FORMAT_NAME!r}")
    if manifest.get("version") not in (FORMAT_VERSION, TOMBSTONED_VERSION):
        raise DatasetFormatError(
            f"{path}: unsupported version {manifest.get('version')!r}; this reader knows versions "
            f"{FORMAT_VERSION} and {TOMBSTONED_VERSION}"
        )
    shape = manifest.get("image_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise DatasetFormatError(f"{path}: 'image_shape' must be three positive integers [C, H, W]")
    for key in ("num_classes", "num_samples"):
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DatasetFormatError(f"{path}: {key!r} must be a positive integer")
    if not isinstance(manifest.get("name", ""), str):
        raise DatasetFormatError(f"{path}: 'name' must be a string")
    _check_purged_rows(path, manifest)
    return manifest


def _check_purged_rows(path: Path, manifest: dict) -> None:
    if manifest["version"] == FORMAT_VERSION:
        if "purged_rows" in manifest:  # a reader of version 1 would read the tombstones as images
            raise DatasetFormatError(f"{path}: 'purged_rows' needs version {TOMBSTONED_VERSION}")
        return
    rows = manifest.get("purged_rows")
    if (
        not isinstance(rows, list)
        or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < manifest["num_samples"] for r in rows)
        or len(set(rows)) != len(rows)
    ):
        raise DatasetFormatError(f"{path}: 'purged_rows' must list distinct row indices below num_samples")


def _read_index(path: Path, num_samples: int) -> tuple[np.ndarray, ...]:
    if not path.is_file():
        raise DatasetFormatError(f"missing {path.name} beside {MANIFEST}")
    sample_ids, subject_ids, labels, splits = [], [], [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != INDEX_HEADER:
                raise DatasetFormatError(f"{path}: header must be {','.join(INDEX_HEADER)}, got {header}")
            for lineno, row in enumerate(reader, start=2):
                if len(row) != 4:
                    raise DatasetFormatError(f"{path}:{lineno}: expected 4 fields, got {len(row)}")
                if row[3] not in SPLITS:
                    raise DatasetFormatError(f"{path}:{lineno}: split {row[3]!r} is not one of {', '.join(SPLITS)}")
                try:
                    labels.append(int(row[2]))
                except ValueError as exc:
                    raise DatasetFormatError(f"{path}:{lineno}: label {row[2]!r} is not an integer") from exc
                sample_ids.append(row[0])
                subject_ids.append(row[1])
                splits.append(row[3])
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not UTF-8 text") from exc
    except csv.Error as exc:
        raise DatasetFormatError(f"{path}: malformed CSV ({exc})") from exc
    if len(labels) != num_samples:
        raise DatasetFormatError(f"{path}: {len(labels)} rows but the manifest says num_samples={num_samples}")
    return (
        np.asarray(sample_ids, dtype=str),
        np.asarray(subject_ids, dtype=str),
        np.asarray(labels, dtype=np.int64),
        np.asarray(splits, dtype=str),
    )


def read_dataset(path: str | os.PathLike) -> UnlearningDataset:
    """Open an ltu-dataset folder; images stay on disk as a read-only memmap."""
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetFormatError(
            f"{folder}: not an ltu-dataset folder (unpack a .tar upload with unpack_dataset first)"
        )
    manifest = read_manifest(folder)
    n, shape = manifest["num_samples"], tuple(manifest["image_shape"])
    sample_ids, subject_ids, labels, splits = _read_index(folder / INDEX, n)
    images_path = folder / IMAGES
    if not images_path.is_file():
        raise DatasetFormatError(f"missing {IMAGES} beside {MANIFEST}")
    expected = n * int(np.prod(shape))
    actual = images_path.stat().st_size
    if actual != expected:
        raise DatasetFormatError(
            f"{images_path}: {actual} bytes, but {n} images of shape {list(shape)} need {expected}"
        )
    images = np.memmap(images_path, dtype=np.uint8, mode="r", shape=(n, *shape))
    return UnlearningDataset(
        name=manifest.get("name") or folder.name,
        images=images,
        labels=labels,
        sample_ids=sample_ids,
        subject_ids=subject_ids,
        splits=splits,
        num_classes=manifest["num_classes"],
        purged_rows=np.asarray(sorted(manifest.get("purged_rows", [])), dtype=np.int64),
    )


def tombstone_rows(folder: str | os.PathLike, rows: list[int], out: str | os.PathLike) -> Path:
    """Write into `out` the images.u8 and manifest.json (version 2) of `folder` with `rows` tombstoned.

    The rows' pixels become zeros and the manifest lists them beside those tombstoned already; every
    other row is copied unchanged and keeps its index. samples.csv is not rewritten (it is unchanged),
    so `out` holds just the two files that replace `folder`'s: images.u8 first, then the manifest.
    """
    folder, out = Path(folder), Path(out)
    dataset = read_dataset(folder)
    purged = sorted(set(dataset.purged_rows.tolist()) | {int(r) for r in rows})
    shutil.copyfile(folder / IMAGES, out / IMAGES)
    images = np.memmap(out / IMAGES, dtype=np.uint8, mode="r+", shape=dataset.images.shape)
    images[purged] = 0
    images.flush()
    del images
    with open(out / IMAGES, "rb+") as f:
        os.fsync(f.fileno())
    manifest = read_manifest(folder)
    manifest.update(version=TOMBSTONED_VERSION, purged_rows=purged)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def check_tombstones(dataset: UnlearningDataset, rows: list[int]) -> None:
    """DatasetFormatError unless each of `rows` is tombstoned in `dataset`: listed as purged, its pixels zeros."""
    missing = sorted(set(rows) - set(dataset.purged_rows.tolist()))
    if missing:
        raise DatasetFormatError(
            f"{dataset.name}: rows {missing[:5]} were purged but the stored files do not list them"
        )
    if rows and np.any(dataset.images[np.asarray(sorted(rows))]):
        raise DatasetFormatError(f"{dataset.name}: purged rows still hold pixels")


def pack_dataset(folder: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Bundle an ltu-dataset folder into one uncompressed tar (the upload form)."""
    folder, archive = Path(folder), Path(archive)
    with tarfile.open(archive, "w") as tar:
        for name in (MANIFEST, INDEX, IMAGES):
            tar.add(folder / name, arcname=name)
    return archive


def unpack_dataset(archive: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Safely extract an uploaded tar into `folder`, then validate it; returns the folder.

    Only the three format files are accepted, as regular files at the archive's top level and not
    sparse, so a crafted archive cannot write outside `folder`, smuggle links or unfold a few stored
    bytes into a file of gigabytes.
    """
    folder = Path(folder)
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 - the `with tar:` below closes it
    except (tarfile.TarError, OSError) as exc:
        raise DatasetFormatError(f"{archive}: not an uncompressed tar archive ({exc})") from exc
    with tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.name not in (".", "./")}
        unexpected = sorted(set(members) - {MANIFEST, INDEX, IMAGES})
        if unexpected:
            raise DatasetFormatError(
                f"{archive}: unexpected entries {unexpected[:5]}; the archive must hold exactly "
                f"{MANIFEST}, {INDEX} and {IMAGES} at its top level"
            )
        for name in (MANIFEST, INDEX, IMAGES):
            member = members.get(name)
            if member is None:
                raise DatasetFormatError(f"{archive}: missing {name}")
            if not member.isfile() or member.issparse():
                raise DatasetFormatError(f"{archive}: {name} must be a regular file (not sparse)")
        folder.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, INDEX, IMAGES):
            src = tar.extractfile(members[name])
            assert src is not None  # regular file, checked above
            with src, open(folder / name, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    read_dataset(folder)
    return folder

"""Checking uploads without torch: the ltu-dataset archive and safetensors weights.

The API must stay light (no torch, no numpy), so it cannot call `ltu_core.data.unpack_dataset` or
`ltu_core.models.read_checkpoint`, whose packages import torch. This module checks the same
documented formats with the standard library — the archive layout, manifest, samples.csv and
images.u8 size of an "ltu-dataset" (version 1, see ltu_core/data/format.py), and the structure and
architecture header of a safetensors checkpoint — and nothing is ever unpickled. The worker later
opens the stored files with ltu_core itself. A test keeps the constants here equal to ltu_core's.
"""

from __future__ import annotations

import csv
import json
import math
import os
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ledger.datasets import SampleRow

FORMAT_NAME = "ltu-dataset"
FORMAT_VERSION = 1
MANIFEST, INDEX, IMAGES = "manifest.json", "samples.csv", "images.u8"
INDEX_HEADER = ["sample_id", "subject_id", "label", "split"]
SPLITS = ("train", "test", "holdout")
CHECKPOINT_FORMAT = "ltu-model/1"
ARCH_FIELDS = {"name", "num_classes", "in_chans", "img_size", "width", "small_stem", "kwargs"}

MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
MAX_ID_LENGTH = 255
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class UploadError(ValueError):
    """An upload is not in the documented format; `status` is 415 (wrong kind of file) or 422."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class TooLarge(ValueError):
    """An upload exceeds its size limit (413)."""


def save_stream(source: BinaryIO, target: Path, *, limit: int) -> int:
    """Copy an uploaded file to `target`; TooLarge as soon as it passes `limit` bytes."""
    written = 0
    with open(target, "wb") as out:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise TooLarge(f"the upload exceeds the limit of {limit} bytes")
            out.write(chunk)
    return written


# --- safetensors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointHeader:
    """What the API learns from a checkpoint without loading it."""

    architecture: dict[str, Any]
    num_tensors: int
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: Path) -> CheckpointHeader:
    """Check a safetensors file's structure and its ltu architecture header.

    UploadError(415) when it is not safetensors at all; UploadError(422) when it is safetensors
    without this library's header.
    """
    size = path.stat().st_size

    def not_safetensors(why: str) -> UploadError:
        return UploadError(
            f"the weights file is not a safetensors file ({why}); pickled checkpoints are never accepted", 415
        )

    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise not_safetensors("too short")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise not_safetensors("bad header length")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise not_safetensors("header is not JSON") from None
    if not isinstance(header, dict):
        raise not_safetensors("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise not_safetensors("__metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise not_safetensors(f"tensor {name!r} has a malformed entry")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise not_safetensors(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise not_safetensors(f"tensor {name!r} has a malformed shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise not_safetensors(f"tensor {name!r} has malformed data offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise not_safetensors(f"tensor {name!r}: offsets do not match its shape and dtype")
        spans.append(tuple(offsets))
    spans.sort()
    cursor = 0
    for start, end in spans:  # the data section must be covered exactly, without overlaps
        if start != cursor:
            raise not_safetensors("tensor data overlaps or leaves gaps")
        cursor = end
    if 8 + header_len + cursor != size:
        raise not_safetensors("file size does not match the header")
    if metadata.get("format") != CHECKPOINT_FORMAT or "arch" not in metadata:
        raise UploadError(
            "the safetensors file has no ltu architecture header; save it with ltu_core.models.save_model"
        )
    try:
        arch = json.loads(metadata["arch"])
    except json.JSONDecodeError:
        raise UploadError("the checkpoint's architecture header is not JSON") from None
    if not isinstance(arch, dict) or not {"name", "num_classes"} <= set(arch) or set(arch) - ARCH_FIELDS:
        raise UploadError(f"the checkpoint's architecture header must have the fields {sorted(ARCH_FIELDS)}")
    return CheckpointHeader(architecture=arch, num_tensors=len(spans), metadata=metadata)


# --- ltu-dataset archives ------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetUpload:
    """A checked, unpacked dataset: its manifest and its sample rows (subject ids already hashed)."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    samples: list[SampleRow]


def unpack_dataset_archive(archive: Path, folder: Path, *, hash_subject: Callable[[str], str]) -> DatasetUpload:
    """Extract the three format files of an uncompressed tar into `folder` and check them.

    Only regular files named manifest.json, samples.csv and images.u8 at the top level are
    accepted, so a crafted archive can neither write outside `folder` nor smuggle links.
    """
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 - the `with tar:` below closes it
    except (tarfile.TarError, OSError):
        raise UploadError(
            "the dataset upload is not an uncompressed tar archive of manifest.json, samples.csv and images.u8", 415
        ) from None
    with tar:
        try:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.name not in (".", "./")}
        except tarfile.TarError as exc:
            raise UploadError(f"the dataset archive is corrupt ({exc})", 415) from None
        unexpected = sorted(set(members) - {MANIFEST, INDEX, IMAGES})
        if unexpected:
            raise UploadError(
                f"unexpected entries {unexpected[:5]} in the archive; it must hold exactly {MANIFEST}, {INDEX} and "
                f"{IMAGES} at its top level"
            )
        for name in (MANIFEST, INDEX, IMAGES):
            member = members.get(name)
            if member is None:
                raise UploadError(f"the archive has no {name}")
            if not member.isfile():
                raise UploadError(f"{name} in the archive must be a regular file")
        folder.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, INDEX, IMAGES):
            src = tar.extractfile(members[name])
            assert src is not None  # a regular file, checked above
            with src, open(folder / name, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    return check_dataset_folder(folder, hash_subject=hash_subject)


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UploadError(f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UploadError(f"{MANIFEST} must be a JSON object")
    if manifest.get("format") != FORMAT_NAME:
        raise UploadError(f"{MANIFEST}: 'format' must be {FORMAT_NAME!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise UploadError(
            f"{MANIFEST}: unsupported version {manifest.get('version')!r}; the service reads version {FORMAT_VERSION}"
        )
    shape = manifest.get("image_shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise UploadError(f"{MANIFEST}: 'image_shape' must be three positive integers [C, H, W]")
    for key in ("num_classes", "num_samples"):
        value = manifest.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UploadError(f"{MANIFEST}: {key!r} must be a positive integer")
    if manifest["num_classes"] < 2:
        raise UploadError(f"{MANIFEST}: 'num_classes' must be at least 2")
    if not isinstance(manifest.get("name", ""), str):
        raise UploadError(f"{MANIFEST}: 'name' must be a string")
    return manifest


def check_dataset_folder(folder: Path, *, hash_subject: Callable[[str], str]) -> DatasetUpload:
    """Check an ltu-dataset folder and read its rows; samples.csv is rewritten with hashed subject ids."""
    manifest = _manifest(folder)
    n, num_classes, shape = manifest["num_samples"], manifest["num_classes"], tuple(manifest["image_shape"])
    expected = n * math.prod(shape)
    actual = os.path.getsize(folder / IMAGES)
    if actual != expected:
        raise UploadError(f"{IMAGES}: {actual} bytes, but {n} images of shape {list(shape)} need {expected}")
    rows: list[SampleRow] = []
    seen: set[str] = set()
    try:
        with open(folder / INDEX, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != INDEX_HEADER:
                raise UploadError(f"{INDEX}: the header must be {','.join(INDEX_HEADER)}")
            for lineno, record in enumerate(reader, start=2):
                if len(record) != 4:
                    raise UploadError(f"{INDEX}:{lineno}: expected 4 fields, got {len(record)}")
                sample_id, subject_id, label_text, split = record
                if not sample_id or not subject_id:
                    raise UploadError(f"{INDEX}:{lineno}: sample_id and subject_id must not be empty")
                if len(sample_id) > MAX_ID_LENGTH or len(subject_id) > MAX_ID_LENGTH:
                    raise UploadError(f"{INDEX}:{lineno}: ids are limited to {MAX_ID_LENGTH} characters")
                if split not in SPLITS:
                    raise UploadError(f"{INDEX}:{lineno}: split {split!r} is not one of {', '.join(SPLITS)}")
                try:
                    label = int(label_text)
                except ValueError:
                    raise UploadError(f"{INDEX}:{lineno}: label {label_text!r} is not an integer") from None
                if not 0 <= label < num_classes:
                    raise UploadError(f"{INDEX}:{lineno}: label {label} is outside [0, {num_classes - 1}]")
                if sample_id in seen:
                    raise UploadError(f"{INDEX}:{lineno}: sample_id values must be unique")
                seen.add(sample_id)
                rows.append(SampleRow(len(rows), sample_id, hash_subject(subject_id), label, split))
    except UnicodeDecodeError:
        raise UploadError(f"{INDEX} is not UTF-8 text") from None
    except csv.Error as exc:
        raise UploadError(f"{INDEX}: malformed CSV ({exc})") from None
    if len(rows) != n:
        raise UploadError(f"{INDEX}: {len(rows)} rows but the manifest says num_samples={n}")
    if not any(r.split == "train" for r in rows):
        raise UploadError(f"{INDEX}: the dataset has no 'train' samples")
    _rewrite_index(folder / INDEX, rows)
    return DatasetUpload(name=str(manifest.get("name") or ""), num_classes=num_classes, image_shape=shape, samples=rows)  # type: ignore[arg-type]


def _rewrite_index(path: Path, rows: list[SampleRow]) -> None:
    # The stored copy keeps only keyed hashes in the subject column: the raw ids are not kept.
    staged = path.with_suffix(".tmp")
    with open(staged, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_HEADER)
        writer.writerows((r.sample_id, r.subject_hash, r.label, r.split) for r in rows)
    os.replace(staged, path)

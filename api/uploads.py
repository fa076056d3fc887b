"""Checking uploads without torch: the ltu-dataset archive and safetensors weights.

The API must stay light (no torch, no numpy), so it cannot call `ltu_core.data.unpack_dataset` or
`ltu_core.models.read_checkpoint`, whose packages import torch. This module checks the same
documented formats with the standard library — the archive layout, manifest, samples.csv and
images.u8 size of an "ltu-dataset" (version 1, see ltu_core/data/format.py), and the structure and
architecture header of a safetensors checkpoint — and nothing is ever unpickled. The worker later
opens the stored files with ltu_core itself. A test keeps the constants here equal to ltu_core's.

Everything a client sends is bounded before it costs anything: an archive's members are judged
from their headers before a byte is extracted. JSON (the manifest, the safetensors header) and the
samples.csv fields are held to the edge's rules (api.edge): the same 422 codes as any request body.
"""

from __future__ import annotations

import csv
import io
import math
import re
import struct
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from api.edge import check_text, load_json
from ledger.datasets import SampleRow

FORMAT_NAME = "ltu-dataset"
FORMAT_VERSION = 1
MANIFEST, INDEX, IMAGES = "manifest.json", "samples.csv", "images.u8"
INDEX_HEADER = ["sample_id", "subject_id", "label", "split"]
SPLITS = ("train", "test", "holdout")
CHECKPOINT_FORMAT = "ltu-model/1"
ARCH_FIELDS = {"name", "num_classes", "in_chans", "img_size", "width", "small_stem", "kwargs"}
# What an architecture header may say (ltu_core.models.factory keeps the same lists; a test compares
# them): a plain timm name (no pretrained tag, no hf-hub: or local-dir: source) and bounded numbers.
# Nothing names a file (checkpoint_path, pretrained_cfg) or asks for a download (pretrained).
ARCH_NAME_PATTERN = r"[a-z][a-z0-9_]{0,63}"
ARCH_BOUNDS = {"num_classes": (2, 100_000), "in_chans": (1, 16), "img_size": (1, 1024), "width": (1 / 64, 4.0)}
ARCH_KWARGS = {  # vit_micro's geometry and dropout rates; an int bound admits integers only
    "patch_size": (1, 64),
    "embed_dim": (8, 1024),
    "depth": (1, 48),
    "num_heads": (1, 16),
    "mlp_ratio": (0.25, 8.0),
    "drop_rate": (0.0, 0.9),
    "drop_path_rate": (0.0, 0.9),
}

MAX_HEADER_BYTES = 16 << 20  # a timm model's header is well under 1 MiB (safetensors itself allows 100 MiB)
MAX_MANIFEST_BYTES = 64 << 10
MAX_ID_LENGTH = 255
MAX_NAME_LENGTH = 200  # the ledger's dataset name column
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
    """An upload is not in the documented format; `status` is 415 (wrong kind of file) or 422.

    `code` names the problem where a client may act on it specifically; None leaves the route's own.
    """

    def __init__(self, message: str, status: int = 422, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


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


def _not_safetensors(why: str) -> UploadError:
    return UploadError(
        f"the weights file is not a safetensors file ({why}); pickled checkpoints are never accepted", 415
    )


def read_safetensors_header(path: Path) -> CheckpointHeader:
    """Check a safetensors file's structure and its ltu architecture header.

    UploadError(415) when it is not safetensors at all; UploadError(422) when it is safetensors
    without this library's header, or with an architecture outside the allow-list; the edge's
    ProblemError (422) when its JSON breaks the edge's rules (nested too deep, NUL, ...).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _not_safetensors("too short")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or 8 + header_len > size:
            raise _not_safetensors("bad header length")
        if header_len > MAX_HEADER_BYTES:
            raise UploadError(
                f"the safetensors header is {header_len} bytes; the service reads up to {MAX_HEADER_BYTES}"
            )
        raw = f.read(header_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_safetensors("header is not UTF-8") from None
    try:
        header = load_json(text, ("body", "weights", "header"))
    except ValueError:
        raise _not_safetensors("header is not JSON") from None
    if not isinstance(header, dict):
        raise _not_safetensors("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _not_safetensors("__metadata__ must map strings to strings")
    num_tensors = _check_tensors(header, size - 8 - header_len)
    if metadata.get("format") != CHECKPOINT_FORMAT or "arch" not in metadata:
        raise UploadError(
            "the safetensors file has no ltu architecture header; save it with ltu_core.models.save_model"
        )
    if "extra" in metadata:  # the worker parses it too (ltu_core.models.read_checkpoint)
        _metadata_json(metadata, "extra")
    arch = _metadata_json(metadata, "arch")
    check_architecture(arch)
    return CheckpointHeader(architecture=arch, num_tensors=num_tensors, metadata=metadata)


def _check_tensors(header: dict[str, Any], data_size: int) -> int:
    """The number of tensors, once each entry is well-formed and they cover the data section exactly."""
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _not_safetensors(f"tensor {name!r} has a malformed entry")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise _not_safetensors(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _not_safetensors(f"tensor {name!r} has a malformed shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _not_safetensors(f"tensor {name!r} has malformed data offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _not_safetensors(f"tensor {name!r}: offsets do not match its shape and dtype")
        spans.append(tuple(offsets))
    spans.sort()
    cursor = 0
    for start, end in spans:  # the data section must be covered exactly, without overlaps
        if start != cursor:
            raise _not_safetensors("tensor data overlaps or leaves gaps")
        cursor = end
    if cursor != data_size:
        raise _not_safetensors("file size does not match the header")
    return len(spans)


def _metadata_json(metadata: dict[str, str], key: str) -> Any:
    try:
        return load_json(metadata[key], ("body", "weights", "__metadata__", key))
    except ValueError:
        raise UploadError(f"the checkpoint's {key!r} header is not JSON") from None


def check_architecture(arch: Any) -> None:
    """UploadError (invalid_architecture) naming the first field or keyword argument outside the allow-list."""

    def refuse(why: str) -> UploadError:
        return UploadError(f"the checkpoint's architecture header: {why}", code="invalid_architecture")

    if not isinstance(arch, dict) or not {"name", "num_classes"} <= set(arch) or set(arch) - ARCH_FIELDS:
        raise refuse(f"it must be an object with 'name', 'num_classes' and at most the fields {sorted(ARCH_FIELDS)}")
    name = arch["name"]
    if not isinstance(name, str) or not re.fullmatch(ARCH_NAME_PATTERN, name):
        raise refuse(f"'name' must be a timm model name matching {ARCH_NAME_PATTERN}")
    if not isinstance(arch.get("small_stem", True), bool):
        raise refuse("'small_stem' must be true or false")
    for key, bounds in ARCH_BOUNDS.items():
        if key in arch and not _within(arch[key], bounds):
            raise refuse(f"{key!r} must be a number in [{bounds[0]}, {bounds[1]}]")
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise refuse("'kwargs' must be an object")
    for key, value in kwargs.items():
        if key not in ARCH_KWARGS:
            raise refuse(f"keyword argument {key!r} is not allowed (allowed: {', '.join(sorted(ARCH_KWARGS))})")
        if not _within(value, ARCH_KWARGS[key]):
            raise refuse(f"keyword argument {key!r} must be a number in [{ARCH_KWARGS[key][0]}, {ARCH_KWARGS[key][1]}]")


def _within(value: Any, bounds: tuple[float, float]) -> bool:
    low, high = bounds
    kinds = (int, float) if isinstance(low, float) else (int,)
    # NaN compares false and the infinities fall outside: no separate finiteness check.
    return isinstance(value, kinds) and not isinstance(value, bool) and low <= value <= high


# --- ltu-dataset archives ------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetUpload:
    """A checked, unpacked dataset: its manifest and its sample rows (subject ids already hashed)."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    samples: list[SampleRow]


def unpack_dataset_archive(
    archive: Path, folder: Path, *, hash_subject: Callable[[str], str], max_bytes: int
) -> DatasetUpload:
    """Check an uncompressed tar of the three format files and unpack it into `folder`.

    Every member is judged from its header before any byte is written: only regular files named
    manifest.json, samples.csv and images.u8 at the top level, once each, whose declared sizes fit
    the archive and `max_bytes`. The manifest is checked next, and images.u8's size against it; then
    images.u8 is copied and samples.csv is read from the archive and stored with hashed subject ids
    (the raw ids are never written).
    """
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 - the `with tar:` below closes it
    except (tarfile.TarError, OSError):
        raise UploadError(
            "the dataset upload is not an uncompressed tar archive of manifest.json, samples.csv and images.u8", 415
        ) from None
    with tar:
        try:
            members = _archive_members(tar, archive.stat().st_size, max_bytes)
        except tarfile.TarError as exc:
            raise UploadError(f"the dataset archive is corrupt ({exc})", 415) from None
        raw_manifest = _read_small(tar, members[MANIFEST])
        manifest = _manifest(raw_manifest)
        shape = tuple(manifest["image_shape"])
        expected = manifest["num_samples"] * math.prod(shape)
        if members[IMAGES].size != expected:
            raise UploadError(
                f"{IMAGES}: {members[IMAGES].size} bytes, but {manifest['num_samples']} images of shape "
                f"{list(shape)} need {expected}"
            )
        index = tar.extractfile(members[INDEX])
        assert index is not None  # a regular file, checked above
        with io.TextIOWrapper(index, encoding="utf-8", newline="") as text:
            rows = _read_index(text, manifest, hash_subject)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).write_bytes(raw_manifest)
        _write_index(folder / INDEX, rows)
        _copy_member(tar, members[IMAGES], folder / IMAGES)
    return DatasetUpload(
        name=manifest.get("name") or "",
        num_classes=manifest["num_classes"],
        image_shape=shape,  # type: ignore[arg-type]
        samples=rows,
    )


def _archive_members(tar: tarfile.TarFile, archive_size: int, max_bytes: int) -> dict[str, tarfile.TarInfo]:
    """The three format members, read lazily so that the first refused header ends the walk."""
    limits = {MANIFEST: MAX_MANIFEST_BYTES, INDEX: max_bytes, IMAGES: max_bytes}
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    for member in tar:
        name = member.name.removeprefix("./") or "."
        _check_member_is_safe(member, name, archive_size)
        if name in members:
            raise _unsafe(member, "appears twice in the archive")
        members[name] = member
        if name == ".":  # the top folder itself, as `tar -C folder .` writes it
            continue
        if name not in limits:
            raise UploadError(
                f"unexpected archive member {member.name!r}; the archive must hold exactly {MANIFEST}, {INDEX} and "
                f"{IMAGES} at its top level",
                code="unexpected_archive_member",
            )
        total += member.size
        if member.size > limits[name] or total > max_bytes:
            raise UploadError(
                f"archive member {member.name!r} declares {member.size} bytes; {name} may hold {limits[name]} and "
                f"the archive {max_bytes} in all",
                code="archive_member_too_large",
            )
    for name in (MANIFEST, INDEX, IMAGES):
        if name not in members:
            raise UploadError(f"the archive has no {name}")
    return members


def _check_member_is_safe(member: tarfile.TarInfo, name: str, archive_size: int) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise _unsafe(member, "has a path outside the archive's folder")
    if (
        member.issparse()
        or member.type == tarfile.GNUTYPE_SPARSE
        or any(key.startswith("GNU.sparse.") for key in member.pax_headers)
    ):
        # A sparse member's few stored bytes stand for a declared size of holes, written out in full.
        raise _unsafe(member, "is a sparse file")
    if member.issym() or member.islnk():
        raise _unsafe(member, "is a link")
    if member.isdev():
        raise _unsafe(member, "is a device or FIFO")
    if name == ".":
        if not member.isdir():
            raise _unsafe(member, "is not a folder")
        return
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise _unsafe(member, "is not a regular file")
    if member.offset_data + member.size > archive_size:
        raise _unsafe(member, f"declares {member.size} bytes, more than the archive holds")


def _unsafe(member: tarfile.TarInfo, why: str) -> UploadError:
    return UploadError(f"archive member {member.name!r} {why}", code="unsafe_archive_member")


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    source = tar.extractfile(member)
    assert source is not None  # a regular file no larger than its limit, checked above
    with source:
        return source.read()


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular file, checked above
    with source, open(target, "wb") as out:
        while chunk := source.read(1 << 20):
            out.write(chunk)


def _manifest(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UploadError(f"{MANIFEST} is not UTF-8 text") from None
    try:
        manifest = load_json(text, ("body", "archive", MANIFEST))
    except ValueError as exc:
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
    low, high = ARCH_BOUNDS["num_classes"]
    if not low <= manifest["num_classes"] <= high:
        raise UploadError(f"{MANIFEST}: 'num_classes' must be in [{low}, {high}]")
    name = manifest.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        raise UploadError(f"{MANIFEST}: 'name' must be a string of at most {MAX_NAME_LENGTH} characters")
    return manifest


def _read_index(text: io.TextIOBase, manifest: dict[str, Any], hash_subject: Callable[[str], str]) -> list[SampleRow]:
    n, num_classes = manifest["num_samples"], manifest["num_classes"]
    rows: list[SampleRow] = []
    seen: set[str] = set()
    try:
        reader = csv.reader(text)
        if next(reader, None) != INDEX_HEADER:
            raise UploadError(f"{INDEX}: the header must be {','.join(INDEX_HEADER)}")
        for lineno, record in enumerate(reader, start=2):
            if len(rows) == n:
                raise UploadError(f"{INDEX}: more rows than the manifest's num_samples={n}")
            rows.append(_index_row(record, lineno, len(rows), num_classes, seen, hash_subject))
    except UnicodeDecodeError:
        raise UploadError(f"{INDEX} is not UTF-8 text") from None
    except csv.Error as exc:
        raise UploadError(f"{INDEX}: malformed CSV ({exc})") from None
    if len(rows) != n:
        raise UploadError(f"{INDEX}: {len(rows)} rows but the manifest says num_samples={n}")
    if not any(r.split == "train" for r in rows):
        raise UploadError(f"{INDEX}: the dataset has no 'train' samples")
    return rows


def _index_row(
    record: list[str], lineno: int, row: int, num_classes: int, seen: set[str], hash_subject: Callable[[str], str]
) -> SampleRow:
    if len(record) != 4:
        raise UploadError(f"{INDEX}:{lineno}: expected 4 fields, got {len(record)}")
    for column, value in zip(INDEX_HEADER, record):
        check_text(value, ("body", "archive", INDEX, lineno, column))
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
    return SampleRow(row, sample_id, hash_subject(subject_id), label, split)


def _write_index(path: Path, rows: list[SampleRow]) -> None:
    # The stored copy keeps only keyed hashes in the subject column: the raw ids are never written.
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(INDEX_HEADER)
        writer.writerows((r.sample_id, r.subject_hash, r.label, r.split) for r in rows)

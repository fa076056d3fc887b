"""The API's torch-free format checks agree with ltu_core's own reader and writer, and hostile uploads
(sparse or linked archive members, deep JSON, NUL, architecture headers outside the allow-list) are
refused with a 4xx before they cost anything."""

from __future__ import annotations

import dataclasses
import io
import json
import secrets
import struct
import tarfile
from pathlib import Path

import pytest

from tests.support import problem


def test_format_constants_match_ltu_core():
    from api import schemas, uploads
    from ltu_core.data import SPLITS, format
    from ltu_core.models import ArchConfig, factory
    from ltu_core.train import TrainRecipe

    assert (uploads.FORMAT_NAME, uploads.FORMAT_VERSION) == (format.FORMAT_NAME, format.FORMAT_VERSION)
    assert (uploads.MANIFEST, uploads.INDEX, uploads.IMAGES) == (format.MANIFEST, format.INDEX, format.IMAGES)
    assert uploads.INDEX_HEADER == format.INDEX_HEADER and uploads.SPLITS == SPLITS
    assert uploads.CHECKPOINT_FORMAT == factory.CHECKPOINT_FORMAT
    assert {f.name for f in dataclasses.fields(ArchConfig)} == uploads.ARCH_FIELDS
    assert uploads.ARCH_NAME_PATTERN == factory.ARCH_NAME_PATTERN
    # repr, not ==: a bound's type decides whether a float is admitted, and 1 == 1.0.
    assert repr(uploads.ARCH_BOUNDS) == repr(factory.ARCH_BOUNDS)
    assert repr(uploads.ARCH_KWARGS) == repr(factory.ARCH_KWARGS)
    # The recipe schema mirrors TrainRecipe field for field, defaults included.
    recipe_defaults = schemas.TrainRecipeCreate().model_dump()
    assert recipe_defaults == dataclasses.asdict(TrainRecipe())


def test_checkpoints_written_by_ltu_core_are_accepted(tmp_path, trained, tiny_arch):
    from api.uploads import read_safetensors_header
    from ltu_core.models import save_model

    path = save_model(trained, tiny_arch, tmp_path / "w.safetensors", metadata={"note": "x"})
    header = read_safetensors_header(path)
    assert header.architecture == dataclasses.asdict(tiny_arch)
    assert header.num_tensors == len(trained.state_dict())


@pytest.mark.parametrize("cut", [1, 100, -1])
def test_truncated_or_padded_checkpoints_are_refused(tmp_path, trained, tiny_arch, cut):
    from api.uploads import UploadError, read_safetensors_header
    from ltu_core.models import save_model

    data = save_model(trained, tiny_arch, tmp_path / "w.safetensors").read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data + b"\0" if cut == -1 else data[:-cut])
    with pytest.raises(UploadError) as err:
        read_safetensors_header(bad)
    assert err.value.status == 415


def test_stored_datasets_open_with_ltu_core_and_keep_no_subject_ids(api, artifacts):
    from ltu_core.data import read_dataset

    registered = api.client.register_dataset(artifacts.archive, name="tiny")
    assert (registered.name, registered.num_classes, registered.image_shape) == ("tiny", 4, [1, 8, 8])
    stored = read_dataset(api.settings.ledger.artifacts_dir / "datasets" / registered.id)
    assert (stored.sample_ids == artifacts.dataset.sample_ids).all()
    assert (stored.images == artifacts.dataset.images).all()
    assert not set(stored.subject_ids.tolist()) & set(artifacts.dataset.subject_ids.tolist())


# --- hostile uploads -----------------------------------------------------------------------------

SPARSE_DECLARED = 1_500_000_000  # the measurement: a ~10 KiB upload, 1.5 GB written before the 422


def format_files(artifacts) -> dict[str, bytes]:
    """The three files of the tiny dataset archive, by name."""
    with tarfile.open(artifacts.archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def member(name: str, data: bytes | None = None, **fields) -> tuple[tarfile.TarInfo, bytes | None]:
    """A tar entry: a regular file holding `data`, or whatever `fields` (type, linkname, ...) make it."""
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
    return info, data


def tar_of(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def dataset_tar(artifacts, replaced: dict[str, bytes] | None = None) -> bytes:
    """The tiny dataset as a tar, with some files' contents replaced."""
    files = {**format_files(artifacts), **(replaced or {})}
    return tar_of(*(member(name, data) for name, data in files.items()))


def old_gnu_tar(files: dict[str, bytes]) -> bytes:
    """manifest.json and samples.csv, then images.u8 as an old-GNU sparse member (type 'S'), which
    tarfile cannot write (GNU tar's `tar -S` does): 512 stored bytes for a declared SPARSE_DECLARED."""
    blocks = []
    for name in ("manifest.json", "samples.csv"):
        info, data = member(name, files[name])
        blocks.append(info.tobuf(tarfile.GNU_FORMAT) + data + b"\0" * (-len(data) % 512))
    info, stored = member("images.u8", b"\1" * 512, type=tarfile.GNUTYPE_SPARSE)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\0%011o\0" % (0, len(stored))  # the sparse map's first entry: offset, bytes
    header[483:495] = b"%011o\0" % SPARSE_DECLARED  # the real size
    header[148:156] = b" " * 8  # the checksum counts its own field as spaces
    header[148:156] = b"%06o\0 " % sum(header)
    return b"".join(blocks) + bytes(header) + stored + b"\0" * 1024


def sparse_tar(kind: str) -> bytes:
    manifest = {"format": "ltu-dataset", "version": 1, "num_classes": 2, "image_shape": [1, 8, 8], "num_samples": 1}
    files = {
        "manifest.json": json.dumps(manifest).encode(),
        "samples.csv": b"sample_id,subject_id,label,split\ns,p,0,train\n",
    }
    if kind == "old-gnu":
        return old_gnu_tar(files)
    # GNU tar's PAX sparse format 0.1: a regular member whose PAX header carries the map and real size.
    pax = {"GNU.sparse.map": "0,512", "GNU.sparse.size": str(SPARSE_DECLARED), "GNU.sparse.name": "images.u8"}
    return tar_of(
        member("manifest.json", files["manifest.json"]),
        member("samples.csv", files["samples.csv"]),
        member("images.u8", b"\1" * 512, pax_headers=pax),
    )


def upload_dataset(service, payload: bytes):
    return service.http.post(
        "/v1/datasets", headers=service.client.headers, files={"archive": ("d.tar", payload, "application/x-tar")}
    )


def upload_model(service, dataset_id: str, payload: bytes):
    return service.http.post(
        "/v1/models",
        data={"dataset_id": dataset_id},
        headers=service.client.headers,
        files={"weights": ("w.safetensors", payload, "application/octet-stream")},
    )


def registered_datasets(service) -> list[dict]:
    return service.http.get("/v1/datasets", headers=service.client.headers).json()["items"]


def stored_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


@pytest.mark.parametrize("kind", ["old-gnu", "pax"])
def test_sparse_members_are_refused_before_a_byte_is_written(api, monkeypatch, kind):
    from ledger.artifacts import ArtifactStore

    payload = sparse_tar(kind)
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:  # what tarfile reads: 1.5 GB from 10 KiB
        images = tar.getmember("images.u8")
        assert images.issparse() and images.size == SPARSE_DECLARED and len(payload) <= 10 << 10
    root = api.settings.ledger.artifacts_dir
    before, largest = stored_bytes(root), []
    discard = ArtifactStore.discard

    def measured(store, path):  # the store at its fullest: the route discards its staged files last
        largest.append(stored_bytes(store.root))
        discard(store, path)

    monkeypatch.setattr(ArtifactStore, "discard", measured)
    body = problem(upload_dataset(api, payload), 422)
    assert body["code"] == "unsafe_archive_member"
    assert "'images.u8'" in body["detail"] and "sparse" in body["detail"]
    assert largest and max(largest) - before <= len(payload)  # the staged upload itself, nothing unpacked
    assert stored_bytes(root) == before
    assert registered_datasets(api) == []


def test_links_devices_folders_and_paths_outside_the_archive_are_refused(api, artifacts):
    files = format_files(artifacts)
    manifest, index = member("manifest.json", files["manifest.json"]), member("samples.csv", files["samples.csv"])
    hostile = {
        "symlink": member("images.u8", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        "hardlink": member("images.u8", type=tarfile.LNKTYPE, linkname="manifest.json"),
        "device": member("images.u8", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
        "fifo": member("images.u8", type=tarfile.FIFOTYPE),
        "folder": member("images.u8", type=tarfile.DIRTYPE),
        "parent": member("../images.u8", files["images.u8"]),
        "absolute": member("/tmp/images.u8", files["images.u8"]),
        "twice": member("manifest.json", files["manifest.json"]),
    }
    for why, entry in hostile.items():
        body = problem(upload_dataset(api, tar_of(manifest, index, entry)), 422)
        assert body["code"] == "unsafe_archive_member", why
        assert repr(entry[0].name) in body["detail"], why
    extra = tar_of(manifest, index, member("images.u8", files["images.u8"]), member("notes.txt", b"hi"))
    body = problem(upload_dataset(api, extra), 422)
    assert body["code"] == "unexpected_archive_member" and "'notes.txt'" in body["detail"]
    assert not (api.settings.ledger.artifacts_dir.parent / "images.u8").exists()
    assert registered_datasets(api) == []


def test_declared_sizes_are_checked_before_reading(api, artifacts, tmp_path):
    from api.uploads import MAX_MANIFEST_BYTES, UploadError, unpack_dataset_archive

    files = format_files(artifacts)
    padded = files["manifest.json"] + b" " * MAX_MANIFEST_BYTES
    body = problem(upload_dataset(api, dataset_tar(artifacts, {"manifest.json": padded})), 422)
    assert body["code"] == "archive_member_too_large" and "'manifest.json'" in body["detail"]

    whole = dataset_tar(artifacts)
    cut = whole[: whole.index(files["images.u8"]) + 100]  # images.u8 declares more than follows
    body = problem(upload_dataset(api, cut), 422)
    assert body["code"] == "unsafe_archive_member" and "more than the archive holds" in body["detail"]

    # Each member within the limit, together over it.
    archive = tmp_path / "d.tar"
    archive.write_bytes(whole)
    limit = len(files["images.u8"]) + len(files["samples.csv"]) // 2
    with pytest.raises(UploadError) as err:
        unpack_dataset_archive(archive, tmp_path / "out", hash_subject=str, max_bytes=limit)
    assert err.value.code == "archive_member_too_large" and not (tmp_path / "out").exists()


@pytest.fixture(params=["sqlite", "postgres"])
def each_ledger(request, make_service):
    """The API on SQLite, then on a Postgres database of its own."""
    if request.param == "sqlite":
        return make_service()
    return make_service(
        database_url=request.getfixturevalue("fresh_postgres_url"), secret_key=secrets.token_urlsafe(48)
    )


def test_nul_and_lone_surrogates_are_refused_alike_on_every_ledger(each_ledger, artifacts):
    files = format_files(artifacts)
    header, first, *rest = files["samples.csv"].decode().splitlines(keepends=True)
    nul_id = "".join([header, first.replace(",", "\0x,", 1), *rest]).encode()  # in the first sample_id
    body = problem(upload_dataset(each_ledger, dataset_tar(artifacts, {"samples.csv": nul_id})), 422)
    assert body["code"] == "nul_character" and "samples.csv" in body["detail"] and "\0" not in body["detail"]
    for name, data in files.items():
        if name != "images.u8":  # bytes that are not UTF-8 at all (a lone surrogate's own encoding among them)
            body = problem(upload_dataset(each_ledger, dataset_tar(artifacts, {name: data + b"\xed\xa0\x80"})), 422)
            assert body["code"] == "invalid_dataset" and f"{name} is not UTF-8" in body["detail"]

    manifest = json.loads(files["manifest.json"])
    for name, code in [("a\0b", "nul_character"), ("\ud800", "lone_surrogate")]:
        renamed = json.dumps({**manifest, "name": name}).encode()  # escaped: \u0000, \ud800
        body = problem(upload_dataset(each_ledger, dataset_tar(artifacts, {"manifest.json": renamed})), 422)
        assert body["code"] == code and "manifest.json" in body["detail"]
    assert registered_datasets(each_ledger) == []
    assert each_ledger.client.register_dataset(artifacts.archive).num_classes == 4


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def with_header(weights: bytes, change) -> bytes:
    """A safetensors file with its JSON header replaced by `change(header)` (a dict, or JSON text)."""
    (length,) = struct.unpack("<Q", weights[:8])
    changed = change(json.loads(weights[8 : 8 + length]))
    raw = (changed if isinstance(changed, str) else json.dumps(changed)).encode()
    return struct.pack("<Q", len(raw)) + raw + weights[8 + length :]


def with_arch(weights: bytes, arch) -> bytes:
    """A safetensors file whose architecture header is `arch(current)` (a dict, or JSON text)."""

    def change(header):
        current = json.loads(header["__metadata__"]["arch"])
        new = arch(current)
        header["__metadata__"]["arch"] = new if isinstance(new, str) else json.dumps(new)
        return header

    return with_header(weights, change)


@pytest.mark.parametrize("depth", [900, 30_000])
def test_deeply_nested_json_is_422_never_a_500(api, artifacts, depth):
    deep_manifest = dataset_tar(artifacts, {"manifest.json": nested(depth).encode()})
    assert problem(upload_dataset(api, deep_manifest), 422)["code"] == "nesting_too_deep"

    dataset = api.client.register_dataset(artifacts.archive)
    weights = artifacts.weights.read_bytes()
    deep_header = with_header(weights, lambda h: json.dumps(h)[:-1] + f', "deep": {nested(depth)}}}')
    deep_arch = with_arch(weights, lambda _: nested(depth))
    for payload in (deep_header, deep_arch):
        assert problem(upload_model(api, dataset.id, payload), 422)["code"] == "nesting_too_deep"
    assert api.client.list_models() == []


@pytest.mark.parametrize(
    "change, named",
    [
        ({"kwargs": {"checkpoint_path": "/etc/passwd"}}, "'checkpoint_path'"),
        ({"kwargs": {"pretrained": True}}, "'pretrained'"),
        ({"kwargs": {"pretrained_cfg": {"file": "/etc/passwd"}}}, "'pretrained_cfg'"),
        ({"kwargs": {"no_such_argument": 1}}, "'no_such_argument'"),
        ({"kwargs": {"embed_dim": 1 << 20}}, "'embed_dim'"),
        ({"kwargs": {"depth": 4.5}}, "'depth'"),
        ({"kwargs": ["checkpoint_path"]}, "'kwargs'"),
        ({"width": 1000.0}, "'width'"),
        ({"num_classes": 10**9}, "'num_classes'"),
        ({"name": "hf-hub:someone/model"}, "'name'"),
        ({"name": "local-dir:/etc"}, "'name'"),
        ({"small_stem": "yes"}, "'small_stem'"),
    ],
)
def test_architecture_headers_outside_the_allow_list_are_refused(api, artifacts, change, named):
    dataset = api.client.register_dataset(artifacts.archive)
    payload = with_arch(artifacts.weights.read_bytes(), lambda arch: {**arch, **change})
    body = problem(upload_model(api, dataset.id, payload), 422)
    assert body["code"] == "invalid_architecture" and named in body["detail"]
    assert api.client.list_models() == []


@pytest.mark.parametrize(
    "arch",
    [
        {"name": "resnet18", "num_classes": 4, "width": 0.125},
        {"name": "vit_micro", "num_classes": 10, "img_size": 32, "kwargs": {"depth": 2, "drop_path_rate": 0.1}},
        {"name": "resnet18", "num_classes": 4, "kwargs": {"checkpoint_path": "/etc/passwd"}},
        {"name": "resnet18", "num_classes": 4, "kwargs": {"pretrained": True}},
        {"name": "resnet18", "num_classes": 4, "kwargs": {"mlp_ratio": float("nan")}},
        {"name": "resnet18", "num_classes": 4, "kwargs": {"patch_size": 4.0}},
        {"name": "resnet18", "num_classes": 4, "in_chans": True},
        {"name": "resnet18.a1_in1k", "num_classes": 4},
        {"name": "resnet18", "num_classes": 1},
    ],
)
def test_the_api_and_ltu_core_admit_the_same_architectures(arch):
    from api.uploads import UploadError, check_architecture
    from ltu_core.errors import CheckpointError
    from ltu_core.models import ArchConfig

    def admitted(check, error) -> bool:
        try:
            check()
        except error:
            return False
        return True

    assert admitted(lambda: check_architecture(arch), UploadError) == admitted(
        lambda: ArchConfig(**arch), CheckpointError
    )


def test_archives_tar_writes_and_ltu_checkpoints_are_accepted(api, artifacts, tmp_path):
    # `tar -cf d.tar -C folder .` writes the folder itself first and ./-prefixed names.
    files = format_files(artifacts)
    folder_form = tar_of(member(".", type=tarfile.DIRTYPE), *(member(f"./{n}", d) for n, d in files.items()))
    response = upload_dataset(api, folder_form)
    assert response.status_code == 201, response.text
    model = api.client.register_model(artifacts.weights, dataset_id=response.json()["id"], recipe=artifacts.recipe)
    assert model.current_version == 1

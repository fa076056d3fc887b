"""Datasets: upload in the ltu-dataset format (admin), list and read (read scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile

from api.deps import AdminKey, DatabaseDep, ReadKey, SessionDep, SettingsDep, StoreDep, actor
from api.errors import ProblemError
from api.routes.common import problems, tenant_key_apart
from api.schemas import DatasetPage, DatasetRead
from api.uploads import FORMAT_VERSION, TooLarge, UploadError, save_stream, unpack_dataset_archive
from ledger import datasets
from ledger.artifacts import sha256_file
from ledger.tables import Dataset, new_id

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def dataset_read(session, dataset: Dataset) -> DatasetRead:
    """Response body of a dataset (with its erased-sample count)."""
    read = DatasetRead.model_validate(dataset)
    read.erased_samples = datasets.count_erased(session, dataset_id=dataset.id)
    return read


@router.post("", status_code=201, response_model=DatasetRead, responses=problems(400, 413, 415))
def register_dataset(
    archive: Annotated[
        UploadFile, File(description="An uncompressed tar of manifest.json, samples.csv, images.u8 (ltu-dataset v1).")
    ],
    session: SessionDep,
    database: DatabaseDep,
    key: AdminKey,
    settings: SettingsDep,
    store: StoreDep,
    response: Response,
    name: Annotated[str | None, Form(max_length=200, description="Defaults to the manifest's name.")] = None,
) -> DatasetRead:
    """Register a dataset; subject ids are stored only as keyed hashes.

    Upload limit: the archive may be at most LTU_MAX_DATASET_BYTES (default 2 GiB); a larger one is refused
    with 413 (`payload_too_large`) as soon as it passes the limit. The format: README, "Datasets: the
    ltu-dataset format"; `ltu dataset pack` builds one and `ltu dataset validate` checks one.
    """
    tenant_key = tenant_key_apart(
        database, tenant_id=key.tenant_id, secret=settings.ledger.secret_key, actor=actor(key)
    )
    staged, folder = store.staging_file(".tar"), store.staging_dir()
    try:
        save_stream(archive.file, staged, limit=settings.api.max_dataset_bytes)
        upload = unpack_dataset_archive(
            staged,
            folder,
            hash_subject=tenant_key.subject_hash,
            max_bytes=settings.api.max_dataset_bytes,
        )
        dataset_id = new_id()
        archive_sha = sha256_file(staged)
        storage_key = store.stage_dataset(session, folder, dataset_id)  # in place once the registration commits
    except TooLarge as exc:
        raise ProblemError(413, str(exc), code="payload_too_large") from None
    except UploadError as exc:
        default = "unsupported_media_type" if exc.status == 415 else "invalid_dataset"
        raise ProblemError(exc.status, str(exc), code=exc.code or default) from None
    finally:
        store.discard(staged)
        store.discard(folder)
    dataset = datasets.create_dataset(
        session,
        tenant_id=key.tenant_id,
        dataset_id=dataset_id,
        name=name or upload.name or "dataset",
        format_version=FORMAT_VERSION,
        num_classes=upload.num_classes,
        image_shape=upload.image_shape,
        archive_sha256=archive_sha,
        storage_key=storage_key,
        samples=upload.samples,
        tenant_key_id=tenant_key.id,
        actor=actor(key),
    )
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=DatasetPage, responses=problems())
def list_datasets(
    session: SessionDep, key: ReadKey, cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> DatasetPage:
    """The tenant's datasets, newest first."""
    page = datasets.list_datasets(session, tenant_id=key.tenant_id, cursor=cursor, limit=limit)
    return DatasetPage(items=[dataset_read(session, d) for d in page.items], next_cursor=page.next_cursor)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=problems(404))
def get_dataset(dataset_id: str, session: SessionDep, key: ReadKey) -> DatasetRead:
    """One dataset."""
    return dataset_read(session, datasets.get_dataset(session, tenant_id=key.tenant_id, dataset_id=dataset_id))

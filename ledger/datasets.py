"""Registered datasets and their samples (ids, keyed subject hash, label, split, erasure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from ledger import audit
from ledger.errors import NotFound
from ledger.pagination import Page, newest_first
from ledger.tables import COMPLETED, Dataset, DatasetSample, DeletionRequest, RequestSample

INSERT_CHUNK = 5000


@dataclass(frozen=True)
class SampleRow:
    """One samples.csv row as the ledger stores it (the subject id already hashed)."""

    row: int
    sample_id: str
    subject_hash: str
    label: int
    split: str


def create_dataset(
    session: Session,
    *,
    tenant_id: str,
    dataset_id: str,
    name: str,
    format_version: int,
    num_classes: int,
    image_shape: Sequence[int],
    archive_sha256: str,
    storage_key: str,
    samples: Iterable[SampleRow],
    actor: str,
) -> Dataset:
    """Register a dataset and bulk-insert its sample rows."""
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=name,
        format_version=format_version,
        num_classes=num_classes,
        image_shape=list(image_shape),
        num_samples=0,
        archive_sha256=archive_sha256,
        storage_key=storage_key,
    )
    session.add(dataset)
    session.flush()
    count, chunk = 0, []
    for sample in samples:
        chunk.append(
            {
                "dataset_id": dataset_id,
                "row": sample.row,
                "sample_id": sample.sample_id,
                "subject_hash": sample.subject_hash,
                "label": sample.label,
                "split": sample.split,
            }
        )
        if len(chunk) >= INSERT_CHUNK:
            session.execute(insert(DatasetSample), chunk)
            count, chunk = count + len(chunk), []
    if chunk:
        session.execute(insert(DatasetSample), chunk)
        count += len(chunk)
    dataset.num_samples = count
    session.flush()
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="dataset.registered",
        resource_type="dataset",
        resource_id=dataset.id,
        data={"name": name, "num_samples": count, "sha256": archive_sha256},
    )
    return dataset


def get_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Dataset:
    """The tenant's dataset, or NotFound."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != tenant_id:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


def list_datasets(session: Session, *, tenant_id: str, cursor: str | None = None, limit: int = 50) -> Page[Dataset]:
    """The tenant's datasets, newest first."""
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return newest_first(
        session, query, time_column=Dataset.created_at, id_column=Dataset.id, cursor=cursor, limit=limit
    )


def count_erased(session: Session, *, dataset_id: str) -> int:
    """How many of the dataset's samples have been erased."""
    return (
        session.scalar(
            select(func.count())
            .select_from(DatasetSample)
            .where(DatasetSample.dataset_id == dataset_id, DatasetSample.erased_by_request_id.is_not(None))
        )
        or 0
    )


def samples_by_subject(
    session: Session, *, dataset_id: str, subject_hashes: Sequence[str]
) -> dict[str, list[DatasetSample]]:
    """The samples of each subject hash (hashes with no sample are absent)."""
    out: dict[str, list[DatasetSample]] = {}
    for start in range(0, len(subject_hashes), 500):
        rows = session.scalars(
            select(DatasetSample).where(
                DatasetSample.dataset_id == dataset_id,
                DatasetSample.subject_hash.in_(subject_hashes[start : start + 500]),
            )
        )
        for row in rows:
            out.setdefault(row.subject_hash, []).append(row)
    return out


def samples_by_id(session: Session, *, dataset_id: str, sample_ids: Sequence[str]) -> dict[str, DatasetSample]:
    """The samples with these ids (unknown ids are absent)."""
    out: dict[str, DatasetSample] = {}
    for start in range(0, len(sample_ids), 500):
        rows = session.scalars(
            select(DatasetSample).where(
                DatasetSample.dataset_id == dataset_id, DatasetSample.sample_id.in_(sample_ids[start : start + 500])
            )
        )
        out.update({row.sample_id: row for row in rows})
    return out


def erased_for_model(session: Session, *, model_id: str) -> set[int]:
    """Sample keys already forgotten by completed requests on this model."""
    query = (
        select(RequestSample.sample_pk)
        .join(DeletionRequest, DeletionRequest.id == RequestSample.request_id)
        .where(DeletionRequest.model_id == model_id, DeletionRequest.status == COMPLETED)
    )
    return set(session.scalars(query))


def erased_rows(session: Session, *, dataset_id: str) -> dict[int, int]:
    """{sample key: row} of every erased sample of the dataset (excluded from later runs)."""
    rows = session.execute(
        select(DatasetSample.id, DatasetSample.row).where(
            DatasetSample.dataset_id == dataset_id, DatasetSample.erased_by_request_id.is_not(None)
        )
    )
    return {pk: row for pk, row in rows}

"""Registered datasets and their samples (ids, keyed subject hash, label, split, erasure, pixel purge).

Pixel purge: a sample erased from every model registered on its dataset (or from one, when its tenant
purges raw data at once) is no longer needed by anyone to unlearn, so its pixels leave the stored
dataset: the worker (worker.retention) tombstones its row in a staged copy of the folder and hands it to
the transaction that marks the sample purged (`mark_pixels_purged`). A model registered later on the
dataset never reads the row: it is erased, and its pixels are zeros the reader refuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Row, exists, func, insert, select, update
from sqlalchemy.orm import Session

from ledger import audit
from ledger.errors import NotFound
from ledger.pagination import Page, newest_first
from ledger.tables import COMPLETED, Dataset, DatasetSample, DeletionRequest, Model, RequestSample, Tenant, utcnow

INSERT_CHUNK = 5000
TOMBSTONED_FORMAT_VERSION = 2  # ltu-dataset version 2 lists the tombstoned rows (ltu_core.data.format)


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
    tenant_key_id: int,
    actor: str,
) -> Dataset:
    """Register a dataset and bulk-insert its sample rows (subject hashes keyed by the tenant key `tenant_key_id`)."""
    dataset = Dataset(
        id=dataset_id,
        tenant_key_id=tenant_key_id,
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


@dataclass(frozen=True)
class Named:
    """The samples a request names, as plain rows (id, sample_id, subject_hash, split), and which of them a
    completed request on the model already forgot."""

    rows: list[Row]
    erased: set[int]


def named_for_model(
    session: Session,
    *,
    model_id: str,
    dataset_id: str,
    subject_hashes: Sequence[str] | None = None,
    sample_ids: Sequence[str] | None = None,
) -> Named:
    """The dataset's samples of these subjects or with these ids, each flagged erased for the model or not.

    One query per 500 keys answers both what `samples_by_subject` (or a lookup by sample id) and
    `erased_for_model` would, reading only the named samples' erasures rather than the model's all.
    """
    column, keys = (
        (DatasetSample.subject_hash, subject_hashes)
        if subject_hashes is not None
        else (DatasetSample.sample_id, sample_ids or ())
    )
    erased = _forgotten_by(model_id).label("erased")
    rows: list[Row] = []
    for start in range(0, len(keys), 500):
        rows.extend(
            session.execute(
                select(
                    DatasetSample.id, DatasetSample.sample_id, DatasetSample.subject_hash, DatasetSample.split, erased
                )
                .where(DatasetSample.dataset_id == dataset_id, column.in_(keys[start : start + 500]))
                .order_by(DatasetSample.id)
            )
        )
    return Named(rows, {row.id for row in rows if row.erased})


def _forgotten_by(model_id: str) -> ColumnElement[bool]:
    """SQL, per DatasetSample row: a completed request on the model named it (`erased_for_model`'s rule)."""
    return exists().where(
        RequestSample.sample_pk == DatasetSample.id,
        DeletionRequest.id == RequestSample.request_id,
        DeletionRequest.model_id == model_id,
        DeletionRequest.status == COMPLETED,
    )


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


# --- pixel purge --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelPurge:
    """Samples whose pixels leave a stored dataset in one transaction: rows, and the subjects' keyed hashes."""

    dataset_id: str
    tenant_id: str
    storage_key: str
    sample_pks: tuple[int, ...]
    rows: tuple[int, ...]
    subject_hashes: tuple[str, ...]
    at_once: bool  # the tenant's policy, not every model's erasure, made them purgeable


def datasets_awaiting_purge(session: Session) -> list[str]:
    """Datasets with erased samples whose pixels are still stored."""
    return list(
        session.scalars(
            select(DatasetSample.dataset_id)
            .where(DatasetSample.erased_by_request_id.is_not(None), DatasetSample.purged_at.is_(None))
            .distinct()
        )
    )


def lock_dataset(session: Session, *, dataset_id: str) -> Dataset:
    """The dataset, its row held until the transaction ends: purges of one dataset take turns (Postgres;
    SQLite serialises every write anyway)."""
    return session.scalars(select(Dataset).where(Dataset.id == dataset_id).with_for_update()).one()


def purgeable(session: Session, *, dataset: Dataset) -> PixelPurge | None:
    """The dataset's unpurged samples no model still needs, or None.

    Every model registered on the dataset must have erased a sample (`erased_for_model`), unless the
    tenant purges at once: then one model's erasure is enough.
    """
    at_once = bool(session.scalar(select(Tenant.purge_raw_data_at_once).where(Tenant.id == dataset.tenant_id)))
    candidates = session.scalars(
        select(DatasetSample)
        .where(
            DatasetSample.dataset_id == dataset.id,
            DatasetSample.erased_by_request_id.is_not(None),
            DatasetSample.purged_at.is_(None),
        )
        .order_by(DatasetSample.row)
    ).all()
    if not at_once:
        models = session.scalars(select(Model.id).where(Model.dataset_id == dataset.id)).all()
        erased_by_all = set.intersection(*(erased_for_model(session, model_id=m) for m in models)) if models else set()
        candidates = [s for s in candidates if s.id in erased_by_all]
    if not candidates:
        return None
    return PixelPurge(
        dataset_id=dataset.id,
        tenant_id=dataset.tenant_id,
        storage_key=dataset.storage_key,
        sample_pks=tuple(s.id for s in candidates),
        rows=tuple(s.row for s in candidates),
        subject_hashes=tuple(sorted({s.subject_hash for s in candidates})),
        at_once=at_once,
    )


def purged_rows(session: Session, *, dataset_id: str) -> list[int]:
    """Rows of the dataset whose pixels were purged, ascending."""
    return list(
        session.scalars(
            select(DatasetSample.row)
            .where(DatasetSample.dataset_id == dataset_id, DatasetSample.purged_at.is_not(None))
            .order_by(DatasetSample.row)
        )
    )


def mark_pixels_purged(session: Session, *, purge: PixelPurge, actor: str = "system") -> bool:
    """Mark the samples purged, bump the dataset's format version, record `dataset.samples_purged`; False if
    another pass was first (the caller rolls back)."""
    now = utcnow()
    changed = session.execute(
        update(DatasetSample)
        .where(DatasetSample.id.in_(purge.sample_pks), DatasetSample.purged_at.is_(None))
        .values(purged_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != len(purge.sample_pks):
        return False
    session.execute(
        update(Dataset).where(Dataset.id == purge.dataset_id).values(format_version=TOMBSTONED_FORMAT_VERSION)
    )
    audit.record(
        session,
        tenant_id=purge.tenant_id,
        actor=actor,
        action="dataset.samples_purged",
        resource_type="dataset",
        resource_id=purge.dataset_id,
        now=now,
        data={
            "samples": len(purge.sample_pks),
            "subjects": len(purge.subject_hashes),
            "subject_hashes": list(purge.subject_hashes),
            "policy": "at_once" if purge.at_once else "every_model_erased",
            "format_version": TOMBSTONED_FORMAT_VERSION,
        },
    )
    return True


def set_purge_policy(session: Session, *, tenant_id: str, at_once: bool, actor: str) -> None:
    """Purge the tenant's erased pixels as soon as one model erased them (True) or once every model did."""
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(purge_raw_data_at_once=at_once))
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tenant.purge_policy_set",
        resource_type="tenant",
        resource_id=tenant_id,
        data={"purge_raw_data_at_once": at_once},
    )

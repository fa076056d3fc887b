"""Erasures of a person: one request names data subjects, the ledger finds every model trained on them.

An erasure creates one deletion request per affected model of the tenant (`create_request`, so
each keeps its own lifecycle, worker run, audit trail and certificate) and records the subjects
found in no dataset of the tenant: a clear answer, not an error. Its status, deadline and end are
computed from its requests (`aggregate_status`), never stored, so they cannot drift from them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, String, any_, case, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ledger import audit, datasets, ratelimit, requests
from ledger.errors import IdempotencyConflict, NotFound
from ledger.pagination import Page, newest_first
from ledger.tables import (
    ACTIVE_STATUSES,
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RECEIVED,
    RUNNING,
    Dataset,
    DatasetSample,
    DeletionRequest,
    Erasure,
    Model,
    ModelVersion,
    RequestSample,
    utcnow,
)

WAITING_STATUSES = (RECEIVED, QUEUED)  # no run has started on the request
ERASURE_STATUSES = (RECEIVED, RUNNING, COMPLETED, FAILED, CANCELLED)
CHUNK = 500  # ids per IN list
BULK_CHUNK = 5000  # hashes per IN list of a bulk erasure (below SQLite's 32,766 and Postgres' 65,535 parameters)


def aggregate_status(statuses: Sequence[str]) -> str:
    """The erasure's status from its requests' (the one statement of the rule; `_status_sql` mirrors it).

    received while none has started; running while any is active; completed when all completed
    (also when there are none); failed when none is active and one failed; cancelled otherwise
    (some were cancelled: the person is not erased from every model).
    """
    if any(s in ACTIVE_STATUSES for s in statuses):
        return RECEIVED if all(s in WAITING_STATUSES for s in statuses) else RUNNING
    if all(s == COMPLETED for s in statuses):
        return COMPLETED
    return FAILED if FAILED in statuses else CANCELLED


def _status_sql():
    """`aggregate_status` as an SQL expression over an erasure's requests, for filtering lists by status."""
    counts = (
        select(
            DeletionRequest.erasure_id.label("erasure_id"),
            func.count().label("total"),
            func.sum(case((DeletionRequest.status.in_(WAITING_STATUSES), 1), else_=0)).label("waiting"),
            func.sum(case((DeletionRequest.status.in_(ACTIVE_STATUSES), 1), else_=0)).label("active"),
            func.sum(case((DeletionRequest.status == COMPLETED, 1), else_=0)).label("completed"),
            func.sum(case((DeletionRequest.status == FAILED, 1), else_=0)).label("failed"),
        )
        .where(DeletionRequest.erasure_id.is_not(None))
        .group_by(DeletionRequest.erasure_id)
        .subquery()
    )
    status = case(
        (counts.c.total.is_(None), COMPLETED),
        (counts.c.active > 0, case((counts.c.waiting == counts.c.total, RECEIVED), else_=RUNNING)),
        (counts.c.completed == counts.c.total, COMPLETED),
        (counts.c.failed > 0, FAILED),
        else_=CANCELLED,
    )
    return counts, status


# --- creation -----------------------------------------------------------------------------------


def find_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> Erasure | None:
    """The tenant's erasure created with this Idempotency-Key, if any."""
    return session.scalar(select(Erasure).where(Erasure.tenant_id == tenant_id, Erasure.idempotency_key == key))


def _replay(existing: Erasure, body_hash: str, tenant_key_id: int | None) -> Erasure:
    if existing.tenant_key_id != tenant_key_id:
        raise IdempotencyConflict(requests.KEY_DESTROYED)
    if existing.body_hash != body_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different erasure body; use a new key for a new erasure"
        )
    return existing


def create_erasure(
    session: Session,
    *,
    tenant_id: str,
    subject_hashes: Sequence[str],
    model_ids: Sequence[str] | None,
    dataset_ids: Sequence[str] | None,
    method: str,
    parameters: dict[str, Any],
    idempotency_key: str | None,
    body_hash: str,
    tenant_key_id: int,
    actor: str,
    now: datetime | None = None,
    bulk: bool = False,
) -> tuple[Erasure, bool]:
    """Create the erasure and one request per affected model, with its audit event; (erasure, created).

    A model is affected when its dataset holds training samples of a subject it has not forgotten
    yet; each request names only those subjects. NotFound names the model or dataset ids of the
    restriction the tenant lacks. Idempotency-Key as `requests.create_request`.

    `bulk`, for up to 100,000 distinct subjects accepted in seconds: the same erasure and the same
    rule, but the samples are read once in chunked IN lists, the request samples are inserted in one
    executemany, and the audit event carries the subject count and a digest of the hash list instead
    of the list (the erasure row and each request keep the list).
    """
    earlier = _earlier(
        session, tenant_id=tenant_id, idempotency_key=idempotency_key, body_hash=body_hash, tenant_key_id=tenant_key_id
    )
    if earlier is not None:
        return earlier, False
    models = _models_in_scope(session, tenant_id=tenant_id, model_ids=model_ids, dataset_ids=dataset_ids)
    if bulk:
        samples = _tenant_samples(session, tenant_id, subject_hashes)
        found = {row.subject_hash for row in samples}
    else:
        found = _found_subjects(session, tenant_id, subject_hashes)
    now = now or utcnow()
    erasure, created = _open_erasure(
        session,
        Erasure(
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            tenant_key_id=tenant_key_id,
            subject_hashes=list(subject_hashes),
            subjects_not_found=len(subject_hashes) - len(found),
            model_ids=_listed(model_ids),
            dataset_ids=_listed(dataset_ids),
            method=method,
            parameters=parameters,
            received_at=now,
        ),
    )
    if not created:
        return erasure, False
    made = []
    for model in models:
        if bulk:
            request = _bulk_request(session, erasure=erasure, model=model, samples=samples, actor=actor, now=now)
        else:
            request = _request(session, erasure=erasure, model=model, actor=actor, now=now)
        if request is not None:
            made.append(request)
    session.flush()
    subjects = (
        {"bulk": True, "subject_hashes_sha256": hash_list_digest(subject_hashes)}
        if bulk
        else {"subject_hashes": erasure.subject_hashes}
    )
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="erasure.received",
        resource_type="erasure",
        resource_id=erasure.id,
        now=now,
        data={
            **subjects,
            "subject_count": len(subject_hashes),
            "subjects_not_found": erasure.subjects_not_found,
            "model_ids": erasure.model_ids,
            "dataset_ids": erasure.dataset_ids,
            "method": method,
            "requests": [{"request_id": r.id, "model_id": r.model_id} for r in made],
        },
    )
    return erasure, True


def _request(session: Session, *, erasure: Erasure, model: Model, actor: str, now: datetime) -> DeletionRequest | None:
    """The erasure's request on `model`, naming the subjects the model still holds; None if it holds none."""
    remaining = _still_held(session, model=model, subject_hashes=erasure.subject_hashes)
    if not remaining:
        return None
    request, _ = requests.create_request(
        session,
        tenant_id=erasure.tenant_id,
        model=model,
        target=requests.Target(kind="subjects", subject_hashes=tuple(remaining)),
        method=erasure.method,
        parameters=erasure.parameters,
        idempotency_key=None,
        body_hash=erasure.body_hash,
        tenant_key_id=erasure.tenant_key_id,
        actor=actor,
        now=now,
    )
    request.erasure_id = erasure.id
    return request


def _earlier(
    session: Session, *, tenant_id: str, idempotency_key: str | None, body_hash: str, tenant_key_id: int
) -> Erasure | None:
    """The tenant's erasure made earlier with this Idempotency-Key (IdempotencyConflict for another body)."""
    if not idempotency_key:
        return None
    existing = find_by_idempotency_key(session, tenant_id=tenant_id, key=idempotency_key)
    return None if existing is None else _replay(existing, body_hash, tenant_key_id)


def _open_erasure(session: Session, erasure: Erasure) -> tuple[Erasure, bool]:
    """Insert the erasure: (it, True), or (the tenant's erasure with its Idempotency-Key, False) when that one
    arrived concurrently (IdempotencyConflict for another body)."""
    try:
        with session.begin_nested():
            session.add(erasure)
            session.flush()
    except IntegrityError:
        existing = find_by_idempotency_key(session, tenant_id=erasure.tenant_id, key=erasure.idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, erasure.body_hash, erasure.tenant_key_id), False
    return erasure, True


def _listed(ids: Sequence[str] | None) -> list[str] | None:
    return None if ids is None else list(ids)


def _among(session: Session, column: Any, values: Sequence[str]) -> Any:
    """`column IN values` for a chunk of up to BULK_CHUNK values.

    On Postgres one array parameter (`= ANY(:values)`): thousands of separate parameters cost more to
    render and send than the lookup itself.
    """
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(list(values), ARRAY(String)))
    return column.in_(values)


def hash_list_digest(subject_hashes: Sequence[str]) -> str:
    """SHA-256 of the hashes joined by newlines, in the erasure's order: what a bulk event says of its subjects."""
    return hashlib.sha256("\n".join(subject_hashes).encode()).hexdigest()


def _tenant_samples(session: Session, tenant_id: str, subject_hashes: Sequence[str]) -> list[Any]:
    """(id, dataset_id, subject_hash, split) of every sample of these subjects in the tenant's datasets."""
    rows: list[Any] = []
    for start in range(0, len(subject_hashes), BULK_CHUNK):
        rows.extend(
            session.execute(
                select(DatasetSample.id, DatasetSample.dataset_id, DatasetSample.subject_hash, DatasetSample.split)
                .join(Dataset, Dataset.id == DatasetSample.dataset_id)
                .where(
                    Dataset.tenant_id == tenant_id,
                    _among(session, DatasetSample.subject_hash, subject_hashes[start : start + BULK_CHUNK]),
                )
            )
        )
    return rows


def _bulk_request(
    session: Session, *, erasure: Erasure, model: Model, samples: list[Any], actor: str, now: datetime
) -> DeletionRequest | None:
    """The model's request naming every subject it still holds (all their samples), or None when it holds none.

    The forget-set rule of `requests.still_to_forget`, on sample rows instead of ORM objects.
    """
    forgotten = datasets.erased_for_model(session, model_id=model.id)
    mine = [row for row in samples if row.dataset_id == model.dataset_id]
    held = {row.subject_hash for row in mine if row.split == "train" and row.id not in forgotten}
    if not held:
        return None
    subjects = [h for h in erasure.subject_hashes if h in held]
    named = [row.split for row in mine if row.subject_hash in held]
    request = requests.new_request(
        tenant_id=erasure.tenant_id,
        model_id=model.id,
        erasure_id=erasure.id,
        target=requests.Target(kind="subjects", subject_hashes=tuple(subjects)),
        method=erasure.method,
        parameters=erasure.parameters,
        idempotency_key=None,
        body_hash=erasure.body_hash,
        tenant_key_id=erasure.tenant_key_id,
        now=now,
    )
    session.add(request)
    session.flush()
    _name_samples(session, request=request, dataset_id=model.dataset_id, subjects=subjects)
    requests.announce(
        session,
        request,
        actor=actor,
        num_samples=len(named),
        num_train_samples=named.count("train"),
        data={"erasure_id": erasure.id, "subject_hashes_sha256": hash_list_digest(subjects)},
    )
    return request


def _name_samples(session: Session, *, request: DeletionRequest, dataset_id: str, subjects: Sequence[str]) -> None:
    """Insert the request's samples (every sample of its subjects in the dataset) inside the database.

    INSERT ... SELECT per chunk of subjects: none of the up to 200,000 rows travels through Python.
    """
    for start in range(0, len(subjects), BULK_CHUNK):
        chosen = select(literal(request.id), DatasetSample.id).where(
            DatasetSample.dataset_id == dataset_id,
            _among(session, DatasetSample.subject_hash, subjects[start : start + BULK_CHUNK]),
        )
        session.execute(insert(RequestSample.__table__).from_select(["request_id", "sample_pk"], chosen))


def submit(
    session: Session,
    *,
    tenant_id: str,
    api_key_id: str,
    per_minute: int,
    burst: int,
    bulk: bool = False,
    **erasure: Any,
) -> tuple[Erasure, bool]:
    """An erasure through the API: `create_erasure`, paid with one rate-limit
    token like a deletion request.

    Replays and refusals take no token; RateLimited leaves the erasure added: the caller rolls back.
    """
    created_erasure, created = create_erasure(session, tenant_id=tenant_id, bulk=bulk, **erasure)
    if created:
        ratelimit.charge(session, api_key_id=api_key_id, per_minute=per_minute, burst=burst)
    return created_erasure, created


def _models_in_scope(
    session: Session, *, tenant_id: str, model_ids: Sequence[str] | None, dataset_ids: Sequence[str] | None
) -> list[Model]:
    """The tenant's models within the restriction (both given: models of those datasets among those models)."""
    query = select(Model).where(Model.tenant_id == tenant_id).order_by(Model.created_at, Model.id)
    if model_ids is not None:
        _require_known(session, Model, tenant_id, model_ids, field="model_ids", noun="model")
        query = query.where(Model.id.in_(model_ids))
    if dataset_ids is not None:
        _require_known(session, Dataset, tenant_id, dataset_ids, field="dataset_ids", noun="dataset")
        query = query.where(Model.dataset_id.in_(dataset_ids))
    return list(session.scalars(query))


def _require_known(session: Session, table, tenant_id: str, ids: Sequence[str], *, field: str, noun: str) -> None:
    known = set(session.scalars(select(table.id).where(table.tenant_id == tenant_id, table.id.in_(ids))))
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise NotFound(f"{field}: no such {noun}: {', '.join(unknown)}")


def _found_subjects(session: Session, tenant_id: str, subject_hashes: Sequence[str]) -> set[str]:
    """Those of `subject_hashes` with a sample in any dataset of the tenant."""
    found: set[str] = set()
    for start in range(0, len(subject_hashes), CHUNK):
        found.update(
            session.scalars(
                select(DatasetSample.subject_hash)
                .join(Dataset, Dataset.id == DatasetSample.dataset_id)
                .where(
                    Dataset.tenant_id == tenant_id,
                    DatasetSample.subject_hash.in_(subject_hashes[start : start + CHUNK]),
                )
                .distinct()
            )
        )
    return found


def _still_held(session: Session, *, model: Model, subject_hashes: Sequence[str]) -> list[str]:
    """The subjects, in the given order, whose training samples the model has not forgotten yet."""
    groups = datasets.samples_by_subject(session, dataset_id=model.dataset_id, subject_hashes=list(subject_hashes))
    forgotten = datasets.erased_for_model(session, model_id=model.id)
    return [h for h in subject_hashes if requests.still_to_forget(groups.get(h, ()), erased=forgotten)]


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPurge:
    """How many of the subjects' samples a dataset holds, and how many were purged from its stored files."""

    dataset_id: str
    samples: int
    purged_samples: int


@dataclass(frozen=True)
class ErasureState:
    """An erasure with what is computed from its requests and the datasets."""

    erasure: Erasure
    requests: list[DeletionRequest]  # ordered by model id
    status: str
    due_at: datetime
    finished_at: datetime | None
    dataset_purge: list[DatasetPurge]


def get_erasure(session: Session, *, tenant_id: str, erasure_id: str) -> Erasure:
    """The tenant's erasure, or NotFound."""
    erasure = session.get(Erasure, erasure_id)
    if erasure is None or erasure.tenant_id != tenant_id:
        raise NotFound(f"erasure {erasure_id} not found")
    return erasure


def list_erasures(
    session: Session, *, tenant_id: str, status: str | None = None, cursor: str | None = None, limit: int = 50
) -> Page[Erasure]:
    """The tenant's erasures, newest first, optionally those with one aggregate status."""
    query = select(Erasure).where(Erasure.tenant_id == tenant_id)
    if status:
        counts, status_sql = _status_sql()
        query = query.outerjoin(counts, counts.c.erasure_id == Erasure.id).where(status_sql == status)
    return newest_first(
        session, query, time_column=Erasure.received_at, id_column=Erasure.id, cursor=cursor, limit=limit
    )


def states(session: Session, erasures: Sequence[Erasure]) -> list[ErasureState]:
    """The state of each erasure, in their order (one query for all their requests)."""
    ids = [e.id for e in erasures]
    by_erasure: dict[str, list[DeletionRequest]] = {i: [] for i in ids}
    if ids:
        rows = session.scalars(
            select(DeletionRequest)
            .where(DeletionRequest.erasure_id.in_(ids))
            .order_by(DeletionRequest.model_id, DeletionRequest.id)
        )
        for row in rows:
            by_erasure[row.erasure_id or ""].append(row)
    return [_state(session, e, by_erasure[e.id]) for e in erasures]


def _state(session: Session, erasure: Erasure, rows: list[DeletionRequest]) -> ErasureState:
    status = aggregate_status([r.status for r in rows])
    finished = [r.finished_at for r in rows if r.finished_at is not None]
    if status in ACTIVE_STATUSES:
        finished_at = None
    else:
        finished_at = max(finished) if finished else erasure.received_at
    return ErasureState(
        erasure=erasure,
        requests=rows,
        status=status,
        due_at=min((r.due_at for r in rows), default=requests.gdpr_due_at(erasure.received_at)),
        finished_at=finished_at,
        dataset_purge=dataset_purge(session, erasure),
    )


def close_finished(session: Session, *, erasure_ids: Sequence[str] | None = None, limit: int = 200) -> list[str]:
    """Record the ending event (`erasure.completed`, `.failed` or `.cancelled`) of each erasure whose requests
    have all ended; the ids it closed.

    Each erasure is closed once, by a compare-and-set on `closed_at`, so the workers that finish its
    last requests at the same moment and the reconciler's pass never record two endings. Webhooks
    and dashboards hang off these events; the status itself stays computed from the requests.
    """
    query = select(Erasure).where(Erasure.closed_at.is_(None))
    if erasure_ids is not None:
        query = query.where(Erasure.id.in_(tuple(erasure_ids)))
    open_ = session.scalars(query.order_by(Erasure.received_at).limit(limit)).all()
    closed = []
    for state in states(session, open_):
        if state.status in ACTIVE_STATUSES:
            continue
        erasure, now = state.erasure, utcnow()
        changed = session.execute(
            update(Erasure)
            .where(Erasure.id == erasure.id, Erasure.closed_at.is_(None))
            .values(closed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            continue
        audit.record(
            session,
            tenant_id=erasure.tenant_id,
            actor="worker",
            action=f"erasure.{state.status}",
            resource_type="erasure",
            resource_id=erasure.id,
            now=now,
            data={"erasure_id": erasure.id, "status": state.status, "requests": len(state.requests)},
        )
        closed.append(erasure.id)
    return closed


def dataset_purge(session: Session, erasure: Erasure) -> list[DatasetPurge]:
    """Per dataset within the erasure's restriction: the subjects' samples and how many were purged."""
    query = (
        select(DatasetSample.dataset_id, func.count(), func.count(DatasetSample.purged_at))
        .join(Dataset, Dataset.id == DatasetSample.dataset_id)
        .where(Dataset.tenant_id == erasure.tenant_id)
        .group_by(DatasetSample.dataset_id)
    )
    if erasure.dataset_ids is not None:
        query = query.where(DatasetSample.dataset_id.in_(erasure.dataset_ids))
    if erasure.model_ids is not None:
        query = query.where(
            DatasetSample.dataset_id.in_(select(Model.dataset_id).where(Model.id.in_(erasure.model_ids)))
        )
    # Summed over chunks of the subjects: a bulk erasure names more than one IN list may carry.
    totals: dict[str, list[int]] = {}
    hashes = erasure.subject_hashes
    for start in range(0, len(hashes), BULK_CHUNK):
        chunk = query.where(_among(session, DatasetSample.subject_hash, hashes[start : start + BULK_CHUNK]))
        for dataset_id, samples, purged in session.execute(chunk):
            total = totals.setdefault(dataset_id, [0, 0])
            total[0] += samples
            total[1] += purged
    return [DatasetPurge(dataset_id, *totals[dataset_id]) for dataset_id in sorted(totals)]


# --- per-subject outcome -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelOutcome:
    """The request of an erasure that names a subject for one model, and where it stands."""

    model_id: str
    request_id: str
    status: str
    erased_in_version: int | None  # the version it published, once completed


@dataclass(frozen=True)
class SubjectOutcome:
    """One subject of an erasure: found in a dataset of the tenant or not, and its request per model."""

    subject_hash: str
    found: bool
    models: list[ModelOutcome]


def subject_outcomes(
    session: Session, *, tenant_id: str, erasure_id: str, subject_hashes: Sequence[str]
) -> list[SubjectOutcome]:
    """The outcome of each of `subject_hashes` (a chunk of the erasure's, at most BULK_CHUNK), in their order."""
    found = _found_subjects(session, tenant_id, subject_hashes)
    named: dict[str, list[ModelOutcome]] = {}
    rows = session.execute(
        select(
            DatasetSample.subject_hash,
            DeletionRequest.model_id,
            DeletionRequest.id,
            DeletionRequest.status,
            DeletionRequest.result_version,
        )
        .join(RequestSample, RequestSample.sample_pk == DatasetSample.id)
        .join(DeletionRequest, DeletionRequest.id == RequestSample.request_id)
        .join(Model, Model.id == DeletionRequest.model_id)
        .where(
            DeletionRequest.erasure_id == erasure_id,
            # The model's dataset: so the (dataset, subject) index finds the samples, not a scan of all.
            DatasetSample.dataset_id == Model.dataset_id,
            DatasetSample.subject_hash.in_(subject_hashes),
        )
        .distinct()
        .order_by(DatasetSample.subject_hash, DeletionRequest.model_id)
    )
    for subject, model_id, request_id, status, version in rows:
        erased_in = version if status == COMPLETED else None
        named.setdefault(subject, []).append(ModelOutcome(model_id, request_id, status, erased_in))
    return [SubjectOutcome(h, h in found, named.get(h, [])) for h in subject_hashes]


# --- where is a person? -------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetLocation:
    """A dataset holding samples of the subject (all splits) and their erasure and purge."""

    dataset_id: str
    samples: int
    erased_samples: int
    purged_samples: int


@dataclass(frozen=True)
class ModelLocation:
    """A model trained on the subject's samples, and which of its stored versions still hold them."""

    model_id: str
    dataset_id: str
    current_version: int
    erased_in_version: int | None  # the first version without any of them; None while one is still held
    versions_holding: list[int]  # stored (not purged) versions trained on some of them


@dataclass(frozen=True)
class SubjectLocations:
    """Where a data subject's samples are, or were, in one tenant's datasets and models."""

    subject_hash: str
    datasets: list[DatasetLocation]
    models: list[ModelLocation]


def subject_locations(session: Session, *, tenant_id: str, subject_hash: str) -> SubjectLocations:
    """The tenant's datasets holding the subject's samples, and the models trained on them (empty: nowhere)."""
    held = session.execute(
        select(
            DatasetSample.dataset_id,
            func.count(),
            func.count(DatasetSample.erased_by_request_id),
            func.count(DatasetSample.purged_at),
        )
        .join(Dataset, Dataset.id == DatasetSample.dataset_id)
        .where(Dataset.tenant_id == tenant_id, DatasetSample.subject_hash == subject_hash)
        .group_by(DatasetSample.dataset_id)
        .order_by(DatasetSample.dataset_id)
    ).all()
    train: dict[str, set[int]] = {}
    for pk, dataset_id in session.execute(
        select(DatasetSample.id, DatasetSample.dataset_id).where(
            DatasetSample.dataset_id.in_([row[0] for row in held]),
            DatasetSample.subject_hash == subject_hash,
            DatasetSample.split == "train",
        )
    ):
        train.setdefault(dataset_id, set()).add(pk)
    models = session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.dataset_id.in_(list(train))).order_by(Model.id)
    )
    return SubjectLocations(
        subject_hash=subject_hash,
        datasets=[DatasetLocation(*row) for row in held],
        models=[_model_location(session, m, train[m.dataset_id]) for m in models],
    )


def _model_location(session: Session, model: Model, train_pks: set[int]) -> ModelLocation:
    # The version each of the subject's training samples was first erased in, by the model's completed requests.
    erased_in: dict[int, int] = {}
    for pk, version in session.execute(
        select(RequestSample.sample_pk, DeletionRequest.result_version)
        .join(DeletionRequest, DeletionRequest.id == RequestSample.request_id)
        .where(
            DeletionRequest.model_id == model.id,
            DeletionRequest.status == COMPLETED,
            RequestSample.sample_pk.in_(train_pks),
        )
    ):
        erased_in[pk] = min(version, erased_in.get(pk, version))
    erased_in_version = max(erased_in.values()) if train_pks <= set(erased_in) else None
    versions = session.execute(
        select(ModelVersion.number, ModelVersion.state)
        .where(ModelVersion.model_id == model.id)
        .order_by(ModelVersion.number)
    )
    return ModelLocation(
        model_id=model.id,
        dataset_id=model.dataset_id,
        current_version=model.current_version,
        erased_in_version=erased_in_version,
        versions_holding=[
            number
            for number, state in versions
            if state != "purged" and (erased_in_version is None or number < erased_in_version)
        ],
    )

"""Deletion requests: creation with idempotency, the compare-and-set state machine, publication.

Lifecycle: received → queued → running → completed | failed | cancelled. Every change is one
UPDATE ... WHERE status IN (expected) (and, while running, WHERE lease_token = the executing
attempt's token), followed by its audit event in the same transaction. A redelivered task, a
second relay or a stale worker therefore changes nothing. A running request whose heartbeat is
older than the lease may be taken over by a redelivery (a worker was killed), at most
`max_attempts` times in total. A run hit by a passing fault gives its requests back to the queue
(`release`) without using up an attempt.

Runs on one model are serialised: a claim locks the model's row first (so two claims on one model
never lock each other's requests in opposite orders) and waits its turn (ModelBusy) while another
live run holds the model, so concurrent workers never race each other's publications.
"""

from __future__ import annotations

import calendar
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Row, and_, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, make_transient_to_detached

from ledger import audit, datasets, leases, outbox, ratelimit, registry
from ledger.errors import (
    AlreadyErased,
    Conflict,
    IdempotencyConflict,
    InvalidInput,
    LeaseLost,
    ModelBusy,
    NotFound,
)
from ledger.pagination import Page, newest_first
from ledger.records import Metrics, RunDetails, Verification
from ledger.tables import (
    ACTIVE_STATUSES,
    CANCELLED,
    COMPLETED,
    FAILED,
    QUEUED,
    RECEIVED,
    RUNNING,
    DatasetSample,
    DeletionRequest,
    Model,
    ModelVersion,
    RequestSample,
    new_id,
    utcnow,
)

WORKER = "worker"
REQUESTS = DeletionRequest.__table__
# The columns' scalar defaults, written out: an inserted request's row and its ORM object hold the same values.
REQUEST_DEFAULTS = {c.key: c.default.arg for c in REQUESTS.columns if c.default is not None and c.default.is_scalar}
SampleT = TypeVar("SampleT", DatasetSample, Row)  # an ORM sample, or a row with its id and split
CLAIM_TRIES = 3


def add_calendar_month(moment: datetime, months: int = 1) -> datetime:
    """`moment` plus calendar months, clamped to the last day of a shorter month (Jan 31 → Feb 28)."""
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def gdpr_due_at(received_at: datetime) -> datetime:
    """GDPR Art. 12(3): one calendar month after receipt."""
    return add_calendar_month(received_at, 1)


MAX_EXTENSION_MONTHS = 2  # GDPR Art. 12(3): "extended by two further months where necessary"
OVERDUE, DUE_SOON = "overdue", "due_soon"


@dataclass(frozen=True)
class Target:
    """What a request erases: keyed subject hashes, or sample ids."""

    kind: str  # subjects | samples
    subject_hashes: tuple[str, ...] = ()
    sample_ids: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """Number of subjects or samples named."""
        return len(self.subject_hashes) if self.kind == "subjects" else len(self.sample_ids)


# --- creation -----------------------------------------------------------------------------------


# A replay whose first request was hashed under a since-destroyed tenant key (ledger.tenant_keys) cannot be compared.
KEY_DESTROYED = (
    "this Idempotency-Key was first used with a body hashed under a tenant key that has since been destroyed "
    "(crypto-shredded), so the two bodies cannot be compared; use a new key for a new request"
)


def find_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> DeletionRequest | None:
    """The tenant's request created with this Idempotency-Key, if any."""
    return session.scalar(
        select(DeletionRequest).where(DeletionRequest.tenant_id == tenant_id, DeletionRequest.idempotency_key == key)
    )


def _replay(existing: DeletionRequest, body_hash: str, tenant_key_id: int) -> DeletionRequest:
    if existing.tenant_key_id != tenant_key_id:
        raise IdempotencyConflict(KEY_DESTROYED)
    if existing.body_hash != body_hash:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body; use a new key for a new request"
        )
    return existing


def still_to_forget(samples: Iterable[SampleT], *, erased: Collection[int]) -> list[SampleT]:
    """The samples of `samples` a model must still forget: training samples whose key is not in `erased`.

    The one statement of the forget-set rule: submission refuses a target for which this is empty,
    and the worker unlearns exactly this (`forget_sets`). `erased` comes from
    `datasets.erased_for_model`; the order of `samples` is kept.
    """
    return [s for s in samples if s.split == "train" and s.id not in erased]


def resolve_target(session: Session, *, model: Model, target: Target) -> list[Row]:
    """The samples a request names (all splits) as rows (id, sample_id, subject_hash, split), or NotFound /
    InvalidInput saying which entry is wrong. One query per 500 targets reads them and their erasures."""
    subjects = target.kind == "subjects"
    named = datasets.named_for_model(
        session,
        model_id=model.id,
        dataset_id=model.dataset_id,
        subject_hashes=target.subject_hashes if subjects else None,
        sample_ids=None if subjects else target.sample_ids,
    )
    chosen: list[Row] = []
    if subjects:
        groups: dict[str, list[Row]] = {}
        for row in named.rows:
            groups.setdefault(row.subject_hash, []).append(row)
        unknown = [i for i, h in enumerate(target.subject_hashes) if h not in groups]
        if unknown:
            raise NotFound(
                f"subject_ids{_positions(unknown)}: no such data subject in the model's dataset {model.dataset_id}"
            )
        for i, h in enumerate(target.subject_hashes):
            if not any(s.split == "train" for s in groups[h]):
                raise InvalidInput(
                    f"subject_ids[{i}] has no training samples in dataset {model.dataset_id} "
                    "(only test/holdout samples): the model never learned from this subject"
                )
            if not still_to_forget(groups[h], erased=named.erased):
                raise AlreadyErased(f"subject_ids[{i}] has already been erased from model {model.id}")
            chosen.extend(groups[h])
    else:
        found = {row.sample_id: row for row in named.rows}
        unknown = [i for i, sid in enumerate(target.sample_ids) if sid not in found]
        if unknown:
            raise NotFound(f"sample_ids{_positions(unknown)}: no such sample in the model's dataset {model.dataset_id}")
        for i, sid in enumerate(target.sample_ids):
            sample = found[sid]
            if sample.split != "train":
                raise InvalidInput(
                    f"sample_ids[{i}] is a {sample.split!r} sample; only training samples can be unlearned"
                )
            if not still_to_forget([sample], erased=named.erased):
                raise AlreadyErased(f"sample_ids[{i}] has already been erased from model {model.id}")
            chosen.append(sample)
    return list({s.id: s for s in chosen}.values())


def _positions(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:5])
    return f"[{shown}{', ...' if len(indices) > 5 else ''}]"


def create_request(
    session: Session,
    *,
    tenant_id: str,
    model: Model,
    target: Target,
    method: str,
    parameters: dict[str, Any],
    idempotency_key: str | None,
    body_hash: str,
    tenant_key_id: int,
    actor: str,
    now: datetime | None = None,
    looked_up: bool = False,
) -> tuple[DeletionRequest, bool]:
    """Create a request with its samples, its dispatch row and its audit event; (request, created).

    `target`'s subject hashes and `body_hash` are keyed by the tenant key `tenant_key_id`. A known
    Idempotency-Key with the same body returns the earlier request (created=False); with another
    body it raises IdempotencyConflict. `looked_up`: the caller found no earlier request with the
    key already (`submit`, in the model's query); one may still arrive concurrently.
    """
    if idempotency_key and not looked_up:
        existing = find_by_idempotency_key(session, tenant_id=tenant_id, key=idempotency_key)
        if existing is not None:
            return _replay(existing, body_hash, tenant_key_id), False
    samples = resolve_target(session, model=model, target=target)
    values = _request_values(
        tenant_id=tenant_id,
        model_id=model.id,
        target=target,
        method=method,
        parameters=parameters,
        idempotency_key=idempotency_key,
        body_hash=body_hash,
        tenant_key_id=tenant_key_id,
        now=now or utcnow(),
    )
    request = _insert_unless_replayed(session, values)
    if request is None:  # the same key arrived concurrently and committed first
        existing = find_by_idempotency_key(session, tenant_id=tenant_id, key=idempotency_key or "")
        if existing is None:
            raise RuntimeError(f"Idempotency-Key {idempotency_key!r} conflicted, yet no request holds it")
        return _replay(existing, body_hash, tenant_key_id), False
    session.execute(insert(RequestSample.__table__), [{"request_id": request.id, "sample_pk": s.id} for s in samples])
    announce(
        session,
        request,
        actor=actor,
        num_samples=len(samples),
        num_train_samples=sum(s.split == "train" for s in samples),
        data={"subject_hashes": list(target.subject_hashes)},
    )
    return request, True


def _insert_unless_replayed(session: Session, values: dict[str, Any]) -> DeletionRequest | None:
    """INSERT the request, or nothing (None) when the tenant already has one with its Idempotency-Key.

    ON CONFLICT DO NOTHING instead of a savepoint around a plain INSERT: one round trip, and on
    Postgres a concurrent insert of the same key makes this one wait for its outcome (nothing if it
    commits, the insert if it rolls back). A Core INSERT: the ORM object is built from the very
    values inserted and joins the session as a loaded, persistent row, with no unit of work to run.
    """
    values = REQUEST_DEFAULTS | values
    dialect = session.get_bind().dialect.name
    statement = (
        (postgresql.insert if dialect == "postgresql" else sqlite.insert)(REQUESTS)
        .values(values)
        .on_conflict_do_nothing(index_elements=[REQUESTS.c.tenant_id, REQUESTS.c.idempotency_key])
        .returning(REQUESTS.c.id)
    )
    if session.execute(statement).first() is None:
        return None
    request = DeletionRequest(**(dict.fromkeys(REQUESTS.columns.keys()) | values))
    make_transient_to_detached(request)
    session.add(request)
    return request


def new_request(*, erasure_id: str | None = None, **fields: Any) -> DeletionRequest:
    """A received request row (not added), due one calendar month after `now`; `fields` as `_request_values`."""
    return DeletionRequest(**_request_values(**fields), erasure_id=erasure_id)


def _request_values(
    *,
    tenant_id: str,
    model_id: str,
    target: Target,
    method: str,
    parameters: dict[str, Any],
    idempotency_key: str | None,
    body_hash: str,
    tenant_key_id: int,
    now: datetime,
) -> dict[str, Any]:
    """The columns of a received request, due one calendar month after `now`."""
    return {
        "id": new_id(),
        "tenant_id": tenant_id,
        "model_id": model_id,
        "status": RECEIVED,
        "idempotency_key": idempotency_key,
        "body_hash": body_hash,
        "tenant_key_id": tenant_key_id,
        "target_kind": target.kind,
        "subject_hashes": list(target.subject_hashes),
        "num_targets": target.count,
        "method": method,
        "parameters": parameters,
        "received_at": now,
        "due_at": gdpr_due_at(now),
        "updated_at": now,
    }


def announce(
    session: Session,
    request: DeletionRequest,
    *,
    actor: str,
    num_samples: int,
    num_train_samples: int,
    data: dict[str, Any],
) -> None:
    """The new request's dispatch row and its `deletion_request.received` event (with `data` added)."""
    outbox.enqueue(session, task_name=outbox.ERASURE_TASK, payload={"request_id": request.id})
    audit.record(
        session,
        tenant_id=request.tenant_id,
        actor=actor,
        action="deletion_request.received",
        resource_type="deletion_request",
        resource_id=request.id,
        model_id=request.model_id,
        request_id=request.id,
        now=request.received_at,
        data={
            "target_kind": request.target_kind,
            "num_targets": request.num_targets,
            "num_samples": num_samples,
            "num_train_samples": num_train_samples,
            "method": request.method,
            "due_at": request.due_at.isoformat(),
            **data,
        },
    )


def submit(
    session: Session,
    *,
    tenant_id: str,
    api_key_id: str,
    model_id: str,
    target: Target,
    method: str,
    parameters: dict[str, Any],
    idempotency_key: str | None,
    body_hash: str,
    tenant_key_id: int,
    actor: str,
    per_minute: int,
    burst: int,
) -> tuple[DeletionRequest, bool]:
    """A submission through the API: `create_request` on the tenant's model, paid with one rate-limit token.

    (request, created) as create_request. NotFound for a model the tenant lacks, InvalidInput and
    IdempotencyConflict as create_request: these and replays take no token. RateLimited when the
    key's bucket (`per_minute`, `burst`) is empty: the request is already added, so the caller must
    roll back (the API's session does, on any error), which also gives back the bucket's row.
    """
    model, earlier = _model_and_earlier(
        session, tenant_id=tenant_id, model_id=model_id, idempotency_key=idempotency_key
    )
    if earlier is not None:
        return _replay(earlier, body_hash, tenant_key_id), False
    request, created = create_request(
        session,
        tenant_id=tenant_id,
        model=model,
        target=target,
        method=method,
        parameters=parameters,
        idempotency_key=idempotency_key,
        body_hash=body_hash,
        tenant_key_id=tenant_key_id,
        actor=actor,
        looked_up=True,
    )
    if created:
        # Last in the transaction: the key's bucket row stays locked only until the commit, not for the
        # whole submission (taken first, one key's submissions queued on that row).
        ratelimit.charge(session, api_key_id=api_key_id, per_minute=per_minute, burst=burst)
    return request, created


def _model_and_earlier(
    session: Session, *, tenant_id: str, model_id: str, idempotency_key: str | None
) -> tuple[Model, DeletionRequest | None]:
    """The tenant's model (NotFound as `registry.get_model`) and its request with this Idempotency-Key, if any:
    one query for what `registry.get_model` and `find_by_idempotency_key` would ask in two."""
    if not idempotency_key:
        return registry.get_model(session, tenant_id=tenant_id, model_id=model_id), None
    earlier = and_(DeletionRequest.tenant_id == tenant_id, DeletionRequest.idempotency_key == idempotency_key)
    row = session.execute(
        select(Model, DeletionRequest).outerjoin(DeletionRequest, earlier).where(Model.id == model_id)
    ).first()
    if row is None or row.Model.tenant_id != tenant_id:
        raise NotFound(f"model {model_id} not found")
    return row.Model, row.DeletionRequest


# --- reading ------------------------------------------------------------------------------------


def get_request(session: Session, *, tenant_id: str, request_id: str) -> DeletionRequest:
    """The tenant's request, or NotFound."""
    request = session.get(DeletionRequest, request_id)
    if request is None or request.tenant_id != tenant_id:
        raise NotFound(f"deletion request {request_id} not found")
    return request


def load(session: Session, *, request_id: str) -> DeletionRequest | None:
    """A request by id, re-read from the database (worker side, no tenant check)."""
    return session.get(DeletionRequest, request_id, populate_existing=True)


def deadline_condition(deadline: str, *, now: datetime, due_soon: timedelta):
    """SQL condition: open requests past their deadline (overdue) or within `due_soon` of it (due_soon)."""
    open_ = DeletionRequest.status.in_(ACTIVE_STATUSES)
    if deadline == OVERDUE:
        return and_(open_, DeletionRequest.due_at < now)
    return and_(open_, DeletionRequest.due_at >= now, DeletionRequest.due_at < now + due_soon)


def list_requests(
    session: Session,
    *,
    tenant_id: str,
    status: str | None = None,
    model_id: str | None = None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    deadline: str | None = None,
    due_soon: timedelta = timedelta(days=7),
    cursor: str | None = None,
    limit: int = 50,
) -> Page[DeletionRequest]:
    """The tenant's requests, newest first, filtered (deadline: overdue | due_soon), one page at a time."""
    query = select(DeletionRequest).where(DeletionRequest.tenant_id == tenant_id)
    if deadline:
        query = query.where(deadline_condition(deadline, now=utcnow(), due_soon=due_soon))
    if status:
        query = query.where(DeletionRequest.status == status)
    if model_id:
        query = query.where(DeletionRequest.model_id == model_id)
    if received_after:
        query = query.where(DeletionRequest.received_at >= received_after)
    if received_before:
        query = query.where(DeletionRequest.received_at < received_before)
    return newest_first(
        session,
        query,
        time_column=DeletionRequest.received_at,
        id_column=DeletionRequest.id,
        cursor=cursor,
        limit=limit,
    )


def result_versions(session: Session, *, requests: Sequence[DeletionRequest]) -> list[ModelVersion | None]:
    """The version each of `requests` published (None if it has not), in their order; one query for all."""
    wanted = {(r.model_id, r.result_version) for r in requests if r.result_version is not None}
    query = select(ModelVersion).where(tuple_(ModelVersion.model_id, ModelVersion.number).in_(wanted))
    produced = {(v.model_id, v.number): v for v in session.scalars(query)} if wanted else {}
    return [produced.get((r.model_id, r.result_version)) for r in requests]


def request_samples(session: Session, *, request_id: str) -> list[DatasetSample]:
    """The samples a request names, in dataset order."""
    return _named_samples(session, request_ids=[request_id])[request_id]


def forget_sets(session: Session, *, request_ids: list[str], model_id: str) -> dict[str, list[DatasetSample]]:
    """Each request id → the samples it names that `model_id` must still forget (`still_to_forget`), in dataset order.

    Keys follow `request_ids`; a request whose samples were all erased by earlier completed requests
    on the model (or an unknown id) maps to an empty list. One query for the samples of all of them.
    """
    erased = datasets.erased_for_model(session, model_id=model_id)
    return {
        r: still_to_forget(samples, erased=erased)
        for r, samples in _named_samples(session, request_ids=request_ids).items()
    }


def _named_samples(session: Session, *, request_ids: Sequence[str]) -> dict[str, list[DatasetSample]]:
    named: dict[str, list[DatasetSample]] = {r: [] for r in request_ids}
    rows = session.execute(
        select(RequestSample.request_id, DatasetSample)
        .join(RequestSample, RequestSample.sample_pk == DatasetSample.id)
        .where(RequestSample.request_id.in_(tuple(named)))
        .order_by(DatasetSample.row)
    )
    for request_id, sample in rows:
        named[request_id].append(sample)
    return named


# --- transitions --------------------------------------------------------------------------------


def _transition(
    session: Session,
    *,
    request_id: str,
    expect: Sequence[str],
    to: str,
    actor: str,
    token: str | None = None,
    values: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Compare-and-set the status (and the lease token, when given); audit it; False if it did not apply."""
    now = utcnow()
    conditions = [DeletionRequest.id == request_id, DeletionRequest.status.in_(tuple(expect))]
    if token is not None:
        conditions.append(DeletionRequest.lease_token == token)
    changed = session.execute(
        update(DeletionRequest)
        .where(*conditions)
        .values(status=to, updated_at=now, **(values or {}))
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        return False
    request = load(session, request_id=request_id)
    assert request is not None
    audit.record(
        session,
        tenant_id=request.tenant_id,
        actor=actor,
        action=f"deletion_request.{to}",
        resource_type="deletion_request",
        resource_id=request_id,
        model_id=request.model_id,
        request_id=request_id,
        now=now,
        data={"from": list(expect) if len(expect) > 1 else expect[0], **(data or {})},
    )
    return True


def mark_queued(session: Session, *, request_id: str, actor: str = "relay") -> bool:
    """received → queued, when a relay hands the request to an executor."""
    return _transition(
        session, request_id=request_id, expect=(RECEIVED,), to=QUEUED, actor=actor, values={"queued_at": utcnow()}
    )


def cancel(session: Session, *, tenant_id: str, request_id: str, actor: str) -> DeletionRequest:
    """Cancel now if not started; if running, ask the worker to stop at its next check."""
    request = get_request(session, tenant_id=tenant_id, request_id=request_id)
    if _transition(
        session,
        request_id=request_id,
        expect=(RECEIVED, QUEUED),
        to=CANCELLED,
        actor=actor,
        values={"finished_at": utcnow(), "phase": None},
    ):
        return load(session, request_id=request_id)  # type: ignore[return-value]
    changed = session.execute(
        update(DeletionRequest)
        .where(
            DeletionRequest.id == request_id,
            DeletionRequest.status == RUNNING,
            DeletionRequest.cancel_requested.is_(False),
        )
        .values(cancel_requested=True, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    request = load(session, request_id=request_id)
    assert request is not None
    if changed:
        audit.record(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="deletion_request.cancel_requested",
            resource_type="deletion_request",
            resource_id=request_id,
            model_id=request.model_id,
            request_id=request_id,
        )
        return request
    if request.status == RUNNING or request.status == CANCELLED:
        return request  # already asked, or already cancelled: cancelling is idempotent
    raise Conflict(f"deletion request {request_id} is {request.status} and can no longer be cancelled")


def extend_deadline(
    session: Session,
    *,
    tenant_id: str,
    request_id: str,
    months: int,
    reason: str,
    reason_hash: str,
    actor: str,
    now: datetime | None = None,
) -> DeletionRequest:
    """Extend an open request's deadline once, by one or two further months, with the reason.

    GDPR Art. 12(3): the controller tells the subject about an extension, with its reasons,
    within one month of receipt; so it must be recorded before the original deadline. The reason
    stays in the request row (it may name a person); the audit chain keeps its keyed hash.
    """
    if not 1 <= months <= MAX_EXTENSION_MONTHS:
        raise InvalidInput(f"months must be 1 or {MAX_EXTENSION_MONTHS}")
    request = get_request(session, tenant_id=tenant_id, request_id=request_id)
    now = now or utcnow()
    if request.status not in ACTIVE_STATUSES:
        raise Conflict(
            f"deletion request {request_id} is {request.status}; only an open request's deadline can be extended"
        )
    if request.extension is not None:
        raise Conflict(
            f"deletion request {request_id} was already extended by {request.extension['months']} month(s); "
            f"GDPR allows one extension of at most {MAX_EXTENSION_MONTHS} months"
        )
    original = gdpr_due_at(request.received_at)
    if now >= original:
        raise Conflict(f"the deadline can only be extended within one month of receipt (until {original.isoformat()})")
    previous, due_at = request.due_at, add_calendar_month(request.received_at, 1 + months)
    extension = {
        "months": months,
        "reason": reason,
        "extended_at": now.isoformat(),
        "previous_due_at": previous.isoformat(),
    }
    changed = session.execute(
        update(DeletionRequest)
        .where(
            DeletionRequest.id == request_id,
            DeletionRequest.status.in_(ACTIVE_STATUSES),
            DeletionRequest.due_at == previous,
        )
        .values(due_at=due_at, extension=extension, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        raise Conflict(f"deletion request {request_id} changed meanwhile; read it again")
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="deletion_request.deadline_extended",
        resource_type="deletion_request",
        resource_id=request_id,
        model_id=request.model_id,
        request_id=request_id,
        now=now,
        data={"months": months, "previous_due_at": previous, "due_at": due_at, "reason_hash": reason_hash},
    )
    return load(session, request_id=request_id)  # type: ignore[return-value]


def claim(
    session: Session, *, request_id: str, token: str, lease_seconds: float, max_attempts: int
) -> DeletionRequest | None:
    """Start (or take over) executing a request; None when there is nothing to do.

    Nothing to do: the request is finished or cancelled, or another execution holds a live lease.
    ModelBusy when another live run holds the request's model (try again later). A request that
    already used `max_attempts` executions is failed instead of started. A compare-and-set lost to
    a concurrent change that leaves the request startable (the relay marking it queued as the
    worker picks it up) is retried on the new state.
    """
    first = load(session, request_id=request_id)
    if first is None or first.status not in (RECEIVED, QUEUED, RUNNING):
        return None
    lock_model(session, model_id=first.model_id)
    for _ in range(CLAIM_TRIES):
        request = load(session, request_id=request_id)
        if request is None or request.status not in (RECEIVED, QUEUED, RUNNING):
            return None
        now = leases.db_now(session)
        stale = request.status == RUNNING
        if leases.lease_is_live(request, lease_seconds=lease_seconds, now=now):
            return None  # someone is working on it
        if request.attempts >= max_attempts:
            _transition(
                session,
                request_id=request_id,
                expect=(request.status,),
                to=FAILED,
                actor=WORKER,
                values={
                    "finished_at": now,
                    "error_code": "attempts_exhausted",
                    "lease_token": None,
                    "error_message": f"the request was interrupted {request.attempts} times; giving up",
                },
                data={"attempts": request.attempts},
            )
            return None
        holder = model_run(session, model_id=request.model_id, lease_seconds=lease_seconds, now=now)
        if holder is not None:
            raise ModelBusy(f"model {request.model_id} is being unlearned by the run of request {holder}")
        if leases.take_lease(session, DeletionRequest, request, token=token, now=now, batch_id=None):
            break
    else:
        return None
    request = load(session, request_id=request_id)
    assert request is not None
    audit.record(
        session,
        tenant_id=request.tenant_id,
        actor=WORKER,
        action="deletion_request.running",
        resource_type="deletion_request",
        resource_id=request_id,
        model_id=request.model_id,
        request_id=request_id,
        now=now,
        data={"attempt": request.attempts, "resumed": stale},
    )
    return request


def lock_model(session: Session, *, model_id: str) -> None:
    """Hold the model's row until the transaction ends: claims on one model take their turns (Postgres; SQLite
    serialises every write anyway)."""
    session.execute(select(Model.id).where(Model.id == model_id).with_for_update())


def model_run(session: Session, *, model_id: str, lease_seconds: float, now: datetime) -> str | None:
    """The id of a request whose live run holds the model (its lease younger than `lease_seconds`), if any."""
    return session.scalar(
        select(func.coalesce(DeletionRequest.batch_id, DeletionRequest.id))
        .where(
            DeletionRequest.model_id == model_id,
            DeletionRequest.status == RUNNING,
            DeletionRequest.heartbeat_at > now - timedelta(seconds=lease_seconds),
        )
        .limit(1)
    )


def claim_siblings(
    session: Session, *, leader: DeletionRequest, lease_seconds: float, max_attempts: int, limit: int
) -> list[DeletionRequest]:
    """Claim up to `limit` requests that can share the leader's unlearning run (coalescing).

    Siblings are waiting requests (received, queued, or running with a stale heartbeat) on the
    same model with the same method and parameters, oldest first. Each is claimed under the
    leader's lease token with its own compare-and-set and its own audit event, so each keeps its
    record; the leader's id becomes their `batch_id`.
    """
    if limit <= 0:
        return []
    now = leases.db_now(session)
    waiting = or_(
        DeletionRequest.status.in_((RECEIVED, QUEUED)),
        and_(DeletionRequest.status == RUNNING, DeletionRequest.heartbeat_at < now - timedelta(seconds=lease_seconds)),
    )
    candidates = session.scalars(
        select(DeletionRequest)
        .where(
            DeletionRequest.model_id == leader.model_id,
            DeletionRequest.id != leader.id,
            waiting,
            DeletionRequest.method == leader.method,
            DeletionRequest.cancel_requested.is_(False),
            DeletionRequest.attempts < max_attempts,
        )
        .order_by(DeletionRequest.received_at, DeletionRequest.id)
        .limit(4 * limit)  # parameters are compared here, not in SQL (JSON equality differs by backend)
    ).all()
    claimed: list[DeletionRequest] = []
    for candidate in candidates:
        if len(claimed) == limit:
            break
        if candidate.parameters != leader.parameters:
            continue
        changed = session.execute(
            update(DeletionRequest)
            .where(
                DeletionRequest.id == candidate.id,
                DeletionRequest.status == candidate.status,
                DeletionRequest.attempts == candidate.attempts,
            )
            .values(
                status=RUNNING,
                lease_token=leader.lease_token,
                heartbeat_at=now,
                attempts=candidate.attempts + 1,
                started_at=func.coalesce(DeletionRequest.started_at, now),
                phase="preparing",
                batch_id=leader.id,
                progress_step=0,
                progress_total=0,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            continue
        sibling = load(session, request_id=candidate.id)
        assert sibling is not None
        audit.record(
            session,
            tenant_id=sibling.tenant_id,
            actor=WORKER,
            action="deletion_request.running",
            resource_type="deletion_request",
            resource_id=sibling.id,
            model_id=sibling.model_id,
            request_id=sibling.id,
            now=now,
            data={"attempt": sibling.attempts, "resumed": candidate.status == RUNNING, "batch_id": leader.id},
        )
        claimed.append(sibling)
    if claimed:
        session.execute(
            update(DeletionRequest)
            .where(DeletionRequest.id == leader.id)
            .values(batch_id=leader.id)
            .execution_options(synchronize_session=False)
        )
        leader.batch_id = leader.id
    return claimed


def report(session: Session, *, request_ids: Sequence[str], token: str, **values: Any) -> None:
    """Write progress or results of the executing attempt to each of its requests (also their heartbeat).

    LeaseLost if any of them is not held by this execution any more.
    """
    if heartbeat(session, request_ids=request_ids, token=token, **values) != len(request_ids):
        raise LeaseLost(f"deletion request(s) {', '.join(request_ids)} no longer held by this execution")


def heartbeat(session: Session, *, request_ids: Sequence[str], token: str, **values: Any) -> int:
    """Renew the lease (on the database's clock) of those of `request_ids` this execution holds; how many."""
    return leases.renew(session, DeletionRequest, request_ids, token=token, now=leases.db_now(session), **values)


def cancel_requested(session: Session, *, request_ids: Sequence[str]) -> set[str]:
    """Those of `request_ids` someone asked to cancel (or that are no longer running)."""
    rows = session.execute(
        select(DeletionRequest.id, DeletionRequest.status, DeletionRequest.cancel_requested).where(
            DeletionRequest.id.in_(tuple(request_ids))
        )
    ).all()
    running = {row[0] for row in rows if row[1] == RUNNING and not row[2]}
    return set(request_ids) - running


def finish(
    session: Session,
    *,
    request_id: str,
    token: str,
    to: str,
    error_code: str | None = None,
    error_message: str | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """running → failed | cancelled for the executing attempt."""
    assert to in (FAILED, CANCELLED)
    return _transition(
        session,
        request_id=request_id,
        expect=(RUNNING,),
        to=to,
        actor=WORKER,
        token=token,
        values={
            "finished_at": utcnow(),
            "error_code": error_code,
            "error_message": error_message,
            "lease_token": None,
            "phase": None,
        },
        data={"error_code": error_code, **(data or {})},
    )


def release(
    session: Session,
    *,
    request_id: str,
    token: str,
    reason: str,
    error: str | None,
    retry_in: float,
    retry_cap: float,
    give_back_attempt: bool,
    count_retry: bool,
    max_retries: int,
) -> str | None:
    """running → queued for an execution that stops without an ending of its own; the status it left, or None.

    The request goes back to the queue with a dispatch row due in `retry_in` seconds, doubled for
    each earlier retry up to `retry_cap` when `count_retry`. A passing fault (`count_retry`) adds
    one to `retries` and gives the attempt back (`give_back_attempt`):
    nothing was interrupted that the request can be blamed for; after `max_retries` of them it is
    failed (`transient_error`) with the last error. A request someone asked to cancel is cancelled
    instead. None when this execution does not hold it any more.
    """
    request = load(session, request_id=request_id)
    if request is None or request.status != RUNNING or request.lease_token != token:
        return None
    if request.cancel_requested:
        return CANCELLED if finish(session, request_id=request_id, token=token, to=CANCELLED) else None
    if count_retry and request.retries >= max_retries:
        message = f"a passing fault recurred {request.retries + 1} times; giving up (last: {error or reason})"
        done = finish(
            session,
            request_id=request_id,
            token=token,
            to=FAILED,
            error_code="transient_error",
            error_message=message,
            data={"retries": request.retries, "reason": reason},
        )
        return FAILED if done else None
    if count_retry:
        retry_in = leases.backoff(request.retries, first=retry_in, cap=retry_cap)
    released = _transition(
        session,
        request_id=request_id,
        expect=(RUNNING,),
        to=QUEUED,
        actor=WORKER,
        token=token,
        values={
            "lease_token": None,
            "phase": None,
            "batch_id": None,
            "progress_step": 0,
            "progress_total": 0,
            "attempts": request.attempts - 1 if give_back_attempt else request.attempts,
            "retries": request.retries + 1 if count_retry else request.retries,
        },
        data={
            "reason": reason,
            "error": error,
            "retry_in": round(retry_in, 1),
            "retries": request.retries + count_retry,
        },
    )
    if not released:
        return None
    outbox.enqueue(session, task_name=outbox.ERASURE_TASK, payload={"request_id": request_id}, delay=retry_in)
    return QUEUED


@dataclass(frozen=True)
class Outcome:
    """What one request of a run records on completion: its own metrics, verdict and run details."""

    metrics_before: Metrics
    metrics_after: Metrics
    verification: Verification
    details: RunDetails


def complete(
    session: Session,
    *,
    token: str,
    model: Model,
    base: ModelVersion,
    outcomes: dict[str, Outcome],
    sha256: str,
    size_bytes: int,
    storage_key: str,
) -> ModelVersion:
    """Publish one new version for the run and complete each of its requests, in one transaction.

    `outcomes` maps request id → Outcome, the run's leader first (it is the version's producing
    request). Each request gets its samples marked erased and its completion event. Raises
    StaleBase (the model moved on: redo on the new version) or LeaseLost (not ours any more);
    the caller rolls back either way, so nothing is half-published.
    """
    leader_id = next(iter(outcomes))
    version = registry.publish_version(
        session,
        model=model,
        base=base,
        request_id=leader_id,
        sha256=sha256,
        size_bytes=size_bytes,
        storage_key=storage_key,
        metrics=outcomes[leader_id].metrics_after,
        actor=WORKER,
    )
    now = utcnow()
    for request_id, outcome in outcomes.items():
        request = load(session, request_id=request_id)
        assert request is not None
        sample_pks = select(RequestSample.sample_pk).where(RequestSample.request_id == request_id)
        erased = session.execute(
            update(DatasetSample)
            .where(DatasetSample.id.in_(sample_pks), DatasetSample.erased_by_request_id.is_(None))
            .values(erased_by_request_id=request_id, erased_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        audit.record(
            session,
            tenant_id=request.tenant_id,
            actor=WORKER,
            action="samples.erased",
            resource_type="dataset",
            resource_id=model.dataset_id,
            model_id=model.id,
            request_id=request_id,
            now=now,
            data={"newly_erased": erased, "version": version.number},
        )
        batch = {"batch_id": request.batch_id, "batch_size": len(outcomes)} if len(outcomes) > 1 else {}
        if not _transition(
            session,
            request_id=request_id,
            expect=(RUNNING,),
            to=COMPLETED,
            actor=WORKER,
            token=token,
            values={
                "finished_at": now,
                "lease_token": None,
                "phase": None,
                "metrics_before": outcome.metrics_before,
                "metrics_after": outcome.metrics_after,
                "verification": outcome.verification,
                "details": outcome.details,
                "base_version": base.number,
                "result_version": version.number,
            },
            data={
                "version": version.number,
                "sha256": sha256,
                "verification_passed": outcome.verification.passed,
                **batch,
            },
        ):
            raise LeaseLost(f"deletion request {request_id} is no longer held by this execution")
    return version


# --- reconciliation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconciled:
    """What one reconciler pass did: ids requeued and ids failed."""

    requeued: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


def reconcile(
    session: Session,
    *,
    lease_seconds: float,
    queued_after: float,
    max_attempts: int,
    limit: int = 100,
    now: datetime | None = None,
) -> Reconciled:
    """Find requests whose work was interrupted and dispatch them again, at most `max_attempts` times.

    Interrupted: running with a heartbeat older than the lease (its worker was killed or lost the
    database), or queued for longer than `queued_after` (the broker lost the message, e.g. Redis
    restarted empty). Each is dispatched again through a new outbox row; a request that was
    already executed or requeued `max_attempts` times is failed with the reason instead. A request
    is not requeued twice within one lease, and the job's compare-and-set makes any duplicate
    message a no-op, so concurrent reconcilers are harmless.
    """
    now = now or leases.db_now(session)
    rows = leases.interrupted(
        session,
        DeletionRequest,
        lease_seconds=lease_seconds,
        queued_after=queued_after,
        now=now,
        limit=limit,
        order_by=DeletionRequest.received_at,
    )
    requeued, failed = [], []
    for request in rows:
        reason, interruptions = leases.interruption(request)
        if interruptions >= max_attempts:
            message = f"the request was interrupted {interruptions} times (last: {reason.replace('_', ' ')}); giving up"
            if _transition(
                session,
                request_id=request.id,
                expect=(request.status,),
                to=FAILED,
                actor="reconciler",
                values={
                    "finished_at": now,
                    "error_code": "attempts_exhausted",
                    "error_message": message,
                    "lease_token": None,
                    "phase": None,
                },
                data={"attempts": request.attempts, "requeues": request.requeues, "reason": reason},
            ):
                failed.append(request.id)
            continue
        if not leases.count_requeue(session, DeletionRequest, request, now=now):
            continue  # it moved meanwhile (a heartbeat, another reconciler)
        outbox.enqueue(session, task_name=outbox.ERASURE_TASK, payload={"request_id": request.id})
        audit.record(
            session,
            tenant_id=request.tenant_id,
            actor="reconciler",
            action="deletion_request.requeued",
            resource_type="deletion_request",
            resource_id=request.id,
            model_id=request.model_id,
            request_id=request.id,
            now=now,
            data={"reason": reason, "status": request.status, "requeue": request.requeues + 1},
        )
        requeued.append(request.id)
    return Reconciled(tuple(requeued), tuple(failed))

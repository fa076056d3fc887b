"""Reference-model sets of the likelihood-ratio audit tier: queueing, the compare-and-set lifecycle, refresh.

A model lineage has K reference ("shadow") models, trained with its stored recipe on random halves
of its training data (AUDIT.md); a set is one such training. Lifecycle:
queued → running → ready | failed | cancelled, and ready → superseded once a newer set of the same
model is ready. At most one set per model is queued or running: queueing while one is returns it.

Sets are queued when a model with a recipe is registered, on demand by an admin, and by the erasure
job once enough samples were erased since the ready set's training started (`queue_refresh_if_due`):
a set never trains on samples erased before it started, and refreshing is how sets trained before
an erasure are retired (superseded sets' files are then purged, ledger.retention).

Execution follows the deletion requests' pattern (ledger.requests): the job claims a set with a
lease token (a redelivery after the heartbeat went stale takes it over, at most `max_attempts`
times), every write of the job is a compare-and-set on that token and renews the heartbeat, and a
periodic reconciler dispatches interrupted sets again. Each change has its audit event.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from ledger import audit, datasets, leases, outbox, registry
from ledger.errors import Conflict, InvalidInput, LeaseLost
from ledger.requests import Reconciled
from ledger.tables import AuditReferenceSet, DatasetSample, Model, new_id, utcnow

QUEUED, RUNNING, READY = "queued", "running", "ready"
FAILED, CANCELLED, SUPERSEDED = "failed", "cancelled", "superseded"
ACTIVE_STATUSES = (QUEUED, RUNNING)
STATUSES = (QUEUED, RUNNING, READY, FAILED, CANCELLED, SUPERSEDED)
REGISTRATION, ON_DEMAND, REFRESH = "registration", "on_demand", "refresh"
REASONS = (REGISTRATION, ON_DEMAND, REFRESH)
MIN_COUNT, MAX_COUNT = 2, 64
LIKELIHOOD_RATIO, RANK = "likelihood_ratio", "rank"  # the audit tier a model's erasures get
NONE = "none"  # audit status of a model that never had a set
WORKER = "worker"
SEED_BOUND = 2**31  # seeds fit the INTEGER column


class NoRecipe(Conflict):
    """The model was registered without its training recipe: reference models cannot be trained for it."""

    code = "no_recipe"


def new_seed() -> int:
    """A fresh seed for a set's halves and initialisations."""
    return secrets.randbelow(SEED_BOUND)


def _record(
    session: Session,
    ref: AuditReferenceSet,
    *,
    action: str,
    actor: str,
    now: datetime | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    audit.record(
        session,
        tenant_id=ref.tenant_id,
        actor=actor,
        action=f"audit_reference_set.{action}",
        resource_type="audit_reference_set",
        resource_id=ref.id,
        model_id=ref.model_id,
        now=now,
        data=data,
    )


# --- reading ------------------------------------------------------------------------------------


def load(session: Session, *, set_id: str) -> AuditReferenceSet | None:
    """A set by id, re-read from the database (worker side, no tenant check)."""
    return session.get(AuditReferenceSet, set_id, populate_existing=True)


def _newest(session: Session, model_id: str, statuses: Sequence[str] | None = None) -> AuditReferenceSet | None:
    query = select(AuditReferenceSet).where(AuditReferenceSet.model_id == model_id)
    if statuses is not None:
        query = query.where(AuditReferenceSet.status.in_(tuple(statuses)))
    return session.scalar(query.order_by(AuditReferenceSet.created_at.desc(), AuditReferenceSet.id.desc()).limit(1))


def ready_set(session: Session, *, model_id: str) -> AuditReferenceSet | None:
    """The newest `ready` set of the model: the one its audits read (None: the rank tier)."""
    return _newest(session, model_id, (READY,))


def active_set(session: Session, *, model_id: str) -> AuditReferenceSet | None:
    """The model's queued or running set, if any (there is at most one)."""
    return _newest(session, model_id, ACTIVE_STATUSES)


@dataclass(frozen=True)
class ReferenceStatus:
    """Where a model's reference models stand: its newest set, and the ready set its audits read."""

    latest: AuditReferenceSet | None
    in_use: AuditReferenceSet | None

    @property
    def tier(self) -> str:
        """The audit tier the model's erasures get now: likelihood_ratio with a ready set, else rank."""
        return LIKELIHOOD_RATIO if self.in_use is not None else RANK

    @property
    def audit_status(self) -> str:
        """The newest set's status (none | queued | running | ready | failed | cancelled)."""
        if self.latest is None:
            return NONE
        # Only a newer ready set supersedes one, so the newest is never superseded; kept total anyway.
        return READY if self.latest.status == SUPERSEDED else self.latest.status


def status(session: Session, *, model_id: str) -> ReferenceStatus:
    """The model's reference status (the caller checked the model's tenant)."""
    return ReferenceStatus(latest=_newest(session, model_id), in_use=ready_set(session, model_id=model_id))


def statuses(session: Session, *, model_ids: Sequence[str]) -> dict[str, ReferenceStatus]:
    """`status` of each of `model_ids` (every id is a key), in two queries for the whole list."""
    out = {m: ReferenceStatus(None, None) for m in model_ids}
    if not out:
        return out
    ids = tuple(out)
    newest = (
        select(AuditReferenceSet.model_id, func.max(AuditReferenceSet.created_at).label("created_at"))
        .where(AuditReferenceSet.model_id.in_(ids))
        .group_by(AuditReferenceSet.model_id)
        .subquery()
    )
    latest = {
        r.model_id: r
        for r in session.scalars(
            select(AuditReferenceSet)
            .join(
                newest,
                and_(
                    AuditReferenceSet.model_id == newest.c.model_id,
                    AuditReferenceSet.created_at == newest.c.created_at,
                ),
            )
            .order_by(AuditReferenceSet.id)
        )
    }
    ready = {
        r.model_id: r
        for r in session.scalars(
            select(AuditReferenceSet)
            .where(AuditReferenceSet.model_id.in_(ids), AuditReferenceSet.status == READY)
            .order_by(AuditReferenceSet.created_at, AuditReferenceSet.id)
        )
    }
    return {m: ReferenceStatus(latest.get(m), ready.get(m)) for m in ids}


def erased_sample_ids(session: Session, *, dataset_id: str) -> dict[int, str]:
    """{row: sample id} of every erased sample of the dataset: rows a new set must not train on."""
    rows = session.execute(
        select(DatasetSample.row, DatasetSample.sample_id).where(
            DatasetSample.dataset_id == dataset_id, DatasetSample.erased_by_request_id.is_not(None)
        )
    )
    return {row: sample_id for row, sample_id in rows}


# --- queueing -----------------------------------------------------------------------------------


def queue(
    session: Session,
    *,
    model: Model,
    count: int,
    reason: str,
    actor: str,
    seed: int | None = None,
) -> tuple[AuditReferenceSet, bool]:
    """Queue a training of `count` reference models for `model` with its dispatch row and audit event; (set, created).

    Idempotent: while a set of the model is queued or running, that set is returned (created=False).
    NoRecipe when the model has no training recipe; InvalidInput for a count that is not even in
    [MIN_COUNT, MAX_COUNT] or an unknown reason.
    """
    if model.recipe is None:
        raise NoRecipe(
            f"model {model.id} was registered without its training recipe, so its reference models cannot be "
            "trained; its erasures are audited with the rank tier"
        )
    if not MIN_COUNT <= count <= MAX_COUNT or count % 2:
        raise InvalidInput(f"count must be an even number from {MIN_COUNT} to {MAX_COUNT}, got {count}")
    if reason not in REASONS:
        raise InvalidInput(f"reason must be one of {', '.join(REASONS)}")
    # Serialises queueing per model on Postgres (SQLite's writers are serialised already), so two
    # concurrent calls cannot both find no active set.
    session.execute(select(Model.id).where(Model.id == model.id).with_for_update())
    existing = active_set(session, model_id=model.id)
    if existing is not None:
        return existing, False
    now = utcnow()
    ref = AuditReferenceSet(
        id=new_id(),
        model_id=model.id,
        tenant_id=model.tenant_id,
        status=QUEUED,
        reason=reason,
        count=count,
        seed=new_seed() if seed is None else seed,
        created_at=now,
        updated_at=now,
    )
    session.add(ref)
    session.flush()
    outbox.enqueue(session, task_name=outbox.AUDIT_REFERENCES_TASK, payload={"reference_set_id": ref.id})
    _record(
        session, ref, action=QUEUED, actor=actor, now=now, data={"count": count, "seed": ref.seed, "reason": reason}
    )
    return ref, True


def queue_on_demand(
    session: Session, *, tenant_id: str, model_id: str, count: int, actor: str
) -> tuple[AuditReferenceSet, bool]:
    """An admin's request for the tenant's model (`queue` with reason on_demand); NotFound for another tenant's."""
    model = registry.get_model(session, tenant_id=tenant_id, model_id=model_id)
    return queue(session, model=model, count=count, reason=ON_DEMAND, actor=actor)


def queue_refresh_if_due(
    session: Session, *, model_id: str, threshold: int, actor: str = WORKER
) -> AuditReferenceSet | None:
    """Queue a fresh set when `threshold` more samples were erased than when the ready set started training.

    The ready set was trained while E0 samples of the model's dataset were erased; once E ≥ E0 +
    threshold are, and no set of the model is queued or running, a new set (same count, a new seed,
    reason refresh) is queued and returned. None otherwise (no ready set, no recipe, not due yet).
    """
    model = session.get(Model, model_id)
    if model is None or model.recipe is None:
        return None
    current = ready_set(session, model_id=model_id)
    if current is None or current.erased_samples is None or active_set(session, model_id=model_id) is not None:
        return None
    erased = datasets.count_erased(session, dataset_id=model.dataset_id)
    if erased < current.erased_samples + threshold:
        return None
    ref, created = queue(session, model=model, count=current.count, reason=REFRESH, actor=actor)
    return ref if created else None


def cancel(session: Session, *, tenant_id: str, model_id: str, actor: str) -> AuditReferenceSet:
    """Cancel the model's queued set now, or ask its running set to stop at the job's next check.

    Idempotent: with nothing queued or running, a newest set that was cancelled is returned as is;
    Conflict when there is nothing to cancel. NotFound for another tenant's model.
    """
    model = registry.get_model(session, tenant_id=tenant_id, model_id=model_id)
    for _ in range(2):  # a queued set claimed meanwhile is cancelled on its running path
        ref = active_set(session, model_id=model.id)
        if ref is None:
            latest = _newest(session, model.id)
            if latest is not None and latest.status == CANCELLED:
                return latest
            raise Conflict(f"model {model_id} has no reference set queued or running; nothing to cancel")
        now = utcnow()
        if ref.status == QUEUED:
            if _transition(session, ref, expect=QUEUED, to=CANCELLED, actor=actor, values={"finished_at": now}):
                return load(session, set_id=ref.id)  # type: ignore[return-value]
            continue
        if ref.cancel_requested:
            return ref
        changed = session.execute(
            update(AuditReferenceSet)
            .where(
                AuditReferenceSet.id == ref.id,
                AuditReferenceSet.status == RUNNING,
                AuditReferenceSet.cancel_requested.is_(False),
            )
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed:
            _record(session, ref, action="cancel_requested", actor=actor, now=now)
            return load(session, set_id=ref.id)  # type: ignore[return-value]
    raise Conflict(f"the reference set of model {model_id} changed meanwhile; read it again")


# --- execution ----------------------------------------------------------------------------------


def _transition(
    session: Session,
    ref: AuditReferenceSet,
    *,
    expect: str,
    to: str,
    actor: str,
    token: str | None = None,
    values: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Compare-and-set the status (and the lease token, when given); audit it; False if it did not apply."""
    now = utcnow()
    conditions = [AuditReferenceSet.id == ref.id, AuditReferenceSet.status == expect]
    if token is not None:
        conditions.append(AuditReferenceSet.lease_token == token)
    changed = session.execute(
        update(AuditReferenceSet)
        .where(*conditions)
        .values(status=to, updated_at=now, **(values or {}))
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        return False
    _record(session, ref, action=to, actor=actor, now=now, data={"from": expect, **(data or {})})
    return True


def claim(
    session: Session, *, set_id: str, token: str, lease_seconds: float, max_attempts: int
) -> AuditReferenceSet | None:
    """Start (or take over) training a set; None when there is nothing to do.

    Nothing to do: the set is finished or cancelled, or another execution holds a live lease. A set
    whose dead execution had been asked to cancel is cancelled; one that already used
    `max_attempts` executions is failed instead of started.
    """
    ref = load(session, set_id=set_id)
    if ref is None or ref.status not in ACTIVE_STATUSES:
        return None
    now = leases.db_now(session)
    resumed = ref.status == RUNNING
    if leases.lease_is_live(ref, lease_seconds=lease_seconds, now=now):
        return None  # someone is working on it
    ending = {"finished_at": now, "lease_token": None, "phase": None}
    if ref.cancel_requested:
        _transition(session, ref, expect=ref.status, to=CANCELLED, actor=WORKER, values=ending)
        return None
    if ref.attempts >= max_attempts:
        _transition(
            session,
            ref,
            expect=ref.status,
            to=FAILED,
            actor=WORKER,
            values={
                **ending,
                "error_code": "attempts_exhausted",
                "error_message": f"the training was interrupted {ref.attempts} times; giving up",
            },
            data={"attempts": ref.attempts},
        )
        return None
    if not leases.take_lease(session, AuditReferenceSet, ref, token=token, now=now):
        return None  # another execution claimed it this instant
    ref = load(session, set_id=set_id)
    assert ref is not None
    _record(session, ref, action=RUNNING, actor=WORKER, now=now, data={"attempt": ref.attempts, "resumed": resumed})
    return ref


def report(session: Session, *, set_id: str, token: str, **values: Any) -> None:
    """Write columns of the executing attempt (also its heartbeat); LeaseLost once it no longer holds the set."""
    if leases.renew(session, AuditReferenceSet, [set_id], token=token, now=leases.db_now(session), **values) != 1:
        raise LeaseLost(f"reference set {set_id} is no longer held by this execution")


def heartbeat(session: Session, *, set_id: str, token: str) -> bool:
    """Renew the executing attempt's lease on the database's clock; False once it no longer holds the set."""
    return leases.renew(session, AuditReferenceSet, [set_id], token=token, now=leases.db_now(session)) == 1


def progress(session: Session, *, set_id: str, token: str, phase: str, step: int, total: int) -> None:
    """Progress of the executing attempt (renews its lease); LeaseLost as `report`."""
    report(session, set_id=set_id, token=token, phase=phase, progress_step=step, progress_total=total)


def release(
    session: Session,
    *,
    set_id: str,
    token: str,
    reason: str = "shutdown",
    retry_in: float = 0.0,
    retry_cap: float = 0.0,
    count_retry: bool = False,
    max_retries: int = 0,
) -> bool:
    """running → queued for an attempt stopped by a shutdown or a passing fault, dispatched again in `retry_in` s.

    The attempt is given back (not counted against `max_attempts`): nothing was interrupted that the
    set can be blamed for. A passing fault (`count_retry`) adds one to `retries`, and its delay
    doubles with each earlier retry up to `retry_cap`; past `max_retries` the set fails with
    `transient_error` instead. False when the attempt no longer holds the set.
    """
    ref = load(session, set_id=set_id)
    if ref is None:
        return False
    if count_retry:
        retry_in = leases.backoff(ref.retries, first=retry_in, cap=retry_cap)
    if count_retry and ref.retries >= max_retries:
        message = f"a passing fault recurred {ref.retries + 1} times; giving up (last: {reason})"
        return finish(
            session,
            set_id=set_id,
            token=token,
            to=FAILED,
            error_code="transient_error",
            error_message=message,
            seconds=None,
        )
    values = {
        "attempts": AuditReferenceSet.attempts - 1,
        "retries": AuditReferenceSet.retries + int(count_retry),
        "lease_token": None,
        "heartbeat_at": None,
        "phase": None,
        "progress_step": 0,
        "progress_total": 0,
    }
    if not _transition(
        session, ref, expect=RUNNING, to=QUEUED, actor=WORKER, token=token, values=values, data={"reason": reason}
    ):
        return False
    outbox.enqueue(
        session, task_name=outbox.AUDIT_REFERENCES_TASK, payload={"reference_set_id": set_id}, delay=retry_in
    )
    return True


def cancel_requested(session: Session, *, set_id: str) -> bool:
    """True when someone asked to cancel the set, or it is no longer running."""
    row = session.execute(
        select(AuditReferenceSet.status, AuditReferenceSet.cancel_requested).where(AuditReferenceSet.id == set_id)
    ).first()
    return row is None or row[0] != RUNNING or bool(row[1])


def finish_ready(
    session: Session,
    *,
    set_id: str,
    token: str,
    storage_key: str,
    sha256: str,
    size_bytes: int,
    seconds: float | None = None,
) -> bool:
    """running → ready with the stored scores file; every other ready set of the model becomes superseded.

    False when the executing attempt no longer holds the set (nothing changes).
    """
    ref = load(session, set_id=set_id)
    if ref is None:
        return False
    now = utcnow()
    values = {
        "storage_key": storage_key,
        "sha256": sha256,
        "size_bytes": size_bytes,
        "seconds": seconds,
        "finished_at": now,
        "lease_token": None,
        "phase": None,
    }
    data = {
        "sha256": sha256,
        "count": ref.count,
        "trained_on_version": ref.trained_on_version,
        "train_samples": ref.train_samples,
        "erased_samples": ref.erased_samples,
    }
    if not _transition(session, ref, expect=RUNNING, to=READY, actor=WORKER, token=token, values=values, data=data):
        return False
    older = session.scalars(
        select(AuditReferenceSet).where(
            AuditReferenceSet.model_id == ref.model_id,
            AuditReferenceSet.status == READY,
            AuditReferenceSet.id != ref.id,
        )
    ).all()
    for old in older:
        _transition(session, old, expect=READY, to=SUPERSEDED, actor=WORKER, data={"by": ref.id})
    return True


def finish(
    session: Session,
    *,
    set_id: str,
    token: str,
    to: str,
    error_code: str | None = None,
    error_message: str | None = None,
    seconds: float | None = None,
) -> bool:
    """running → failed | cancelled for the executing attempt; False when it no longer holds the set."""
    assert to in (FAILED, CANCELLED)
    ref = load(session, set_id=set_id)
    if ref is None:
        return False
    values = {
        "finished_at": utcnow(),
        "error_code": error_code,
        "error_message": error_message,
        "seconds": seconds,
        "lease_token": None,
        "phase": None,
    }
    return _transition(
        session, ref, expect=RUNNING, to=to, actor=WORKER, token=token, values=values, data={"error_code": error_code}
    )


# --- reconciliation -----------------------------------------------------------------------------


def reconcile(
    session: Session,
    *,
    lease_seconds: float,
    queued_after: float,
    max_attempts: int,
    limit: int = 100,
    now: datetime | None = None,
) -> Reconciled:
    """Dispatch again the sets whose training was interrupted, at most `max_attempts` times.

    Interrupted: running with a heartbeat older than the lease (its worker died), or queued for
    longer than `queued_after` (the broker lost the message). As `requests.reconcile`: one new
    outbox row each, not twice within one lease, failed with `attempts_exhausted` when out of tries.
    """
    now = now or leases.db_now(session)
    rows = leases.interrupted(
        session,
        AuditReferenceSet,
        lease_seconds=lease_seconds,
        queued_after=queued_after,
        now=now,
        limit=limit,
        order_by=AuditReferenceSet.created_at,
    )
    requeued, failed = [], []
    for ref in rows:
        reason, interruptions = leases.interruption(ref)
        if interruptions >= max_attempts:
            message = (
                f"the training was interrupted {interruptions} times (last: {reason.replace('_', ' ')}); giving up"
            )
            if _transition(
                session,
                ref,
                expect=ref.status,
                to=FAILED,
                actor="reconciler",
                values={
                    "finished_at": now,
                    "error_code": "attempts_exhausted",
                    "error_message": message,
                    "lease_token": None,
                    "phase": None,
                },
                data={"attempts": ref.attempts, "requeues": ref.requeues, "reason": reason},
            ):
                failed.append(ref.id)
            continue
        if not leases.count_requeue(session, AuditReferenceSet, ref, now=now):
            continue  # it moved meanwhile (a heartbeat, another reconciler)
        outbox.enqueue(session, task_name=outbox.AUDIT_REFERENCES_TASK, payload={"reference_set_id": ref.id})
        _record(
            session,
            ref,
            action="requeued",
            actor="reconciler",
            now=now,
            data={"reason": reason, "status": ref.status, "requeue": ref.requeues + 1},
        )
        requeued.append(ref.id)
    return Reconciled(tuple(requeued), tuple(failed))

"""Compliance figures over a tenant's deletion requests (status counts, deadlines, durations, verdicts), what
the dashboard's pages show, and the deployment-wide figures the operator's metrics read."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ledger import audit, registry, requests, tenants
from ledger.pagination import Page
from ledger.tables import (
    ACTIVE_STATUSES,
    COMPLETED,
    FAILED,
    QUEUED,
    RECEIVED,
    REQUEST_STATUSES,
    AuditEvent,
    DeletionRequest,
    Model,
    OutboxMessage,
    Tenant,
)


@dataclass
class Figures:
    """Counts and durations of one set of requests (a tenant's, or one model's)."""

    by_status: Counter = field(default_factory=Counter)
    overdue: int = 0  # open, past the deadline
    due_soon: int = 0  # open, deadline within the due-soon window
    completed_late: int = 0  # completed after the deadline
    verified: int = 0  # requests with a recorded verdict
    verification_passed: int = 0
    completion_seconds: list[float] = field(default_factory=list)  # receipt → completion

    @property
    def total(self) -> int:
        """Number of requests."""
        return sum(self.by_status.values())

    @property
    def pass_rate(self) -> float | None:
        """Share of verdicts that passed (None before the first verdict)."""
        return self.verification_passed / self.verified if self.verified else None

    def completion_percentile(self, q: float) -> float | None:
        """The q-th percentile (0–100, linear interpolation) of receipt-to-completion seconds."""
        values = sorted(self.completion_seconds)
        if not values:
            return None
        rank = (len(values) - 1) * q / 100
        low, high = math.floor(rank), math.ceil(rank)
        return values[low] + (values[high] - values[low]) * (rank - low)

    def statuses(self) -> dict[str, int]:
        """Count per status, every status present."""
        return {status: self.by_status.get(status, 0) for status in REQUEST_STATUSES}

    def add(
        self,
        *,
        status: str,
        received_at: datetime,
        due_at: datetime,
        finished_at: datetime | None,
        passed: bool | None,
        now: datetime,
        due_soon: timedelta,
    ) -> None:
        """Count one request."""
        self.by_status[status] += 1
        if status in ACTIVE_STATUSES:
            self.overdue += due_at < now
            self.due_soon += now <= due_at < now + due_soon
        if status == COMPLETED and finished_at is not None:
            self.completion_seconds.append((finished_at - received_at).total_seconds())
            self.completed_late += finished_at > due_at
        if passed is not None:
            self.verified += 1
            self.verification_passed += passed


def summarize(
    session: Session, *, tenant_id: str, model_id: str | None = None, now: datetime, due_soon: timedelta
) -> tuple[Figures, dict[str, Figures]]:
    """(figures over all the tenant's requests, figures per model id); one pass over the requests."""
    passed = DeletionRequest.verification["passed"].as_boolean()
    query = select(
        DeletionRequest.model_id,
        DeletionRequest.status,
        DeletionRequest.received_at,
        DeletionRequest.due_at,
        DeletionRequest.finished_at,
        passed,
    ).where(DeletionRequest.tenant_id == tenant_id)
    if model_id:
        query = query.where(DeletionRequest.model_id == model_id)
    total, per_model = Figures(), {}
    for row in session.execute(query.order_by(DeletionRequest.model_id)).yield_per(1000):
        fields = dict(
            status=row.status,
            received_at=row.received_at,
            due_at=row.due_at,
            finished_at=row.finished_at,
            passed=row[5],
            now=now,
            due_soon=due_soon,
        )
        total.add(**fields)
        per_model.setdefault(row.model_id, Figures()).add(**fields)
    return total, per_model


# --- the dashboard's pages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """The dashboard's front page for one tenant."""

    tenant: Tenant
    overall: Figures  # over all the tenant's requests
    per_model: dict[str, Figures]  # model id → its figures
    model_names: dict[str, str]  # model id → name
    page: Page[DeletionRequest]  # newest first, filtered by deadline
    overdue: list[DeletionRequest]  # the newest overdue requests, whatever the filter


def overview(
    session: Session,
    *,
    tenant_id: str,
    now: datetime,
    due_soon: timedelta,
    deadline: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Overview:
    """Figures, a page of requests (deadline: overdue | due_soon), the overdue ones; InvalidInput for a bad cursor."""
    overall, per_model = summarize(session, tenant_id=tenant_id, now=now, due_soon=due_soon)
    page = requests.list_requests(
        session, tenant_id=tenant_id, deadline=deadline, due_soon=due_soon, cursor=cursor, limit=limit
    )
    overdue = requests.list_requests(session, tenant_id=tenant_id, deadline=requests.OVERDUE, limit=limit).items
    names = dict(session.execute(select(Model.id, Model.name).where(Model.tenant_id == tenant_id)).all())
    return Overview(tenants.get_tenant(session, tenant_id=tenant_id), overall, per_model, names, page, overdue)


@dataclass(frozen=True)
class RequestReport:
    """The dashboard's page of one request."""

    request: DeletionRequest
    model: Model
    events: list[AuditEvent]  # its audit trail, oldest first


def request_report(session: Session, *, tenant_id: str, request_id: str, events: int = 200) -> RequestReport:
    """The tenant's request with its model and up to `events` audit events; NotFound if the tenant lacks it."""
    request = requests.get_request(session, tenant_id=tenant_id, request_id=request_id)
    trail = audit.list_events(
        session, where=audit.EventFilter(tenant_id=tenant_id, request_id=request.id), limit=events
    ).items
    return RequestReport(request, registry.get_model(session, tenant_id=tenant_id, model_id=request.model_id), trail)


# --- deployment-wide figures (the operator's metrics) -------------------------------------------

PHASE_WINDOW = 1000  # phase durations are read from this many most recent completed requests


@dataclass(frozen=True)
class Deployment:
    """Figures across every tenant, read in one transaction."""

    by_status: dict[str, int]  # status → requests, every status present
    waiting_requests: int  # received or queued, not started
    pending_dispatches: int  # outbox rows not yet handed on
    phase_seconds: dict[str, list[float]]  # phase → its durations over the `phase_window` newest completed requests
    verifications: dict[tuple[bool, bool], int]  # (passed, fallback) → completed requests, all four pairs present
    failures: dict[str, int]  # error code ("unknown" when none) → failed requests; verification_failed always present


def deployment(session: Session, *, phase_window: int = PHASE_WINDOW) -> Deployment:
    """The deployment's figures: aggregate queries only, so a scrape stays cheap however many requests there are."""
    by_status = dict.fromkeys(REQUEST_STATUSES, 0)
    statuses = select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)
    by_status.update(session.execute(statuses).all())
    pending = session.scalar(
        select(func.count()).select_from(OutboxMessage).where(OutboxMessage.dispatched_at.is_(None))
    )
    return Deployment(
        by_status=by_status,
        waiting_requests=by_status.get(RECEIVED, 0) + by_status.get(QUEUED, 0),
        pending_dispatches=pending or 0,
        phase_seconds=_phase_seconds(session, phase_window),
        verifications=_verifications(session),
        failures=_failures(session),
    )


def _phase_seconds(session: Session, window: int) -> dict[str, list[float]]:
    # Only the phase_seconds member is read (details also holds score lists, far larger).
    rows = session.scalars(
        select(DeletionRequest.details["phase_seconds"])
        .where(DeletionRequest.status == COMPLETED, DeletionRequest.finished_at.is_not(None))
        .order_by(DeletionRequest.finished_at.desc())
        .limit(window)
    )
    durations: dict[str, list[float]] = {}
    for phases in rows:
        if not isinstance(phases, dict):  # older rows, or a worker that did not record them
            continue
        for phase, seconds in phases.items():
            if _is_duration(seconds):
                durations.setdefault(phase, []).append(float(seconds))
    return durations


def _is_duration(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _verifications(session: Session) -> dict[tuple[bool, bool], int]:
    # JSON null and a missing member both read as SQL NULL through ->> / JSON_EXTRACT.
    fallback = DeletionRequest.verification["fallback"].as_string().is_not(None)
    verdicts = (
        select(
            DeletionRequest.verification["passed"].as_boolean().label("passed"),
            case((fallback, True), else_=False).label("fallback"),
        )
        .where(DeletionRequest.status == COMPLETED)
        .subquery()
    )
    rows = session.execute(
        select(verdicts.c.passed, verdicts.c.fallback, func.count()).group_by(verdicts.c.passed, verdicts.c.fallback)
    )
    counts = dict.fromkeys([(True, False), (True, True), (False, False), (False, True)], 0)
    for passed, fallback, n in rows:
        if passed is not None:  # a verification record without a verdict (JSON null) is no outcome
            counts[(bool(passed), bool(fallback))] += n
    return counts


def _failures(session: Session) -> dict[str, int]:
    failed = session.execute(
        select(func.coalesce(DeletionRequest.error_code, "unknown"), func.count())
        .where(DeletionRequest.status == FAILED)
        .group_by(DeletionRequest.error_code)
    )
    return {"verification_failed": 0, **{str(code): n for code, n in failed}}

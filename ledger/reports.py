"""Compliance figures over a tenant's deletion requests: status counts, deadlines, durations, verdicts."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.tables import ACTIVE_STATUSES, COMPLETED, REQUEST_STATUSES, DeletionRequest


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

    def add(self, *, status: str, received_at: datetime, due_at: datetime, finished_at: datetime | None,
            passed: bool | None, now: datetime, due_soon: timedelta) -> None:
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
    query = select(DeletionRequest.model_id, DeletionRequest.status, DeletionRequest.received_at,
                   DeletionRequest.due_at, DeletionRequest.finished_at, passed).where(DeletionRequest.tenant_id == tenant_id)
    if model_id:
        query = query.where(DeletionRequest.model_id == model_id)
    total, per_model = Figures(), {}
    for row in session.execute(query.order_by(DeletionRequest.model_id)).yield_per(1000):
        fields = dict(status=row.status, received_at=row.received_at, due_at=row.due_at, finished_at=row.finished_at,
                      passed=row[5], now=now, due_soon=due_soon)
        total.add(**fields)
        per_model.setdefault(row.model_id, Figures()).add(**fields)
    return total, per_model

"""What the reconcilers of leased work share: deletion requests and audit reference sets alike.

Both tables hold work that runs under a lease (`status`, `heartbeat_at`, `updated_at`, `attempts`,
`requeues`). Work is interrupted when it runs with a heartbeat older than the lease (its worker
died) or has been queued longer than `queued_after` (the broker lost the message); it is
requeued at most once per lease, by a compare-and-set on `updated_at`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from ledger.tables import QUEUED, RUNNING


def interrupted(
    session: Session, table: Any, *, lease_seconds: float, queued_after: float, now: datetime, limit: int, order_by: Any
) -> list[Any]:
    """Rows of `table` whose work was interrupted and that no reconciler touched within the lease."""
    stale = now - timedelta(seconds=lease_seconds)
    lost = or_(
        and_(table.status == RUNNING, table.heartbeat_at < stale),
        and_(table.status == QUEUED, table.updated_at < now - timedelta(seconds=queued_after)),
    )
    return list(session.scalars(select(table).where(lost, table.updated_at < stale).order_by(order_by).limit(limit)))


def interruption(row: Any) -> tuple[str, int]:
    """Why `row` is being reconciled (worker_lost | broker_lost) and how many times it was interrupted."""
    return ("worker_lost" if row.status == RUNNING else "broker_lost"), max(row.attempts, row.requeues)


def count_requeue(session: Session, table: Any, row: Any, *, now: datetime) -> bool:
    """requeues + 1 if `row` did not move since it was read (a heartbeat, another reconciler); False otherwise."""
    return (
        session.execute(
            update(table)
            .where(table.id == row.id, table.status == row.status, table.updated_at == row.updated_at)
            .values(requeues=row.requeues + 1, updated_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )

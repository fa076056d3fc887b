"""What leased work shares: deletion requests and audit reference sets alike.

Both tables hold work that runs under a lease (`status`, `heartbeat_at`, `updated_at`, `attempts`,
`requeues`). Work is interrupted when it runs with a heartbeat older than the lease (its worker
died) or has been queued longer than `queued_after` (the broker lost the message); it is
requeued at most once per lease, by a compare-and-set on `updated_at`. An execution takes the
lease by a compare-and-set on status and attempts, and renews it with every report and with a
heartbeat thread (worker/heartbeat.py) that runs whatever the job is doing.

Every lease timestamp is the database's clock (`db_now`), never the host's: a worker whose clock
runs ten minutes behind would otherwise write heartbeats that a reconciler on another host reads
as stale, and take over live work.

Only interrupted executions count against `max_attempts`: a claim that died. Waiting does not:
a request the broker lost is dispatched again as often as it takes, since nothing ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from ledger.tables import QUEUED, RUNNING


def db_now(session: Session) -> datetime:
    """The database's current time (aware UTC): the one clock every host's leases are compared on."""
    if session.get_bind().dialect.name == "sqlite":
        stamp = session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
        return datetime.fromisoformat(stamp).replace(tzinfo=UTC)
    return session.scalar(select(func.clock_timestamp())).astimezone(UTC)


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
    """Why `row` is being reconciled (worker_lost | broker_lost) and how many executions were interrupted.

    A lost broker message interrupted nothing (0): the row waited, and waiting is never held against it.
    """
    return ("worker_lost", row.attempts) if row.status == RUNNING else ("broker_lost", 0)


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


def backoff(retries: int, *, first: float, cap: float) -> float:
    """Seconds before the retry that follows `retries` earlier ones: first, 2 first, 4 first, ... at most `cap`."""
    return min(cap, first * 2 ** min(retries, 30))


def lease_is_live(row: Any, *, lease_seconds: float, now: datetime) -> bool:
    """Another execution runs `row` and its heartbeat is younger than the lease."""
    return (
        row.status == RUNNING
        and row.heartbeat_at is not None
        and row.heartbeat_at > now - timedelta(seconds=lease_seconds)
    )


def take_lease(session: Session, table: Any, row: Any, *, token: str, now: datetime, **values: Any) -> bool:
    """Start an execution of `row` (running, a fresh lease, one more attempt, progress reset) if it
    did not change status or attempts since it was read; False when another execution won."""
    return (
        session.execute(
            update(table)
            .where(table.id == row.id, table.status == row.status, table.attempts == row.attempts)
            .values(
                status=RUNNING,
                lease_token=token,
                heartbeat_at=now,
                attempts=row.attempts + 1,
                started_at=func.coalesce(table.started_at, now),
                phase="preparing",
                progress_step=0,
                progress_total=0,
                updated_at=now,
                **values,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def renew(session: Session, table: Any, ids: Sequence[str], *, token: str, now: datetime, **values: Any) -> int:
    """Write `values` and the heartbeat to those of `ids` this execution still holds; how many it held."""
    return session.execute(
        update(table)
        .where(table.id.in_(tuple(ids)), table.status == RUNNING, table.lease_token == token)
        .values(heartbeat_at=now, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    ).rowcount

"""The transactional outbox: the only seam between the API and whatever executes jobs.

The API adds a dispatch row in the same transaction as the request it dispatches. A relay (the
Celery relay or the embedded runner) claims rows with a compare-and-set lease, hands them on,
and marks them dispatched. A relay that dies after handing a row on but before marking it sends
it again after the lease expires; the job's own compare-and-set makes the duplicate a no-op.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from ledger.tables import OutboxMessage, utcnow

ERASURE_TASK = "ltu.erasure.run"
AUDIT_REFERENCES_TASK = "ltu.audit_references.train"  # the likelihood-ratio tier's reference models
OUTBOX = OutboxMessage.__table__


def enqueue(session: Session, *, task_name: str, payload: dict[str, Any], delay: float = 0.0) -> None:
    """Insert a dispatch row (not committed), due at once or `delay` seconds from now (a retry's backoff)."""
    now = utcnow()
    due = now + timedelta(seconds=delay) if delay > 0 else None
    # Core, not the unit of work: one INSERT, no object for the session to track (the hot path of every submission).
    session.execute(
        insert(OUTBOX).values(task_name=task_name, payload=payload, created_at=now, claimed_until=due, attempts=0)
    )


def claim_next(
    session: Session, *, lease_seconds: float = 60.0, task_names: tuple[str, ...] | None = None
) -> OutboxMessage | None:
    """Claim the oldest undispatched row whose lease is free; None when there is none."""
    now = utcnow()
    query = select(OutboxMessage.id).where(
        OutboxMessage.dispatched_at.is_(None),
        or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
    )
    if task_names:
        query = query.where(OutboxMessage.task_name.in_(task_names))
    for message_id in session.scalars(query.order_by(OutboxMessage.id).limit(5)):
        token = str(uuid.uuid4())
        claimed = session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.id == message_id,
                OutboxMessage.dispatched_at.is_(None),
                or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
            )
            .values(
                claim_token=token,
                claimed_until=now + timedelta(seconds=lease_seconds),
                attempts=OutboxMessage.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed == 1:
            return session.get(OutboxMessage, message_id, populate_existing=True)
    return None


def mark_dispatched(session: Session, *, message_id: int, token: str) -> bool:
    """Mark a claimed row handed on; False if the claim was lost meanwhile."""
    return (
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id, OutboxMessage.claim_token == token)
            .values(dispatched_at=utcnow(), last_error=None)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def release(session: Session, *, message_id: int, token: str, error: str, retry_in: float = 5.0) -> None:
    """Give a claimed row back after a failed hand-off; it is retried after `retry_in` seconds."""
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == message_id, OutboxMessage.claim_token == token)
        .values(claimed_until=utcnow() + timedelta(seconds=retry_in), last_error=error[:2000])
        .execution_options(synchronize_session=False)
    )


def delete_dispatched(session: Session, *, older_than: timedelta, limit: int = 10_000) -> int:
    """Delete rows handed on longer than `older_than` ago (the ledger keeps the history; these are transport)."""
    cutoff = utcnow() - older_than
    old = select(OutboxMessage.id).where(OutboxMessage.dispatched_at < cutoff).limit(limit)
    return session.execute(
        delete(OutboxMessage).where(OutboxMessage.id.in_(old)).execution_options(synchronize_session=False)
    ).rowcount

"""The audit log: one event per state change of any resource, written in the change's transaction.

`record` is the only writer, so the hash chain (sequence, canonical body, predecessor hash) can
be added here later without touching callers. Event data never holds a raw subject id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.pagination import Page, clamp_limit, decode_cursor, encode_cursor
from ledger.tables import AuditEvent, utcnow


def record(
    session: Session,
    *,
    tenant_id: str | None,
    actor: str,
    action: str,
    resource_type: str,
    resource_id: str,
    model_id: str | None = None,
    request_id: str | None = None,
    data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditEvent:
    """Append one event (flushed, not committed)."""
    event = AuditEvent(
        tenant_id=tenant_id,
        occurred_at=now or utcnow(),
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        model_id=model_id,
        request_id=request_id,
        data=data or {},
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session,
    *,
    tenant_id: str,
    model_id: str | None = None,
    request_id: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[AuditEvent]:
    """A tenant's events in the order they happened, filtered, one page at a time."""
    limit = clamp_limit(limit)
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if model_id:
        query = query.where(AuditEvent.model_id == model_id)
    if request_id:
        query = query.where(AuditEvent.request_id == request_id)
    if action:
        query = query.where(AuditEvent.action == action)
    if since:
        query = query.where(AuditEvent.occurred_at >= since)
    if until:
        query = query.where(AuditEvent.occurred_at < until)
    if cursor:
        (after_id,) = decode_cursor(cursor, (int,))
        query = query.where(AuditEvent.id > after_id)
    rows = list(session.scalars(query.order_by(AuditEvent.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, encode_cursor(rows[-1].id) if more else None)

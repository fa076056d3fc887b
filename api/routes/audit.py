"""The audit log (audit scope)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import AuditKey, SessionDep
from api.routes.common import aware, problems
from api.schemas import AuditEventPage, AuditEventRead
from ledger import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/events", response_model=AuditEventPage, responses=problems())
def list_audit_events(
    session: SessionDep,
    key: AuditKey,
    model_id: str | None = None,
    request_id: str | None = None,
    action: str | None = None,
    since: Annotated[datetime | None, Query(description="Events at or after this time.")] = None,
    until: Annotated[datetime | None, Query(description="Events before this time.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditEventPage:
    """The tenant's events in the order they happened."""
    page = audit.list_events(session, tenant_id=key.tenant_id, model_id=model_id, request_id=request_id, action=action,
                             since=aware(since), until=aware(until), cursor=cursor, limit=limit)
    return AuditEventPage(items=[AuditEventRead.model_validate(e) for e in page.items], next_cursor=page.next_cursor)


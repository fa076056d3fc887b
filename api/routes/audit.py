"""The audit log (audit scope): events and exports, the chain's verification, compliance figures."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api.deps import AuditKey, DatabaseDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.routes.common import aware, problems
from api.schemas import (
    AuditEventPage,
    AuditEventRead,
    AuditSummary,
    BrokenLink,
    ChainVerification,
    CompletionTimes,
    ModelFigures,
    RequestFigures,
)
from ledger import audit, registry, reports, tenants
from ledger.db import Database
from ledger.reports import Figures
from ledger.tables import Tenant, utcnow
from ledger.tenants import LiveKey

router = APIRouter(prefix="/v1/audit", tags=["audit"])

EXPORT_CHUNK = 1000  # events per query of a streamed export: its memory does not grow with the export
CSV_COLUMNS = (
    "seq",
    "occurred_at",
    "tenant_id",
    "actor",
    "action",
    "resource_type",
    "resource_id",
    "model_id",
    "request_id",
    "data",
    "prev_hash",
    "hash",
)
# Filter values are checked before an export starts streaming: afterwards an error can no longer be answered.
FilterText = Annotated[str | None, Query(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$")]
TenantQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=255,
        pattern=r"^[^\x00-\x1f]+$",
        description="Another tenant's id (admin keys of the operator tenant only).",
    ),
]


def audited_tenant(session: Session, key: LiveKey, tenant_id: str | None) -> str:
    """The tenant whose events the key may read: its own, or any for the operator's admin keys."""
    if tenant_id is None or tenant_id == key.tenant_id:
        return key.tenant_id
    if not tenants.is_operator(session, key=key):
        raise ProblemError(
            403,
            f"only admin keys of the operator tenant ({tenants.DEFAULT_TENANT!r}) may read another "
            "tenant's audit events",
            code="insufficient_scope",
        )
    tenants.get_tenant(session, tenant_id=tenant_id)
    return tenant_id


@router.get(
    "/events",
    response_model=AuditEventPage,
    responses={
        **problems(404),
        200: {
            "content": {"application/x-ndjson": {}, "text/csv": {}},
            "description": "A page (json) or the whole filtered log, streamed (ndjson, csv).",
        },
    },
)
def list_audit_events(
    session: SessionDep,
    database: DatabaseDep,
    key: AuditKey,
    tenant_id: TenantQuery = None,
    model_id: FilterText = None,
    request_id: FilterText = None,
    action: FilterText = None,
    since: Annotated[datetime | None, Query(description="Events at or after this time.")] = None,
    until: Annotated[datetime | None, Query(description="Events before this time.")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of a page: continue after it (exports too).")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size (json only).")] = 50,
    format: Annotated[
        Literal["json", "ndjson", "csv"],
        Query(
            description="json: one page; ndjson, csv: every matching event, streamed. An ndjson line minus its `hash` "
            "member is the chained body: its canonical JSON hashes to `hash`."
        ),
    ] = "json",
):
    """The tenant's events in chain order: a page, or a streamed export of all of them."""
    where = audit.EventFilter(
        tenant_id=audited_tenant(session, key, tenant_id),
        model_id=model_id,
        request_id=request_id,
        action=action,
        since=aware(since),
        until=aware(until),
    )
    if format == "json":
        page = audit.list_events(session, where=where, cursor=cursor, limit=limit)
        return AuditEventPage(
            items=[AuditEventRead.model_validate(e) for e in page.items], next_cursor=page.next_cursor
        )
    after = audit.after_cursor(cursor) if cursor else 0
    upto = audit.head_seq(session)  # a consistent export: the chain as it was when it started
    if format == "ndjson":
        return StreamingResponse(_ndjson(database, where, after, upto), media_type="application/x-ndjson")
    return StreamingResponse(
        _csv(database, where, after, upto),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit-events.csv"'},
    )


def _chunks(database: Database, where: audit.EventFilter, after: int, upto: int) -> Iterator[list]:
    # One short read transaction per chunk: a slow reader never holds a snapshot (or a connection) for long.
    while True:
        with database.read() as session:
            rows = audit.export_chunk(session, where=where, after_seq=after, upto_seq=upto, limit=EXPORT_CHUNK)
        if not rows:
            return
        yield rows
        after = rows[-1].seq


def _ndjson(database: Database, where: audit.EventFilter, after: int, upto: int) -> Iterator[str]:
    for rows in _chunks(database, where, after, upto):
        yield "".join(f'{{"hash":"{row.hash}",{row.body[1:]}\n' for row in rows)


def _csv(database: Database, where: audit.EventFilter, after: int, upto: int) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for rows in _chunks(database, where, after, upto):
        for row in rows:
            event = {**json.loads(row.body), "hash": row.hash}
            event["data"] = json.dumps(event["data"], ensure_ascii=False, separators=(",", ":"))
            writer.writerow(event[column] for column in CSV_COLUMNS)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


@router.get("/verify", response_model=ChainVerification, responses=problems())
def verify_audit_chain(
    session: SessionDep,
    key: AuditKey,
    chain: Annotated[
        Literal["deployment", "tenant"] | None,
        Query(
            description="deployment: every event, by seq (audit or admin keys of the operator tenant only); tenant: "
            "the caller's tenant's events, by tenant_seq. Default: deployment for the operator, tenant otherwise."
        ),
    ] = None,
    from_seq: Annotated[
        int, Query(ge=1, le=audit.MAX_SEQ, description="First position to check (a page's next_from_seq).")
    ] = 1,
    to_seq: Annotated[
        int | None, Query(ge=1, le=audit.MAX_SEQ, description="Last position to check (default: the chain's head).")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=audit.VERIFY_LIMIT, description="Events to check at most in this call.")
    ] = audit.VERIFY_LIMIT,
) -> ChainVerification:
    """Walk one page of a hash chain and report the first broken link (position and why), or where to go on."""
    if to_seq is not None and to_seq < from_seq:
        raise ProblemError(422, f"to_seq ({to_seq}) is before from_seq ({from_seq})", code="validation_error")
    operator = session.get(Tenant, key.tenant_id).name == tenants.DEFAULT_TENANT  # the key is audit or admin
    chain = chain or ("deployment" if operator else "tenant")
    if chain == "deployment" and not operator:
        raise ProblemError(
            403,
            "the deployment's chain covers every tenant: walking it needs an audit or admin key of the operator "
            f"tenant ({tenants.DEFAULT_TENANT!r}); chain=tenant walks your own",
            code="insufficient_scope",
        )
    walked = audit.DEPLOYMENT if chain == "deployment" else audit.Chain(tenant_id=key.tenant_id)
    report = audit.verify_chain(session, chain=walked, from_seq=from_seq, to_seq=to_seq, limit=limit)
    return ChainVerification(
        chain=chain,
        tenant_id=walked.tenant_id,
        valid=report.valid,
        checked=report.checked,
        first_seq=report.first_seq,
        last_seq=report.last_seq,
        last_hash=report.last_hash,
        broken=BrokenLink(seq=report.broken_seq, reason=report.reason) if report.broken_seq is not None else None,
        next_from_seq=report.next_from_seq,
    )


@router.get("/summary", response_model=AuditSummary, responses=problems(404))
def audit_summary(
    session: SessionDep,
    key: AuditKey,
    settings: SettingsDep,
    tenant_id: TenantQuery = None,
    model_id: FilterText = None,
) -> AuditSummary:
    """Requests by status, overdue and due soon, receipt-to-completion p50/p95, verification pass rate; per model too."""
    tenant = audited_tenant(session, key, tenant_id)
    if model_id is not None:  # a model unknown to the tenant is 404, as an unknown tenant is, not a row of zeros
        registry.get_model(session, tenant_id=tenant, model_id=model_id)
    now = utcnow()
    overall, per_model = reports.summarize(
        session, tenant_id=tenant, model_id=model_id, now=now, due_soon=timedelta(days=settings.api.due_soon_days)
    )
    return AuditSummary(
        tenant_id=tenant,
        generated_at=now,
        due_soon_days=settings.api.due_soon_days,
        overall=figures(overall),
        models=[ModelFigures(model_id=m, **figures(f).model_dump()) for m, f in per_model.items()],
    )


def figures(f: Figures) -> RequestFigures:
    """Response body of a set of figures."""
    return RequestFigures(
        total=f.total,
        by_status=f.statuses(),
        overdue=f.overdue,
        due_soon=f.due_soon,
        completed_late=f.completed_late,
        completion_seconds=CompletionTimes(p50=f.completion_percentile(50), p95=f.completion_percentile(95)),
        verified=f.verified,
        verification_pass_rate=f.pass_rate,
    )

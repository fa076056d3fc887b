"""Deletion requests: submit (202 + Location + Retry-After, Idempotency-Key), read, list, cancel, extend the
deadline, and the signed erasure certificate of a completed one."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy import Row, and_, bindparam, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CertificateKey, PollKey, SessionDep, SettingsDep, SignerDep, SubmitKey, actor
from api.errors import ProblemError
from api.routes.common import aware, certificate_responses, problems, signed_certificate
from api.schemas import (
    Deadline,
    DeadlineExtension,
    DeadlineExtensionCreate,
    DeletionRequestCreate,
    DeletionRequestPage,
    DeletionRequestRead,
    Progress,
    RequestError,
    RequestSamplePage,
    RequestSampleRead,
    RequestStatus,
)
from ledger import certificates, requests, tenant_keys
from ledger.errors import NotFound
from ledger.tables import ACTIVE_STATUSES, DeletionRequest, ModelVersion, utcnow

router = APIRouter(prefix="/v1/deletion-requests", tags=["deletion-requests"])


def request_reads(session: Session, rows: list[DeletionRequest]) -> list[DeletionRequestRead]:
    """Response bodies for requests, with the versions they produced."""
    return [
        _read(r, v.number if v else None, v.sha256 if v else None)
        for r, v in zip(rows, requests.result_versions(session, requests=rows), strict=True)
    ]


_requests, _versions = DeletionRequest.__table__, ModelVersion.__table__
# A status read is the service's most frequent call: one Core statement (built once, so it keeps its cache
# key), on the connection the key's lookup already holds, of the columns the body shows and the version the
# request published (if any).
STATUS_READ = (
    select(
        *(
            _requests.c[name]
            for name in (
                *("id", "model_id", "status", "phase", "progress_step", "progress_total", "cancel_requested"),
                *("attempts", "retries", "target_kind", "num_targets", "subject_hashes", "method", "parameters"),
                *("received_at", "due_at", "extension", "queued_at", "started_at", "finished_at", "base_version"),
                *("metrics_before", "metrics_after", "verification", "details", "error_code", "error_message"),
            )
        ),
        _versions.c.number.label("result_number"),
        _versions.c.sha256.label("result_sha256"),
    )
    .outerjoin(
        _versions,
        and_(_versions.c.model_id == _requests.c.model_id, _versions.c.number == _requests.c.result_version),
    )
    .where(_requests.c.id == bindparam("request_id"), _requests.c.tenant_id == bindparam("tenant_id"))
)


def _read(r: DeletionRequest | Row, result_number: int | None, result_sha256: str | None) -> DeletionRequestRead:
    return DeletionRequestRead(
        id=r.id,
        model_id=r.model_id,
        status=r.status,  # type: ignore[arg-type]
        progress=Progress(phase=r.phase, step=r.progress_step, total=r.progress_total),
        cancel_requested=r.cancel_requested,
        attempts=r.attempts,
        retries=r.retries,
        target_kind=r.target_kind,  # type: ignore[arg-type]
        num_targets=r.num_targets,
        subject_hashes=r.subject_hashes,
        method=r.method,
        parameters=r.parameters,
        received_at=r.received_at,
        due_at=r.due_at,
        overdue=r.status in ACTIVE_STATUSES and r.due_at < utcnow(),
        extension=DeadlineExtension.model_validate(r.extension) if r.extension else None,
        queued_at=r.queued_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        base_version=r.base_version,
        result_version=result_number,
        result_sha256=result_sha256,
        metrics_before=r.metrics_before,
        metrics_after=r.metrics_after,
        verification=r.verification,
        details=r.details,
        error=RequestError(code=r.error_code, message=r.error_message) if r.error_code else None,
    )


def _target(body: DeletionRequestCreate, tenant_key: tenant_keys.Key) -> requests.Target:
    # Subject ids enter the ledger only as keyed hashes.
    if body.subject_ids is not None:
        hashes = tuple(tenant_key.subject_hash(s) for s in body.subject_ids)
        return requests.Target(kind="subjects", subject_hashes=hashes)
    return requests.Target(kind="samples", sample_ids=tuple(body.sample_ids or ()))


@router.post("", status_code=202, response_model=DeletionRequestRead, responses=problems(400, 404, 413, 429))
def create_deletion_request(
    body: DeletionRequestCreate,
    session: SessionDep,
    key: SubmitKey,
    settings: SettingsDep,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Same key + same body returns the same request; same key + another body is a 422.",
        ),
    ] = None,
) -> DeletionRequestRead:
    """Accept an erasure request; poll the Location until it is completed, failed or cancelled.

    Each key may submit `LTU_RATE_LIMIT_PER_MINUTE` requests a minute after a burst of
    `LTU_RATE_LIMIT_BURST`; beyond that the answer is 429 with Retry-After. Replays are free.
    """
    # The schema's MAX_TARGETS is the ceiling every deployment accepts; an operator may set a lower one.
    limit = settings.api.max_subjects_per_request
    if len(body.subject_ids or body.sample_ids or ()) > limit:
        raise ProblemError(
            422,
            f"at most {limit} subject or sample ids per request (LTU_MAX_SUBJECTS_PER_REQUEST)",
            code="validation_error",
        )
    tenant_key = tenant_keys.current(
        session, tenant_id=key.tenant_id, secret=settings.ledger.secret_key, actor=actor(key)
    )
    request, created = requests.submit(
        session,
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        model_id=body.model_id,
        target=_target(body, tenant_key),
        method=body.method or settings.api.default_method,
        parameters=body.parameters,
        idempotency_key=idempotency_key,
        body_hash=tenant_key.body_hash(body.model_dump(mode="json")),
        tenant_key_id=tenant_key.id,
        actor=actor(key),
        per_minute=settings.api.rate_limit_per_minute,
        burst=settings.api.rate_limit_burst,
    )
    response.headers["Location"] = f"/v1/deletion-requests/{request.id}"
    response.headers["Retry-After"] = str(settings.api.retry_after_seconds)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return request_reads(session, [request])[0]


@router.get("", response_model=DeletionRequestPage, responses=problems())
def list_deletion_requests(
    session: SessionDep,
    key: PollKey,
    settings: SettingsDep,
    status: RequestStatus | None = None,
    model_id: str | None = None,
    received_after: datetime | None = None,
    received_before: datetime | None = None,
    deadline: Annotated[
        Deadline | None,
        Query(description="overdue: open past the deadline; due_soon: open, deadline within LTU_DUE_SOON_DAYS (7)."),
    ] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeletionRequestPage:
    """The tenant's requests, newest first."""
    page = requests.list_requests(
        session,
        tenant_id=key.tenant_id,
        status=status,
        model_id=model_id,
        received_after=aware(received_after),
        received_before=aware(received_before),
        deadline=deadline,
        due_soon=timedelta(days=settings.api.due_soon_days),
        cursor=cursor,
        limit=limit,
    )
    return DeletionRequestPage(items=request_reads(session, page.items), next_cursor=page.next_cursor)


@router.get("/{request_id}", response_model=DeletionRequestRead, responses=problems(404))
async def get_deletion_request(
    request_id: str, session: SessionDep, key: PollKey, settings: SettingsDep, response: Response
) -> DeletionRequestRead:
    """One request; while it is active, Retry-After says when to poll again."""
    # async, with only the read in a worker thread: a `def` route also hops to one to validate its answer.
    found = await run_in_threadpool(_status_row, session, tenant_id=key.tenant_id, request_id=request_id)
    if found.status in ACTIVE_STATUSES:
        response.headers["Retry-After"] = str(settings.api.retry_after_seconds)
    return _read(found, found.result_number, found.result_sha256)


def _status_row(session: Session, *, tenant_id: str, request_id: str) -> Row:
    found = session.connection().execute(STATUS_READ, {"request_id": request_id, "tenant_id": tenant_id}).first()
    if found is None:
        raise NotFound(f"deletion request {request_id} not found")
    return found


@router.post("/{request_id}/cancel", status_code=202, response_model=DeletionRequestRead, responses=problems(404, 409))
def cancel_deletion_request(request_id: str, session: SessionDep, key: SubmitKey) -> DeletionRequestRead:
    """Cancel a request: at once if it has not started, else at the worker's next check."""
    request = requests.cancel(session, tenant_id=key.tenant_id, request_id=request_id, actor=actor(key))
    return request_reads(session, [request])[0]


@router.get("/{request_id}/samples", response_model=RequestSamplePage, responses=problems(404))
def list_request_samples(request_id: str, session: SessionDep, key: PollKey) -> RequestSamplePage:
    """The samples the request names and whether each has been erased (and by which request)."""
    request = requests.get_request(session, tenant_id=key.tenant_id, request_id=request_id)
    return RequestSamplePage(
        items=[RequestSampleRead.model_validate(s) for s in requests.request_samples(session, request_id=request.id)]
    )


@router.post(
    "/{request_id}/deadline-extension", response_model=DeletionRequestRead, responses=problems(400, 404, 409, 413)
)
def extend_deadline(
    request_id: str, body: DeadlineExtensionCreate, session: SessionDep, key: SubmitKey, settings: SettingsDep
) -> DeletionRequestRead:
    """Extend an open request's deadline once by one or two months (GDPR Art. 12(3)), within a month of receipt."""
    request = requests.extend_deadline(
        session,
        tenant_id=key.tenant_id,
        request_id=request_id,
        months=body.months,
        reason=body.reason,
        reason_hash=tenant_keys.current(
            session, tenant_id=key.tenant_id, secret=settings.ledger.secret_key, actor=actor(key)
        ).body_hash({"deadline_extension_reason": body.reason}),
        actor=actor(key),
    )
    return request_reads(session, [request])[0]


@router.get(
    "/{request_id}/certificate",
    response_class=Response,
    responses=certificate_responses("The signed certificate (one line of canonical JSON)."),
)
def get_certificate(request_id: str, session: SessionDep, key: CertificateKey, signer: SignerDep) -> Response:
    """The signed erasure certificate of a completed request; check it with `ltu certificate verify`."""
    content = certificates.certificate_content(session, tenant_id=key.tenant_id, request_id=request_id)
    return signed_certificate(signer, content, name=request_id)

"""Erasures of a person: submit (202 + Location + Retry-After, Idempotency-Key), read, list, the signed
certificate over every model and the dataset purge."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy.orm import Session

from api.deps import CertificateKey, PollKey, SessionDep, SettingsDep, SignerDep, SubmitKey, actor
from api.errors import ProblemError
from api.routes.common import problems
from api.schemas import (
    DatasetPurgeRead,
    ErasureCreate,
    ErasurePage,
    ErasureRead,
    ErasureRequestRead,
    ErasureStatus,
    Progress,
)
from ledger import certificates, erasures
from ledger.hashing import body_hash, subject_hash
from ledger.tables import ACTIVE_STATUSES, Erasure

router = APIRouter(prefix="/v1/erasures", tags=["erasures"])


def erasure_reads(session: Session, rows: list[Erasure]) -> list[ErasureRead]:
    """Response bodies for erasures, computed from their requests."""
    return [_read(state) for state in erasures.states(session, rows)]


def _read(state: erasures.ErasureState) -> ErasureRead:
    erasure = state.erasure
    return ErasureRead(
        id=erasure.id,
        status=state.status,  # type: ignore[arg-type]
        subject_count=len(erasure.subject_hashes),
        subjects_not_found=erasure.subjects_not_found,
        received_at=erasure.received_at,
        due_at=state.due_at,
        finished_at=state.finished_at,
        requests=[
            ErasureRequestRead(
                request_id=r.id,
                model_id=r.model_id,
                status=r.status,  # type: ignore[arg-type]
                progress=Progress(phase=r.phase, step=r.progress_step, total=r.progress_total),
                result_version=r.result_version,
            )
            for r in state.requests
        ],
        dataset_purge=[DatasetPurgeRead(**vars(p)) for p in state.dataset_purge],
    )


@router.post("", status_code=202, response_model=ErasureRead, responses=problems(400, 404, 413, 429))
def create_erasure(
    body: ErasureCreate,
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
            description="Same key + same body returns the same erasure; same key + another body is a 422.",
        ),
    ] = None,
) -> ErasureRead:
    """Erase data subjects from every model of the tenant trained on them: one deletion request per model.

    Subjects found in no dataset are counted in `subjects_not_found` (not an error); models that
    already forgot a subject get no request for it. Poll the Location until the erasure is
    completed, failed or cancelled. Rate-limited like a deletion request (one token per erasure).
    """
    limit = settings.api.max_subjects_per_request
    if len(body.subject_ids) > limit:
        raise ProblemError(
            422, f"at most {limit} subject ids per erasure (LTU_MAX_SUBJECTS_PER_REQUEST)", code="validation_error"
        )
    secret = settings.ledger.secret_key
    erasure, created = erasures.submit(
        session,
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        per_minute=settings.api.rate_limit_per_minute,
        burst=settings.api.rate_limit_burst,
        # Subject ids enter the ledger only as keyed hashes.
        subject_hashes=[subject_hash(secret, s) for s in body.subject_ids],
        model_ids=body.model_ids,
        dataset_ids=body.dataset_ids,
        method=body.method or settings.api.default_method,
        parameters=body.parameters or {},
        idempotency_key=idempotency_key,
        body_hash=body_hash(secret, body.model_dump(mode="json")),
        actor=actor(key),
    )
    response.headers["Location"] = f"/v1/erasures/{erasure.id}"
    response.headers["Retry-After"] = str(settings.api.retry_after_seconds)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return erasure_reads(session, [erasure])[0]


@router.get("", response_model=ErasurePage, responses=problems())
def list_erasures(
    session: SessionDep,
    key: PollKey,
    status: ErasureStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ErasurePage:
    """The tenant's erasures, newest first."""
    page = erasures.list_erasures(session, tenant_id=key.tenant_id, status=status, cursor=cursor, limit=limit)
    return ErasurePage(items=erasure_reads(session, page.items), next_cursor=page.next_cursor)


@router.get("/{erasure_id}", response_model=ErasureRead, responses=problems(404))
def get_erasure(
    erasure_id: str, session: SessionDep, key: PollKey, settings: SettingsDep, response: Response
) -> ErasureRead:
    """One erasure; while it is active, Retry-After says when to poll again."""
    erasure = erasures.get_erasure(session, tenant_id=key.tenant_id, erasure_id=erasure_id)
    read = erasure_reads(session, [erasure])[0]
    if read.status in ACTIVE_STATUSES:
        response.headers["Retry-After"] = str(settings.api.retry_after_seconds)
    return read


@router.get(
    "/{erasure_id}/certificate",
    response_class=Response,
    responses={
        **problems(404, 409, 503),
        200: {
            "content": {"application/json": {}},
            "description": "The signed certificate (one line of canonical JSON), as for a deletion request.",
        },
    },
)
def get_erasure_certificate(erasure_id: str, session: SessionDep, key: CertificateKey, signer: SignerDep) -> Response:
    """The signed certificate of a completed erasure: every model's erasure and the dataset purge."""
    content = certificates.erasure_certificate_content(session, tenant_id=key.tenant_id, erasure_id=erasure_id)
    return Response(
        signer.sign(content),
        media_type="application/json",
        headers={"Content-Disposition": f'inline; filename="erasure-certificate-{erasure_id}.json"'},
    )

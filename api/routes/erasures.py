"""Erasures of a person: submit (202 + Location + Retry-After, Idempotency-Key), read, list, the signed
certificate over every model and the dataset purge."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.deps import CertificateKey, DatabaseDep, PollKey, SessionDep, SettingsDep, SignerDep, SubmitKey, actor
from api.edge import load_json
from api.errors import ProblemError
from api.routes.common import certificate_responses, problems, signed_certificate
from api.schemas import (
    BulkErasureCreate,
    BulkSubjectLine,
    DatasetPurgeRead,
    ErasureCreate,
    ErasurePage,
    ErasureRead,
    ErasureRequestRead,
    ErasureStatus,
    ErasureSubjectRead,
    Progress,
)
from ledger import certificates, erasures, tenant_keys
from ledger.db import Database
from ledger.tables import ACTIVE_STATUSES, Erasure
from ledger.tenants import LiveKey
from ltu_settings import Settings

NDJSON = "application/x-ndjson"
EXPORT_CHUNK = 1000  # subjects per read transaction of the export
CSV_COLUMNS = ("subject_hash", "found", "model_id", "request_id", "status", "erased_in_version")

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
    return _accept(session, response, key, settings, body, idempotency_key, bulk=False)


class NDJSONLines(JSONResponse):
    """The OpenAPI face of an application/x-ndjson export: FastAPI documents the response model only under a
    JSON response class, and each line is one such JSON document. The route itself streams."""

    media_type = NDJSON


async def _raw_body(request: Request) -> bytes:
    # Read here, not in the route: the route itself runs in a worker thread, since its ledger work takes seconds.
    return await request.body()


@router.post(
    "/bulk",
    status_code=202,
    response_model=ErasureRead,
    responses=problems(400, 404, 413, 415, 429),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": BulkErasureCreate.model_json_schema()},
                NDJSON: {
                    "schema": {
                        "description": "One subject per line: a JSON string, or an object as below. Options "
                        "(model_ids, dataset_ids, method, parameters) are query parameters.",
                        "oneOf": [
                            {"type": "string", "minLength": 1, "maxLength": 255},
                            BulkSubjectLine.model_json_schema(),
                        ],
                    }
                },
            },
        }
    },
)
def create_bulk_erasure(
    raw: Annotated[bytes, Depends(_raw_body)],
    request: Request,
    session: SessionDep,
    key: SubmitKey,
    settings: SettingsDep,
    response: Response,
    model_ids: Annotated[list[str] | None, Query(description="NDJSON bodies only: only these models.")] = None,
    dataset_ids: Annotated[
        list[str] | None, Query(description="NDJSON bodies only: only these datasets' models.")
    ] = None,
    method: Annotated[str | None, Query(description="NDJSON bodies only: the unlearning method.")] = None,
    parameters: Annotated[
        str | None, Query(description="NDJSON bodies only: method parameters, a JSON object.")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Same key + same subjects and options returns the same erasure; another body is a 422.",
        ),
    ] = None,
) -> ErasureRead:
    """Erase up to 100,000 data subjects in one erasure: a JSON body, or NDJSON (one subject per line).

    The body may be at most LTU_MAX_BULK_BYTES (413 beyond). Repeated subjects count once. As POST
    /v1/erasures, it creates one erasure with one deletion request per affected model, each carrying
    all the subjects that model still holds (one coalesced run per model); GET /v1/erasures/{id}/subjects
    exports each subject's outcome. Rate-limited as one erasure.
    """
    query = {"model_ids": model_ids, "dataset_ids": dataset_ids, "method": method, "parameters": parameters}
    body = _bulk_body(raw, request.headers.get("content-type"), query)
    return _accept(session, response, key, settings, body, idempotency_key, bulk=True)


def _accept(
    session: Session,
    response: Response,
    key: LiveKey,
    settings: Settings,
    body: ErasureCreate | BulkErasureCreate,
    idempotency_key: str | None,
    *,
    bulk: bool,
) -> ErasureRead:
    """Submit an erasure (single or bulk) and answer 202 with its Location; a replay says so."""
    tenant_key = tenant_keys.current(
        session, tenant_id=key.tenant_id, secret=settings.ledger.secret_key, actor=actor(key)
    )
    erasure, created = erasures.submit(
        session,
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        per_minute=settings.api.rate_limit_per_minute,
        burst=settings.api.rate_limit_burst,
        bulk=bulk,
        # Subject ids enter the ledger only as keyed hashes.
        subject_hashes=[tenant_key.subject_hash(s) for s in body.subject_ids],
        model_ids=body.model_ids,
        dataset_ids=body.dataset_ids,
        method=body.method or settings.api.default_method,
        parameters=body.parameters or {},
        idempotency_key=idempotency_key,
        # The parsed body: the same subjects as JSON or NDJSON (or with repeats) are the same erasure.
        body_hash=tenant_key.body_hash(body.model_dump(mode="json")),
        tenant_key_id=tenant_key.id,
        actor=actor(key),
    )
    response.headers["Location"] = f"/v1/erasures/{erasure.id}"
    response.headers["Retry-After"] = str(settings.api.retry_after_seconds)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return erasure_reads(session, [erasure])[0]


def _bulk_body(raw: bytes, content_type: str | None, query: dict[str, Any]) -> BulkErasureCreate:
    """The bulk body of either media type, validated as one BulkErasureCreate (422 problem+json if not)."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    options = {name: value for name, value in query.items() if value is not None}
    if media == NDJSON:
        if "parameters" in options:
            options["parameters"] = _json(options["parameters"].encode(), ("query", "parameters"))
        data = {"subject_ids": _ndjson_subjects(raw), **options}
    elif media == "application/json":
        if options:
            raise ProblemError(
                422, f"{', '.join(options)}: with a JSON body, options go in the body", code="validation_error"
            )
        data = _json(raw, ("body",))
    else:
        raise ProblemError(415, f"send {NDJSON} or application/json, not {media}", code="unsupported_media_type")
    try:
        return BulkErasureCreate.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _json(raw: bytes, loc: tuple[str | int, ...]) -> Any:
    """JSON held to the edge's rules (NUL, lone surrogates, depth, numbers), or 422."""
    try:
        return load_json(raw, loc)
    except ValueError:
        where = ".".join(str(part) for part in loc)
        raise ProblemError(422, f"{where}: not JSON", code="validation_error") from None


def _ndjson_subjects(raw: bytes) -> list[str]:
    """The subject ids of an NDJSON body (blank lines skipped), each line checked as a JSON body is."""
    subjects = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        value = _json(line, ("body", number))
        if isinstance(value, dict):
            try:
                value = BulkSubjectLine.model_validate(value).subject_id
            except ValidationError:
                value = None
        if not isinstance(value, str):
            raise ProblemError(
                422,
                f'body.{number}: a line is a subject id (a JSON string) or {{"subject_id": ...}}',
                code="validation_error",
            )
        subjects.append(value)
    return subjects


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
    responses=certificate_responses("The signed certificate (one line of canonical JSON), as for a deletion request."),
)
def get_erasure_certificate(erasure_id: str, session: SessionDep, key: CertificateKey, signer: SignerDep) -> Response:
    """The signed certificate of a completed erasure: every model's erasure and the dataset purge."""
    content = certificates.erasure_certificate_content(session, tenant_id=key.tenant_id, erasure_id=erasure_id)
    return signed_certificate(signer, content, name=erasure_id)


@router.get(
    "/{erasure_id}/subjects",
    response_class=NDJSONLines,
    response_model=ErasureSubjectRead,
    responses={
        **problems(404),
        200: {
            "description": "Every subject of the erasure, in its order: one ErasureSubjectRead per line (ndjson), "
            "or one CSV row per subject and model (a subject no model had to forget: one row, model columns empty).",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
            },
        },
    },
)
def export_erasure_subjects(
    erasure_id: str,
    session: SessionDep,
    database: DatabaseDep,
    key: PollKey,
    format: Annotated[Literal["ndjson", "csv"], Query(description="ndjson (default) or csv.")] = "ndjson",
) -> Response:
    """Each subject of an erasure and its outcome: found in a dataset or not, and its request per model.

    Streamed in chunks, each read in its own short transaction: an export of 100,000 subjects never
    holds a snapshot, or every outcome, at once.
    """
    erasure = erasures.get_erasure(session, tenant_id=key.tenant_id, erasure_id=erasure_id)
    chunks = _outcome_chunks(database, erasure.tenant_id, erasure.id, list(erasure.subject_hashes))
    if format == "ndjson":
        return StreamingResponse(_ndjson(chunks), media_type=NDJSON)
    return StreamingResponse(
        _csv(chunks),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="erasure-subjects-{erasure_id}.csv"'},
    )


def _outcome_chunks(
    database: Database, tenant_id: str, erasure_id: str, subject_hashes: list[str]
) -> Iterator[list[erasures.SubjectOutcome]]:
    for start in range(0, len(subject_hashes), EXPORT_CHUNK):
        with database.read() as session:
            yield erasures.subject_outcomes(
                session,
                tenant_id=tenant_id,
                erasure_id=erasure_id,
                subject_hashes=subject_hashes[start : start + EXPORT_CHUNK],
            )


def _ndjson(chunks: Iterator[list[erasures.SubjectOutcome]]) -> Iterator[str]:
    for outcomes in chunks:
        yield "".join(
            json.dumps(
                {"subject_hash": o.subject_hash, "found": o.found, "models": [vars(m) for m in o.models]},
                separators=(",", ":"),
            )
            + "\n"
            for o in outcomes
        )


def _csv(chunks: Iterator[list[erasures.SubjectOutcome]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for outcomes in chunks:
        for o in outcomes:
            found = str(o.found).lower()
            if not o.models:
                writer.writerow((o.subject_hash, found, "", "", "", ""))
            for m in o.models:
                writer.writerow((o.subject_hash, found, m.model_id, m.request_id, m.status, m.erased_in_version))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()

"""Models and their versions: register with initial safetensors weights (admin), list, read, download; the
model's audit reference models (the likelihood-ratio tier): status, train on demand, cancel."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Body, Depends, File, Form, Path, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from api.deps import AdminKey, DatabaseDep, ReadKey, SessionDep, SettingsDep, StoreDep, actor
from api.edge import load_json
from api.errors import ProblemError
from api.routes.common import problems
from api.schemas import (
    AuditReferencesCreate,
    AuditReferencesRead,
    ModelPage,
    ModelRead,
    ModelVersionPage,
    ModelVersionRead,
    ReferenceSetError,
    ReferenceSetProgress,
    ReferenceSetRead,
    TrainRecipeCreate,
)
from api.uploads import TooLarge, UploadError, read_safetensors_header, save_stream
from ledger import datasets, references, registry, retention
from ledger.tables import AuditReferenceSet, Dataset, Model, ModelVersion

router = APIRouter(prefix="/v1/models", tags=["models"])

# The recipe travels as a JSON text in a form field, so no operation refers to its model and FastAPI lists no
# component for it: the field carries its schema itself.
RECIPE_SCHEMA = TrainRecipeCreate.model_json_schema()
DEFAULT_REFERENCE_MODELS = 4  # an on-demand set's count when LTU_AUDIT_REFERENCE_MODELS is 0 (none at registration)

# Versions count from 1; the bound keeps a path value inside the INTEGER column (a larger one is a 422,
# not a database error).
VersionNumber = Annotated[int, Path(ge=1, le=2**31 - 1, description="The version number (from 1).")]


def version_read(model: Model, version: ModelVersion, parent_number: int | None) -> ModelVersionRead:
    """Response body of a model version."""
    return ModelVersionRead(
        id=version.id,
        model_id=model.id,
        number=version.number,
        parent_number=parent_number,
        producing_request_id=version.producing_request_id,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        state=version.state,
        current=version.number == model.current_version,
        metrics=version.metrics,
        created_at=version.created_at,
        weights_url=f"/v1/models/{model.id}/versions/{version.number}/weights",
    )


def model_read(model: Model, status: references.ReferenceStatus) -> ModelRead:
    """Response body of a model, with where its audit reference models stand."""
    read = ModelRead.model_validate(model)
    return read.model_copy(update={"audit_status": status.audit_status, "audit_tier": status.tier})


def reference_set_read(ref: AuditReferenceSet | None) -> ReferenceSetRead | None:
    """Response body of one reference set."""
    if ref is None:
        return None
    return ReferenceSetRead(
        id=ref.id,
        status=ref.status,  # type: ignore[arg-type]
        reason=ref.reason,  # type: ignore[arg-type]
        count=ref.count,
        seed=ref.seed,
        progress=ReferenceSetProgress(phase=ref.phase, step=ref.progress_step, total=ref.progress_total),
        cancel_requested=ref.cancel_requested,
        attempts=ref.attempts,
        trained_on_version=ref.trained_on_version,
        train_samples=ref.train_samples,
        erased_samples=ref.erased_samples,
        sha256=ref.sha256,
        size_bytes=ref.size_bytes,
        seconds=ref.seconds,
        created_at=ref.created_at,
        started_at=ref.started_at,
        finished_at=ref.finished_at,
        error=ReferenceSetError(code=ref.error_code, message=ref.error_message) if ref.error_code else None,
    )


def audit_references_read(model: Model, status: references.ReferenceStatus) -> AuditReferencesRead:
    """Response body of a model's audit reference models."""
    return AuditReferencesRead(
        model_id=model.id,
        audit_status=status.audit_status,  # type: ignore[arg-type]
        audit_tier=status.tier,  # type: ignore[arg-type]
        latest=reference_set_read(status.latest),
        in_use=reference_set_read(status.in_use),
    )


class WeightsResponse(FileResponse):
    """A weights file whose Range errors are problem+json like every other error (Starlette's are bare text).

    Starlette answers a Range it cannot serve from inside the response; raised from there, the
    ProblemError still reaches the app's handlers, since nothing has been sent yet.
    """

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            raise ProblemError(400, f"Range: {exc.content}", code="invalid_range") from None
        except RangeNotSatisfiable as exc:
            raise ProblemError(
                416,
                f"Range: the file has {exc.max_size} bytes; no requested range starts inside it",
                code="range_not_satisfiable",
                headers={"Content-Range": f"bytes */{exc.max_size}"},
            ) from None


async def _name_not_empty(request: Request) -> None:
    # FastAPI reads an empty form field as an absent one (its default); the schema's minLength refuses it.
    if (await request.form()).get("name") == "":
        raise ProblemError(
            422,
            "name: must not be empty (leave the field out for the default)",
            code="validation_error",
            errors=[
                {"loc": ["body", "name"], "msg": "String should have at least 1 character", "type": "string_too_short"}
            ],
        )


def _recipe(text: str) -> dict:
    try:
        return TrainRecipeCreate.model_validate(load_json(text, ("body", "recipe"))).model_dump()
    except ValueError as exc:  # pydantic's ValidationError is one, and so is JSON that does not parse
        message = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else "not valid JSON"
        raise ProblemError(422, f"recipe: {message}", code="validation_error") from None


def _check_fits(arch: dict, dataset: Dataset) -> None:
    channels, height, width = dataset.image_shape
    wrong = []
    if arch.get("num_classes") != dataset.num_classes:
        wrong.append(f"num_classes {arch.get('num_classes')} (dataset: {dataset.num_classes})")
    if "in_chans" in arch and arch["in_chans"] != channels:
        wrong.append(f"in_chans {arch['in_chans']} (dataset images have {channels} channels)")
    if "img_size" in arch and height == width and arch["img_size"] != height:
        wrong.append(f"img_size {arch['img_size']} (dataset images are {height}×{width})")
    if wrong:
        raise ProblemError(
            422,
            "the checkpoint's architecture does not fit the dataset: " + "; ".join(wrong),
            code="architecture_mismatch",
        )


@router.post(
    "",
    status_code=201,
    response_model=ModelRead,
    responses=problems(400, 404, 413, 415),
    dependencies=[Depends(_name_not_empty)],
)
def register_model(
    weights: Annotated[
        UploadFile, File(description="Initial weights: a safetensors file written by ltu_core.models.save_model.")
    ],
    dataset_id: Annotated[str, Form(min_length=1, max_length=255)],
    session: SessionDep,
    key: AdminKey,
    settings: SettingsDep,
    store: StoreDep,
    response: Response,
    name: Annotated[str, Form(min_length=1, max_length=200)] = "model",
    recipe: Annotated[
        str | None,
        Form(
            description="JSON training recipe (TrainRecipeCreate); needed for the Retrain fallback.",
            json_schema_extra={"contentMediaType": "application/json", "contentSchema": RECIPE_SCHEMA},
        ),
    ] = None,
) -> ModelRead:
    """Register a model trained on a registered dataset; its weights become version 1.

    Upload limit: the weights file may be at most LTU_MAX_WEIGHTS_BYTES (default 1 GiB); a larger one is
    refused with 413 (`payload_too_large`) as soon as it passes the limit.
    """
    dataset = datasets.get_dataset(session, tenant_id=key.tenant_id, dataset_id=dataset_id)
    session.commit()  # the lookup's transaction ends: copying the weights holds no write lock (SQLite)
    recipe_fields = _recipe(recipe) if recipe else None
    staged = store.staging_file(".safetensors")
    try:
        save_stream(weights.file, staged, limit=settings.api.max_weights_bytes)
        header = read_safetensors_header(staged)
        _check_fits(header.architecture, dataset)
        blob = store.stage_model(session, staged)  # in place once the registration commits
    except TooLarge as exc:
        raise ProblemError(413, str(exc), code="payload_too_large") from None
    except UploadError as exc:
        default = "unsupported_media_type" if exc.status == 415 else "invalid_checkpoint"
        raise ProblemError(exc.status, str(exc), code=exc.code or default) from None
    finally:
        store.discard(staged)
    model, _ = registry.create_model(
        session,
        tenant_id=key.tenant_id,
        name=name,
        dataset_id=dataset.id,
        architecture=header.architecture,
        recipe=recipe_fields,
        sha256=blob.sha256,
        size_bytes=blob.size,
        storage_key=blob.key,
        actor=actor(key),
    )
    if recipe_fields is not None and settings.api.audit_reference_models > 0:
        # In the registration's transaction: the model and its first reference training exist together or not at all.
        references.queue(
            session,
            model=model,
            count=settings.api.audit_reference_models,
            reason=references.REGISTRATION,
            actor=actor(key),
        )
    response.headers["Location"] = f"/v1/models/{model.id}"
    return model_read(model, references.status(session, model_id=model.id))


@router.get("", response_model=ModelPage, responses=problems())
def list_models(
    session: SessionDep, key: ReadKey, cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> ModelPage:
    """The tenant's models, newest first."""
    page = registry.list_models(session, tenant_id=key.tenant_id, cursor=cursor, limit=limit)
    status = references.statuses(session, model_ids=[m.id for m in page.items])
    return ModelPage(items=[model_read(m, status[m.id]) for m in page.items], next_cursor=page.next_cursor)


@router.get("/{model_id}", response_model=ModelRead, responses=problems(404))
def get_model(model_id: str, session: SessionDep, key: ReadKey) -> ModelRead:
    """One model."""
    model = registry.get_model(session, tenant_id=key.tenant_id, model_id=model_id)
    return model_read(model, references.status(session, model_id=model.id))


@router.get("/{model_id}/audit-references", response_model=AuditReferencesRead, responses=problems(404))
def get_audit_references(model_id: str, session: SessionDep, key: ReadKey) -> AuditReferencesRead:
    """The model's audit reference models: the newest training with its progress, the ready set in use, the tier."""
    model = registry.get_model(session, tenant_id=key.tenant_id, model_id=model_id)
    return audit_references_read(model, references.status(session, model_id=model.id))


@router.post(
    "/{model_id}/audit-references",
    status_code=202,
    response_model=AuditReferencesRead,
    responses=problems(400, 404, 409, 413),
)
def train_audit_references(
    model_id: str,
    session: SessionDep,
    key: AdminKey,
    settings: SettingsDep,
    response: Response,
    body: Annotated[AuditReferencesCreate | None, Body()] = None,
) -> AuditReferencesRead:
    """Queue a training of the model's audit reference models; while one is queued or running, that one is answered.

    409 (no_recipe) for a model registered without its training recipe. When the set is ready, the
    model's erasures are audited with the likelihood-ratio tier and older sets are superseded.
    """
    count = (body.count if body else None) or settings.api.audit_reference_models or DEFAULT_REFERENCE_MODELS
    ref, _ = references.queue_on_demand(
        session, tenant_id=key.tenant_id, model_id=model_id, count=count, actor=actor(key)
    )
    response.headers["Location"] = f"/v1/models/{ref.model_id}/audit-references"
    response.headers["Retry-After"] = str(settings.api.retry_after_seconds)
    model = registry.get_model(session, tenant_id=key.tenant_id, model_id=ref.model_id)
    return audit_references_read(model, references.status(session, model_id=model.id))


@router.post("/{model_id}/audit-references/cancel", response_model=AuditReferencesRead, responses=problems(404, 409))
def cancel_audit_references(model_id: str, session: SessionDep, key: AdminKey) -> AuditReferencesRead:
    """Cancel the queued training now, or ask the running one to stop at its next check (409: nothing to cancel)."""
    ref = references.cancel(session, tenant_id=key.tenant_id, model_id=model_id, actor=actor(key))
    model = registry.get_model(session, tenant_id=key.tenant_id, model_id=ref.model_id)
    return audit_references_read(model, references.status(session, model_id=model.id))


@router.get("/{model_id}/versions", response_model=ModelVersionPage, responses=problems(404))
def list_model_versions(model_id: str, session: SessionDep, key: ReadKey) -> ModelVersionPage:
    """All versions of a model, newest first."""
    model = registry.get_model(session, tenant_id=key.tenant_id, model_id=model_id)
    versions = registry.list_versions(session, model_id=model.id)
    numbers = {v.id: v.number for v in versions}
    return ModelVersionPage(items=[version_read(model, v, numbers.get(v.parent_id or "")) for v in versions])


@router.get("/{model_id}/versions/{number}", response_model=ModelVersionRead, responses=problems(404))
def get_model_version(model_id: str, number: VersionNumber, session: SessionDep, key: ReadKey) -> ModelVersionRead:
    """One version of a model."""
    model = registry.get_model(session, tenant_id=key.tenant_id, model_id=model_id)
    version = registry.get_version(session, model_id=model.id, number=number)
    parent = next(
        (v.number for v in registry.list_versions(session, model_id=model.id) if v.id == version.parent_id), None
    )
    return version_read(model, version, parent)


@router.get(
    "/{model_id}/versions/{number}/weights",
    response_class=WeightsResponse,
    responses={
        **problems(400, 404, 410, 416),
        200: {"content": {"application/octet-stream": {}}, "description": "safetensors weights"},
        206: {
            "content": {"application/octet-stream": {}, "multipart/byteranges": {}},
            "description": "The requested byte range(s) of the weights (Range: bytes=...)",
        },
    },
)
def download_weights(
    model_id: str, number: VersionNumber, session: SessionDep, key: ReadKey, store: StoreDep, database: DatabaseDep
) -> WeightsResponse:
    """The version's safetensors file; ETag and Repr-Digest carry its sha256.

    The current version needs `read`; a superseded one, which still holds the subjects erased since,
    needs `admin` (403 `insufficient_scope` otherwise) until it is purged (410). Every download is
    audited (`model_version.downloaded`: version, scope, key id).
    `Range: bytes=...` is honoured (206); a malformed Range is 400 (`invalid_range`), one that starts
    past the end 416 (`range_not_satisfiable`, with `Content-Range: bytes */size`).
    """
    model = registry.get_model(session, tenant_id=key.tenant_id, model_id=model_id)
    version = registry.get_version(session, model_id=model.id, number=number)
    path = store.path(version.storage_key)
    if version.state == "purged" or not path.is_file():
        raise ProblemError(410, f"the weights of version {number} are no longer stored", code="weights_purged")
    scope = retention.download_scope(model, version)
    if scope not in key.scopes and "admin" not in key.scopes:
        raise ProblemError(
            403,
            f"version {number} is superseded and still holds erased subjects: downloading it needs the admin scope",
            code="insufficient_scope",
        )
    used = scope if scope in key.scopes else "admin"
    with database.transaction() as audit_session:
        retention.record_download(audit_session, model=model, version=version, scope=used, key_id=key.id)
    digest = base64.b64encode(bytes.fromhex(version.sha256)).decode()
    return WeightsResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{model.name}-v{number}.safetensors",
        headers={"ETag": f'"{version.sha256}"', "Repr-Digest": f"sha-256=:{digest}:"},
    )

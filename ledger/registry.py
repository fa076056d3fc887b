"""Models and model versions: registration, listing, and the forward-only `current` pointer.

Version states: `ready` (the current one), `superseded` (an older one, still stored: it contains
data erased since), `purged` (its weights were deleted from the artifact store, ledger.retention).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ledger import audit
from ledger.errors import Conflict, NotFound, StaleBase
from ledger.pagination import Page, newest_first
from ledger.records import Metrics
from ledger.tables import Model, ModelVersion, utcnow


def create_model(
    session: Session,
    *,
    tenant_id: str,
    name: str,
    dataset_id: str,
    architecture: dict[str, Any],
    recipe: dict[str, Any] | None,
    sha256: str,
    size_bytes: int,
    storage_key: str,
    actor: str,
) -> tuple[Model, ModelVersion]:
    """Register a model with its initial weights as version 1."""
    model = Model(
        tenant_id=tenant_id,
        name=name,
        dataset_id=dataset_id,
        architecture=architecture,
        recipe=recipe,
        current_version=1,
    )
    session.add(model)
    session.flush()
    version = ModelVersion(
        model_id=model.id, number=1, sha256=sha256, size_bytes=size_bytes, storage_key=storage_key, state="ready"
    )
    session.add(version)
    session.flush()
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="model.registered",
        resource_type="model",
        resource_id=model.id,
        model_id=model.id,
        data={"name": name, "dataset_id": dataset_id, "architecture": architecture.get("name")},
    )
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="model_version.created",
        resource_type="model_version",
        resource_id=version.id,
        model_id=model.id,
        data={"number": 1, "sha256": sha256},
    )
    return model, version


def get_model(session: Session, *, tenant_id: str, model_id: str) -> Model:
    """The tenant's model, or NotFound."""
    model = session.get(Model, model_id)
    if model is None or model.tenant_id != tenant_id:
        raise NotFound(f"model {model_id} not found")
    return model


def list_models(session: Session, *, tenant_id: str, cursor: str | None = None, limit: int = 50) -> Page[Model]:
    """The tenant's models, newest first."""
    query = select(Model).where(Model.tenant_id == tenant_id)
    return newest_first(session, query, time_column=Model.created_at, id_column=Model.id, cursor=cursor, limit=limit)


def get_version(session: Session, *, model_id: str, number: int) -> ModelVersion:
    """Version `number` of a model (the caller checked the model's tenant), or NotFound."""
    version = session.scalar(
        select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.number == number)
    )
    if version is None:
        raise NotFound(f"model {model_id} has no version {number}")
    return version


def list_versions(session: Session, *, model_id: str) -> list[ModelVersion]:
    """All versions of a model, newest first."""
    return list(
        session.scalars(
            select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number.desc())
        )
    )


def move_current(session: Session, *, model_id: str, expect: int, to: int) -> None:
    """Move a model's current version from `expect` to `to`, forward only (compare-and-set).

    There is no rollback: every older version still contains data erased since (and may have been
    purged), so `to` must be newer (Conflict otherwise). StaleBase when the model is no longer at
    `expect`.
    """
    if to <= expect:
        raise Conflict(
            f"model {model_id}: the current version only moves forward (asked {expect} → {to}); "
            "older versions still contain erased data"
        )
    moved = session.execute(
        update(Model).where(Model.id == model_id, Model.current_version == expect).values(current_version=to)
    ).rowcount
    if moved != 1:
        raise StaleBase(f"model {model_id} moved past version {expect}")


def publish_version(
    session: Session,
    *,
    model: Model,
    base: ModelVersion,
    request_id: str,
    sha256: str,
    size_bytes: int,
    storage_key: str,
    metrics: Metrics | None,
    actor: str,
) -> ModelVersion:
    """Add version base+1 produced by `request_id` and move `current` to it (compare-and-set).

    Raises StaleBase when the model is no longer at `base` (another request published first).
    The unique producing_request_id makes a second publication of one request fail.
    """
    move_current(session, model_id=model.id, expect=base.number, to=base.number + 1)
    version = ModelVersion(
        model_id=model.id,
        number=base.number + 1,
        parent_id=base.id,
        producing_request_id=request_id,
        sha256=sha256,
        size_bytes=size_bytes,
        storage_key=storage_key,
        state="ready",
        metrics=metrics,
        created_at=utcnow(),
    )
    session.add(version)
    session.flush()
    superseded = session.execute(
        update(ModelVersion).where(ModelVersion.id == base.id, ModelVersion.state == "ready").values(state="superseded")
    ).rowcount
    common = dict(tenant_id=model.tenant_id, actor=actor, model_id=model.id, request_id=request_id)
    audit.record(
        session,
        **common,
        action="model_version.created",
        resource_type="model_version",
        resource_id=version.id,
        data={"number": version.number, "parent": base.number, "sha256": sha256},
    )
    if superseded:
        audit.record(
            session,
            **common,
            action="model_version.superseded",
            resource_type="model_version",
            resource_id=base.id,
            data={"number": base.number, "by": version.number},
        )
    return version

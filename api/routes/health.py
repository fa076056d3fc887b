"""Liveness and readiness (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import SettingsDep
from api.errors import ProblemError
from api.routes.common import PROBLEM
from api.schemas import Health
from ledger import migrate

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: PROBLEM})
def readyz(request: Request, settings: SettingsDep) -> Health:
    """The ledger answers and its schema is at the newest migration."""
    database = request.app.state.database
    retry = {"Retry-After": "5"}
    try:
        database.ping()
        current = migrate.current_revision(database.engine)
    except Exception:  # any database failure means "not ready", never a 500
        raise ProblemError(
            503, "the ledger database is unavailable", code="database_unavailable", headers=retry
        ) from None
    state = request.app.state
    if getattr(state, "head_revision", None) is None:
        state.head_revision = migrate.head_revision()
    if current != state.head_revision:
        raise ProblemError(
            503,
            f"the ledger schema is at {current}, expected {state.head_revision}: run `ltu migrate`",
            code="schema_outdated",
            headers=retry,
        )
    return Health(
        status="ok",
        database=database.engine.dialect.name,
        schema_revision=current,
        runner="embedded" if settings.embedded_runner else "celery",
    )

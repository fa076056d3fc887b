"""Liveness and readiness (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import SettingsDep
from api.errors import ProblemError
from api.routes.common import PROBLEM
from api.schemas import Health
from ledger import migrate, secret_check
from ledger.errors import ConfigError
from ltu_settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: PROBLEM})
def readyz(request: Request, settings: SettingsDep) -> Health:
    """The ledger answers, its schema is at the newest migration, and the embedded worker (if any) can work."""
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
    _verify_secret(state, database, settings)
    for item in state.background:
        if (problem := getattr(item, "problem", None)) is not None:
            raise ProblemError(503, problem, code="worker_device_failed", headers=retry)
    return Health(
        status="ok",
        database=database.engine.dialect.name,
        schema_revision=current,
        runner="embedded" if settings.embedded_runner else "celery",
    )


def _verify_secret(state, database, settings: Settings) -> None:
    """The secret check start-up could not make (the ledger was down or unmigrated then): never ready without it."""
    if getattr(state, "secret_verified", True):
        return
    try:
        state.secret_verified = secret_check.check_secret(database, settings.ledger.secret_key, actor="system")
    except ConfigError as exc:
        raise ProblemError(503, str(exc), code="secret_mismatch", headers={"Retry-After": "60"}) from None
    if not state.secret_verified:
        raise ProblemError(
            503,
            "the server secret is not yet checked against the ledger",
            code="database_unavailable",
            headers={"Retry-After": "5"},
        )

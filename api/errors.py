"""RFC 9457 problem details for every error, so no input ever produces an HTML page or a bare 500."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.telemetry import REQUEST_ID_HEADER, request_id_of
from ledger.errors import (
    Conflict,
    IdempotencyConflict,
    InvalidInput,
    LeaseLost,
    LedgerError,
    NotFound,
    RateLimited,
    SecretMismatch,
    StaleBase,
)

log = logging.getLogger("ltu.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://ltu.invalid/problems/"  # stable identifiers, not fetched

LEDGER_STATUS: dict[type[LedgerError], int] = {
    NotFound: 404,
    InvalidInput: 422,
    IdempotencyConflict: 422,
    Conflict: 409,
    StaleBase: 409,
    LeaseLost: 409,
    RateLimited: 429,
    SecretMismatch: 503,
}


class ProblemError(Exception):
    """Raise from a route or dependency to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.errors = errors  # validation-style entries (loc, msg, type) naming where the problem is


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    code: str,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Keep where and what, drop `input` (it may echo a subject id) and non-JSON `ctx` objects.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error with problem+json."""

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            request, exc.status, exc.detail, code=exc.code, title=exc.title, headers=exc.headers, errors=exc.errors
        )

    @app.exception_handler(LedgerError)
    async def _ledger(request: Request, exc: LedgerError) -> JSONResponse:
        status = next((s for cls, s in LEDGER_STATUS.items() if isinstance(exc, cls)), 400)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
        return problem_response(request, status, str(exc), code=exc.code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            detail = "the request body is not valid JSON"
        else:
            detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(request, 422, detail, code="validation_error", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return problem_response(
            request, exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(DataError)
    @app.exception_handler(OverflowError)
    async def _unstorable(request: Request, exc: DataError | OverflowError) -> JSONResponse:
        # Postgres refuses some values Python accepts: NUL characters in text, numbers beyond BIGINT
        # (DataError); SQLite's driver refuses integers beyond 64 bits before sending them (OverflowError).
        return problem_response(
            request,
            422,
            "a value in the request cannot be stored or compared by the ledger "
            "database (a NUL character, or a number out of range)",
            code="unstorable_value",
        )

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return problem_response(
            request,
            503,
            "the ledger database is unavailable; retry later",
            code="database_unavailable",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The telemetry middleware has logged it with the request id; this answer is sent from outside
        # that middleware, so it names the id itself for the caller to quote.
        request_id = request_id_of(request.scope)
        return problem_response(
            request,
            500,
            "internal error; the incident was logged with its request id",
            code="internal_error",
            headers={REQUEST_ID_HEADER: request_id} if request_id else None,
        )

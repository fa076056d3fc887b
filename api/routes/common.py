"""Shared OpenAPI fragments for the routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.errors import ProblemError
from api.schemas import Problem

PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting problem+json answers (401/403/422 always).

    Routes with a body add 400 (a body that cannot be parsed at all: malformed multipart, bytes that
    are not UTF-8) and 413 (over its size limit).
    """
    return {status: PROBLEM for status in sorted({401, 403, 422, *statuses})}


def aware(moment: datetime | None) -> datetime | None:
    """A query time in UTC (one without an offset is read as UTC); 422 if it has no UTC equivalent."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ProblemError(
            422, f"{moment.isoformat()} lies outside the representable UTC range", code="validation_error"
        ) from None

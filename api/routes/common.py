"""What several routes share: OpenAPI fragments, query times, the tenant key outside the route's session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Response

from api.errors import ProblemError
from api.schemas import Problem
from api.signing import Signer
from ledger import tenant_keys
from ledger.db import Database

PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting problem+json answers (401/403/422 always).

    Routes with a body add 400 (a body that cannot be parsed at all: malformed multipart, bytes that
    are not UTF-8) and 413 (over its size limit).
    """
    return {status: PROBLEM for status in sorted({401, 403, 422, *statuses})}


def certificate_responses(description: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` of a certificate route: the signed document, or 404/409 (not completed)/503 (no key)."""
    return {**problems(404, 409, 503), 200: {"content": {"application/json": {}}, "description": description}}


def signed_certificate(signer: Signer, content: Any, *, name: str) -> Response:
    """The signed certificate (one line of canonical JSON), named `erasure-certificate-<name>.json`."""
    return Response(
        signer.sign(content),
        media_type="application/json",
        headers={"Content-Disposition": f'inline; filename="erasure-certificate-{name}.json"'},
    )


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


def tenant_key_apart(database: Database, *, tenant_id: str, secret: str, actor: str) -> tenant_keys.Key:
    """The tenant's key, read in a read session of its own or, the first time, made in a transaction of its own.

    For routes whose session must not write yet (an upload is copied and checked before SQLite's write
    lock is taken) or cannot (a GET's read session). An operator shredding the key meanwhile leaves the
    route's hashes under a destroyed key: unlinkable, as shredding means.
    """
    with database.read() as session:
        key = tenant_keys.live(session, tenant_id=tenant_id, secret=secret)
    if key is None:
        with database.transaction() as session:
            key = tenant_keys.current(session, tenant_id=tenant_id, secret=secret, actor=actor)
    return key

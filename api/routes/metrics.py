"""Prometheus metrics for the operator: HTTP traffic of this process and ledger figures of the deployment.

The ledger figures span every tenant, so only the operator's keys may read them: keys of the
operator tenant (the one LTU_ADMIN_API_KEY joins) with the audit or admin scope. Prometheus sends
one as `authorization: {credentials: <key>}` (Bearer); create it with
`ltu keys create --tenant default --scopes audit --name prometheus`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client.exposition import choose_encoder

from api.deps import DatabaseDep, bearer, get_current_key
from api.errors import ProblemError
from api.routes.common import problems
from ledger import tenants
from ledger.tables import Tenant
from ledger.tenants import LiveKey

router = APIRouter(tags=["operations"])


def operator_key(
    database: DatabaseDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> LiveKey:
    """The caller's key if it is an audit or admin key of the operator tenant; 401 or 403 otherwise.

    Checked in a transaction of its own, closed before the collectors open theirs: on SQLite every
    ledger transaction holds the one write lock (BEGIN IMMEDIATE), so a request-long session would
    make the collectors wait for it.
    """
    with database.session() as session:
        key = get_current_key(session, credentials)
        tenant = session.get(Tenant, key.tenant_id)
    if not {"audit", "admin"} & set(key.scopes) or tenant is None or tenant.name != tenants.DEFAULT_TENANT:
        raise ProblemError(
            403,
            f"metrics cover every tenant: they need an audit or admin key of the operator tenant "
            f"({tenants.DEFAULT_TENANT!r})",
            code="insufficient_scope",
        )
    return key


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **problems(),
        200: {
            "content": {"text/plain": {}, "application/openmetrics-text": {}},
            "description": "Prometheus text format (OpenMetrics when the Accept header asks).",
        },
    },
)
def metrics(request: Request, key: Annotated[LiveKey, Depends(operator_key)]) -> Response:
    """HTTP requests and latencies of this process; requests by status, queue depth, job phase durations and
    verification outcomes read from the ledger at scrape time."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(request.app.state.metrics_registry), media_type=content_type)

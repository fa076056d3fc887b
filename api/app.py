"""The application factory: `create_app(settings)` builds a fresh app; nothing exists at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

from fastapi import Depends, FastAPI
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry, ProcessCollector
from starlette.concurrency import run_in_threadpool

from api.edge import checked_form, edge_guard
from api.errors import install_problem_handlers
from api.limits import body_size_guard
from api.routes import (
    api_keys,
    audit,
    dashboard,
    datasets,
    deletion_requests,
    erasures,
    health,
    metrics,
    models,
    subjects,
    tenant,
    webhooks,
    well_known,
)
from api.signing import Signer
from api.telemetry import HttpMetrics, LedgerCollector, request_telemetry
from ledger import secret_check, tenants
from ledger.artifacts import ArtifactStore
from ledger.db import Database
from ltu_settings import Settings

log = logging.getLogger("ltu.api")

MULTIPART_SLACK = 1 << 20  # multipart framing and form fields around the file
TEMPLATES = Path(__file__).resolve().parent / "templates"  # the dashboard's pages

DESCRIPTION = """\
Erasure requests for trained image classifiers. Submit a deletion request for data subjects of a
registered model; the service unlearns them (LTU by default), verifies the result with membership
inference and publishes a new model version. Every state change is an audit event.

Authenticate with `Authorization: Bearer <API key>`. Errors are `application/problem+json`.
Completed requests have a signed erasure certificate; the audit log is a verifiable hash chain;
`/dashboard` shows both to compliance teams (API keys with the audit scope).

Submissions are rate-limited per API key (429 with Retry-After); request bodies over the configured
limit are 413. No text may hold a NUL character or a lone UTF-16 surrogate, JSON numbers must be
finite and integers within ±2^53, and JSON nests at most 32 levels: each is a 422 whose `code` names
it (`nul_character`, `lone_surrogate`, `non_finite_number`, `integer_out_of_range`, `nesting_too_deep`).
Every answer carries an `X-Request-ID` (send a sane one of your own to correlate).
`/metrics` serves Prometheus figures to the operator's audit or admin keys.
"""


class Background(Protocol):
    """Something that runs beside the API while it serves (e.g. the embedded job runner)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    # Optional: `problem` (a property) says why it cannot work (e.g. its device failed); /readyz reports it.


def create_app(
    settings: Settings, *, database: Database | None = None, background: Sequence[Background] = ()
) -> FastAPI:
    """A FastAPI app over `settings`; `background` objects are started and stopped with it.

    The database schema must already be migrated (`ltu migrate`, or `ltu serve` in embedded mode).
    Start-up refuses (ConfigError) a server secret other than the one the ledger's hashes are keyed
    by; a ledger it cannot ask yet keeps `/readyz` failing until the check succeeds there. When
    settings carry an admin key, start-up registers it for the default tenant. The certificate
    signing key is loaded here (generated in embedded mode); ConfigError if it is unusable.
    """
    db = database or Database(settings.ledger.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.secret_verified = await run_in_threadpool(
            secret_check.check_secret, db, settings.ledger.secret_key, actor="system"
        )
        if settings.api.admin_api_key:
            await run_in_threadpool(_bootstrap_admin, db, settings.api.admin_api_key)
        for item in background:
            item.start()
        try:
            yield
        finally:
            for item in reversed(background):
                item.stop()
            if database is None:
                db.dispose()

    app = FastAPI(
        title="LTU erasure service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(checked_form)],
    )
    app.state.settings = settings
    app.state.background = tuple(background)
    app.state.database = db
    app.state.store = ArtifactStore(settings.ledger.artifacts_dir).ensure()
    app.state.signer = Signer.from_settings(settings)
    app.state.templates = Jinja2Templates(directory=TEMPLATES)
    # One registry per app (nothing global at import time); the ledger figures are read per scrape.
    registry = CollectorRegistry()
    registry.register(LedgerCollector(db))
    ProcessCollector(registry=registry)
    app.state.metrics_registry = registry
    install_problem_handlers(app)
    # Inside the size guard, so the JSON bodies it holds to the edge's rules are already bounded.
    app.add_middleware(edge_guard)
    app.add_middleware(
        body_size_guard(
            {
                ("POST", "/v1/datasets"): lambda: settings.api.max_dataset_bytes + MULTIPART_SLACK,
                ("POST", "/v1/models"): lambda: settings.api.max_weights_bytes + MULTIPART_SLACK,
                ("POST", "/v1/erasures/bulk"): lambda: settings.api.max_bulk_bytes,
            },
            default=lambda: settings.api.max_body_bytes,
        )
    )
    # Added last, so it is the outermost: 413s of the guard get a request id, an access line and a count too.
    app.add_middleware(request_telemetry(HttpMetrics(registry)))
    for module in (
        health,
        datasets,
        models,
        deletion_requests,
        erasures,
        subjects,
        audit,
        api_keys,
        tenant,
        webhooks,
        well_known,
        dashboard,
        metrics,
    ):
        app.include_router(module.router)
    return app


def _bootstrap_admin(db: Database, secret: str) -> None:
    with db.transaction() as session:
        tenants.ensure_admin_key(session, secret=secret)
    # The settings' key: LTU_ADMIN_API_KEY, or the one `ltu serve` keeps in LTU_HOME/admin.key (it says which).
    log.info("admin API key registered for tenant %r", tenants.DEFAULT_TENANT)

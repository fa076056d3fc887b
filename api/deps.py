"""Dependencies as short Annotated aliases: SessionDep, SettingsDep, StoreDep, DatabaseDep, SignerDep, CurrentKey
and the scoped keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio.to_thread
from anyio import CancelScope, CapacityLimiter
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.edge import FORM_TYPES
from api.errors import ProblemError
from api.signing import Signer
from ledger import tenants
from ledger.artifacts import ArtifactStore
from ledger.db import Database
from ledger.tenants import LiveKey
from ltu_settings import Settings

SAFE_METHODS = ("GET", "HEAD")  # HTTP's read-only methods
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

# The dependencies below that do no blocking I/O are `async def`: FastAPI runs a plain `def` dependency in
# a worker thread, and each such hop costs more than the dependency itself.


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


async def get_store(request: Request) -> ArtifactStore:
    """The app's artifact store."""
    return request.app.state.store


async def get_database(request: Request) -> Database:
    """The app's database."""
    return request.app.state.database


async def get_signer(request: Request) -> Signer:
    """The certificate signer, or 503 when no signing key is configured."""
    signer = request.app.state.signer
    if signer is None:
        raise ProblemError(
            503,
            "certificate signing is not configured: set LTU_CERTIFICATE_KEY_FILE to an Ed25519 private key (PEM)",
            code="certificate_key_missing",
        )
    return signer


async def get_session(request: Request, database: Annotated[Database, Depends(get_database)]) -> AsyncIterator[Session]:
    """One unit of work per HTTP request: committed when the route returns, rolled back if it raises.

    Used with scope="function", so the commit happens before the response is sent: a client never
    sees a 202 for a request that was not stored. GET and HEAD only read: their session is a read
    session (Database.read), which never holds SQLite's write lock however long the route reads.

    Making a session does no I/O (its connection is checked out at its first statement), so only the
    end of the unit of work goes to a worker thread. That end runs with a limiter of its own and shielded
    from cancellation, as FastAPI runs a `def` dependency's exit: it returns a pooled connection, and it
    must neither wait behind requests that wait for a connection nor be skipped when the client leaves.
    """
    session = (database.readers if request.method in SAFE_METHODS else database.sessions)()
    try:
        yield session
    except BaseException:
        with CancelScope(shield=True):
            await anyio.to_thread.run_sync(_discard, session, limiter=CapacityLimiter(1))
        raise
    with CancelScope(shield=True):
        await anyio.to_thread.run_sync(_finish, session, limiter=CapacityLimiter(1))


def _finish(session: Session) -> None:
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _discard(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SignerDep = Annotated[Signer, Depends(get_signer)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ltu"'}


def get_current_key(session: Session, credentials: HTTPAuthorizationCredentials | None) -> LiveKey:
    """The caller's live API key, looked up in `session`, or 401."""
    if credentials is None or not credentials.credentials:
        raise ProblemError(
            401, "missing API key: send Authorization: Bearer <key>", code="missing_api_key", headers=CHALLENGE
        )
    key = tenants.authenticate(session, secret=credentials.credentials)
    if key is None:
        raise ProblemError(401, "invalid or revoked API key", code="invalid_api_key", headers=CHALLENGE)
    return key


async def current_key(
    request: Request,
    session: SessionDep,
    database: DatabaseDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> LiveKey:
    """The caller's live API key, or 401: looked up in the request's own session, on every request.

    Not cached: a revocation must shut a key out at once in every API process, and proving a cached
    key still live takes a read of its row, which costs what the lookup itself costs.
    """
    if credentials is None or not credentials.credentials:
        return get_current_key(session, credentials)  # the 401, without a thread hop
    return await run_in_threadpool(_authenticate, session, credentials, _ends_transaction(request, database))


def _authenticate(session: Session, credentials: HTTPAuthorizationCredentials, end_transaction: bool) -> LiveKey:
    key = get_current_key(session, credentials)
    if end_transaction:
        session.commit()
    return key


def _ends_transaction(request: Request, database: Database) -> bool:
    """Whether the key's lookup ends its transaction before the route runs.

    Elsewhere the route continues the lookup's transaction: one pool checkout, one BEGIN and one COMMIT
    per request. Two kinds of write end it first. On SQLite every write transaction holds the one write
    lock from its first statement (BEGIN IMMEDIATE), so it must begin only when the route first touches
    the ledger. And a form body is an upload the route copies and checks (up to gigabytes) before it
    writes: holding a pooled connection meanwhile would let a few uploads starve every other request.
    A read or a JSON body (already parsed when dependencies run) holds neither for longer than the route.
    """
    if request.method in SAFE_METHODS:
        return False
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return database.engine.dialect.name == "sqlite" or media_type in FORM_TYPES


CurrentKey = Annotated[LiveKey, Depends(current_key)]


def scoped(*allowed: str):
    """A dependency admitting keys with any of `allowed` scopes (admin keys are always admitted)."""
    wanted = {"admin", *allowed}

    async def check(key: CurrentKey) -> LiveKey:
        if wanted.intersection(key.scopes):
            return key
        raise ProblemError(
            403, f"this API key lacks the scope this needs: one of {sorted(allowed)}", code="insufficient_scope"
        )

    check.__name__ = f"require_{'_or_'.join(allowed)}"
    return Depends(check)


ReadKey = Annotated[LiveKey, scoped("read")]
SubmitKey = Annotated[LiveKey, scoped("submit")]
PollKey = Annotated[LiveKey, scoped("read", "submit")]  # whoever submits may poll
AuditKey = Annotated[LiveKey, scoped("audit")]
CertificateKey = Annotated[LiveKey, scoped("read", "submit", "audit")]  # the back office and compliance alike
AdminKey = Annotated[LiveKey, scoped("admin")]


def actor(key: LiveKey) -> str:
    """The audit actor string of a key."""
    return f"key:{key.id}"

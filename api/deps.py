"""Dependencies as short Annotated aliases: SessionDep, SettingsDep, StoreDep, DatabaseDep, SignerDep, CurrentKey
and the scoped keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import ProblemError
from api.signing import Signer
from ledger import tenants
from ledger.artifacts import ArtifactStore
from ledger.db import Database
from ledger.tables import ApiKey
from ltu_settings import Settings

SAFE_METHODS = ("GET", "HEAD")  # HTTP's read-only methods
bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    """The app's artifact store."""
    return request.app.state.store


def get_database(request: Request) -> Database:
    """The app's database."""
    return request.app.state.database


def get_signer(request: Request) -> Signer:
    """The certificate signer, or 503 when no signing key is configured."""
    signer = request.app.state.signer
    if signer is None:
        raise ProblemError(
            503,
            "certificate signing is not configured: set LTU_CERTIFICATE_KEY_FILE to an Ed25519 private key (PEM)",
            code="certificate_key_missing",
        )
    return signer


def get_session(request: Request, database: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    """One unit of work per HTTP request: committed when the route returns, rolled back if it raises.

    Used with scope="function", so the commit happens before the response is sent: a client never
    sees a 202 for a request that was not stored. GET and HEAD only read: their session is a read
    session (Database.read), which never holds SQLite's write lock however long the route reads.
    """
    with (database.read if request.method in SAFE_METHODS else database.session)() as session:
        yield session
        session.commit()


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SignerDep = Annotated[Signer, Depends(get_signer)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_current_key(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ApiKey:
    """The caller's live API key, or 401."""
    challenge = {"WWW-Authenticate": 'Bearer realm="ltu"'}
    if credentials is None or not credentials.credentials:
        raise ProblemError(
            401, "missing API key: send Authorization: Bearer <key>", code="missing_api_key", headers=challenge
        )
    key = tenants.authenticate(session, secret=credentials.credentials)
    if key is None:
        raise ProblemError(401, "invalid or revoked API key", code="invalid_api_key", headers=challenge)
    # The lookup's transaction ends here: a write transaction (SQLite's write lock) begins only when the
    # route first touches the ledger, not while it copies and checks an upload of up to gigabytes.
    session.commit()
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def scoped(*allowed: str):
    """A dependency admitting keys with any of `allowed` scopes (admin keys are always admitted)."""

    def check(key: CurrentKey) -> ApiKey:
        if "admin" in key.scopes or set(allowed) & set(key.scopes):
            return key
        raise ProblemError(
            403, f"this API key lacks the scope this needs: one of {sorted(allowed)}", code="insufficient_scope"
        )

    check.__name__ = f"require_{'_or_'.join(allowed)}"
    return Depends(check)


ReadKey = Annotated[ApiKey, scoped("read")]
SubmitKey = Annotated[ApiKey, scoped("submit")]
PollKey = Annotated[ApiKey, scoped("read", "submit")]  # whoever submits may poll
AuditKey = Annotated[ApiKey, scoped("audit")]
CertificateKey = Annotated[ApiKey, scoped("read", "submit", "audit")]  # the back office and compliance alike
AdminKey = Annotated[ApiKey, scoped("admin")]


def actor(key: ApiKey) -> str:
    """The audit actor string of a key."""
    return f"key:{key.id}"

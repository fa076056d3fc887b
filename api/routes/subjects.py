"""Where is this person? The datasets, models and versions holding a data subject's samples (audit scope)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api.deps import AuditKey, DatabaseDep, SessionDep, SettingsDep, actor
from api.routes.common import problems, tenant_key_apart
from api.schemas import DatasetLocationRead, ModelLocationRead, SubjectLocations, SubjectLookup
from ledger import erasures
from ledger.db import Database
from ledger.tenants import LiveKey
from ltu_settings import Settings

router = APIRouter(prefix="/v1/subjects", tags=["erasures"])


@router.post("/locations", response_model=SubjectLocations, responses=problems(400, 413))
def find_subject(
    body: SubjectLookup, session: SessionDep, database: DatabaseDep, key: AuditKey, settings: SettingsDep
) -> SubjectLocations:
    """Where is this person? The datasets, models and stored versions that hold or held their samples.

    The subject id travels in the body, so no proxy or load balancer logs it with the URL. A subject
    found nowhere has empty lists (the same answer another tenant's subject gets). Reads only.
    """
    return _locations(session, database, key, settings, body.subject_id)


@router.get("/{subject_id}/locations", response_model=SubjectLocations, responses=problems())
def get_subject_locations(
    subject_id: str, session: SessionDep, database: DatabaseDep, key: AuditKey, settings: SettingsDep
) -> SubjectLocations:
    """The same answer as `POST /v1/subjects/locations`, with the subject id in the path (and so in access logs
    between the caller and the service): prefer the POST."""
    return _locations(session, database, key, settings, subject_id)


def _locations(
    session: Session, database: Database, key: LiveKey, settings: Settings, subject_id: str
) -> SubjectLocations:
    tenant_key = tenant_key_apart(
        database, tenant_id=key.tenant_id, secret=settings.ledger.secret_key, actor=actor(key)
    )
    found = erasures.subject_locations(
        session, tenant_id=key.tenant_id, subject_hash=tenant_key.subject_hash(subject_id)
    )
    return SubjectLocations(
        subject_hash=found.subject_hash,
        datasets=[DatasetLocationRead(**vars(d)) for d in found.datasets],
        models=[ModelLocationRead(**vars(m)) for m in found.models],
    )

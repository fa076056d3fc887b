"""Where is this person? The datasets, models and versions holding a data subject's samples (audit scope)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AuditKey, DatabaseDep, SessionDep, SettingsDep, actor
from api.routes.common import problems, tenant_key_apart
from api.schemas import DatasetLocationRead, ModelLocationRead, SubjectLocations
from ledger import erasures

router = APIRouter(prefix="/v1/subjects", tags=["erasures"])


@router.get("/{subject_id}/locations", response_model=SubjectLocations, responses=problems())
def get_subject_locations(
    subject_id: str, session: SessionDep, database: DatabaseDep, key: AuditKey, settings: SettingsDep
) -> SubjectLocations:
    """Where is this person? The datasets, models and stored versions that hold or held their samples.

    A subject found nowhere has empty lists (the same answer another tenant's subject gets).
    """
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

"""Where is this person? The datasets, models and versions holding a data subject's samples (audit scope)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AuditKey, DatabaseDep, SessionDep, SettingsDep
from api.routes.common import problems
from api.schemas import DatasetLocationRead, ModelLocationRead, SubjectLocations
from ledger import erasures, tenant_keys

router = APIRouter(prefix="/v1/subjects", tags=["erasures"])


@router.get("/{subject_id}/locations", response_model=SubjectLocations, responses=problems())
def get_subject_locations(
    subject_id: str, session: SessionDep, database: DatabaseDep, key: AuditKey, settings: SettingsDep
) -> SubjectLocations:
    """Where is this person? The datasets, models and stored versions that hold or held their samples.

    A subject found nowhere has empty lists (the same answer another tenant's subject gets).
    """
    secret = settings.ledger.secret_key
    tenant_key = tenant_keys.live(session, tenant_id=key.tenant_id, secret=secret)
    if tenant_key is None:  # a GET reads in a read session: the tenant's first key is made in a transaction of its own
        with database.transaction() as own:
            tenant_key = tenant_keys.current(own, tenant_id=key.tenant_id, secret=secret)
    found = erasures.subject_locations(
        session, tenant_id=key.tenant_id, subject_hash=tenant_key.subject_hash(subject_id)
    )
    return SubjectLocations(
        subject_hash=found.subject_hash,
        datasets=[DatasetLocationRead(**vars(d)) for d in found.datasets],
        models=[ModelLocationRead(**vars(m)) for m in found.models],
    )

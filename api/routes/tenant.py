"""The caller's tenant: its raw-data purge policy and which key its hashes are keyed by (admin scope)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api.deps import AdminKey, SessionDep, actor
from api.routes.common import problems
from api.schemas import TenantKeyRead, TenantRead, TenantUpdate
from ledger import datasets, tenant_keys, tenants
from ledger.tenants import LiveKey

router = APIRouter(prefix="/v1/tenant", tags=["tenant"])


@router.get("", response_model=TenantRead, responses=problems())
def get_tenant(session: SessionDep, key: AdminKey) -> TenantRead:
    """The tenant's policies and the id of its live key (never the key)."""
    return _read(session, key)


@router.patch("", response_model=TenantRead, responses=problems(400, 413))
def update_tenant(body: TenantUpdate, session: SessionDep, key: AdminKey) -> TenantRead:
    """Set the raw-data purge policy: `purge_raw_data_at_once` purges an erased subject's pixels from a dataset
    as soon as one model erased them, instead of once every model registered on it did. Audited."""
    datasets.set_purge_policy(session, tenant_id=key.tenant_id, at_once=body.purge_raw_data_at_once, actor=actor(key))
    return _read(session, key)


def _read(session: Session, key: LiveKey) -> TenantRead:
    tenant = tenants.get_tenant(session, tenant_id=key.tenant_id)
    live = tenant_keys.live_row(session, tenant_id=tenant.id)
    return TenantRead(
        id=tenant.id,
        name=tenant.name,
        purge_raw_data_at_once=tenant.purge_raw_data_at_once,
        tenant_key=None if live is None else TenantKeyRead.model_validate(live),
    )

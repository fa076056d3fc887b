"""API keys of the caller's tenant (admin scope)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminKey, SessionDep, actor
from api.routes.common import problems
from api.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPage, ApiKeyRead
from ledger import tenants

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


@router.post("", status_code=201, response_model=ApiKeyCreated, responses=problems(400, 409, 413))
def create_api_key(body: ApiKeyCreate, session: SessionDep, key: AdminKey) -> ApiKeyCreated:
    """Create a key for the caller's tenant; its secret is returned once."""
    new, secret = tenants.create_key(
        session, tenant_id=key.tenant_id, name=body.name, scopes=body.scopes, actor=actor(key)
    )
    return ApiKeyCreated(**ApiKeyRead.model_validate(new).model_dump(), key=secret)


@router.get("", response_model=ApiKeyPage, responses=problems())
def list_api_keys(session: SessionDep, key: AdminKey) -> ApiKeyPage:
    """The tenant's keys (secrets are never shown again)."""
    return ApiKeyPage(items=[ApiKeyRead.model_validate(k) for k in tenants.list_keys(session, tenant_id=key.tenant_id)])


@router.delete("/{key_id}", response_model=ApiKeyRead, responses=problems(404))
def revoke_api_key(key_id: str, session: SessionDep, key: AdminKey) -> ApiKeyRead:
    """Revoke a key; it stops working at once."""
    return ApiKeyRead.model_validate(
        tenants.revoke_key(session, tenant_id=key.tenant_id, key_id=key_id, actor=actor(key))
    )

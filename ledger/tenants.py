"""Tenants and their API keys (stored as SHA-256 of the secret, with scopes)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ledger import audit
from ledger.errors import Conflict, InvalidInput, NotFound
from ledger.hashing import key_hash
from ledger.tables import SCOPES, ApiKey, Tenant, utcnow

DEFAULT_TENANT = "default"
KEY_PREFIX = "ltu_"


def get_tenant_by_name(session: Session, *, name: str) -> Tenant | None:
    """The tenant called `name`, or None."""
    return session.scalar(select(Tenant).where(Tenant.name == name))


def get_tenant(session: Session, *, tenant_id: str) -> Tenant:
    """A tenant by id, or NotFound."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return tenant


@dataclass(frozen=True, slots=True)
class LiveKey:
    """What a request needs of the caller's key: who it is, whose it is and what it may do."""

    id: str
    tenant_id: str
    scopes: tuple[str, ...]


def is_operator(session: Session, *, key: LiveKey) -> bool:
    """True for admin keys of the operator's tenant (DEFAULT_TENANT, which LTU_ADMIN_API_KEY joins).

    Only they may read other tenants' audit events; every other key sees its own tenant only.
    """
    return "admin" in key.scopes and session.get(Tenant, key.tenant_id).name == DEFAULT_TENANT


def ensure_tenant(session: Session, *, name: str, actor: str = "system") -> Tenant:
    """The tenant called `name`, created (with an audit event) if missing."""
    tenant = get_tenant_by_name(session, name=name)
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():
            tenant = Tenant(name=name)
            session.add(tenant)
            session.flush()
    except IntegrityError:  # created concurrently
        tenant = get_tenant_by_name(session, name=name)
        assert tenant is not None
        return tenant
    audit.record(
        session,
        tenant_id=tenant.id,
        actor=actor,
        action="tenant.created",
        resource_type="tenant",
        resource_id=tenant.id,
        data={"name": name},
    )
    return tenant


def check_scopes(scopes: Sequence[str]) -> list[str]:
    """Validated, de-duplicated scopes."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes must be a non-empty subset of {list(SCOPES)}; unknown: {unknown}")
    return sorted(set(scopes))


def generate_key() -> str:
    """A new random API key secret."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    session: Session,
    *,
    tenant_id: str,
    name: str,
    scopes: Sequence[str],
    secret: str | None = None,
    actor: str,
) -> tuple[ApiKey, str]:
    """Store a key (hashed); returns the row and the secret, which is never stored."""
    scopes = check_scopes(scopes)
    secret = secret or generate_key()
    if len(secret) < 16:
        raise InvalidInput("an API key must be at least 16 characters long")
    if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash(secret))):
        raise Conflict("this API key is already registered")
    # A fingerprint, not the secret's first characters: the audit chain is permanent and exported,
    # and a user-chosen key may be short enough for a prefix to give most of it away.
    fingerprint = f"{KEY_PREFIX}…{key_hash(secret)[:8]}"
    key = ApiKey(tenant_id=tenant_id, name=name, prefix=fingerprint, key_hash=key_hash(secret), scopes=scopes)
    session.add(key)
    session.flush()
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="api_key.created",
        resource_type="api_key",
        resource_id=key.id,
        data={"name": name, "scopes": scopes, "prefix": key.prefix},
    )
    return key, secret


def ensure_admin_key(session: Session, *, secret: str, tenant_name: str = DEFAULT_TENANT) -> ApiKey:
    """Register `secret` as an admin key of the tenant unless it already exists (start-up bootstrap)."""
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(secret)))
    if existing is not None:
        return existing
    tenant = ensure_tenant(session, name=tenant_name)
    try:
        with session.begin_nested():
            key, _ = create_key(
                session, tenant_id=tenant.id, name="bootstrap admin", scopes=["admin"], secret=secret, actor="system"
            )
    except (IntegrityError, Conflict):  # another process registered it concurrently
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(secret)))
        assert key is not None
    return key


_api_keys = ApiKey.__table__
# Built once: a statement object keeps its cache key, so each request skips rebuilding and re-keying it.
_LIVE_KEYS = select(_api_keys.c.id, _api_keys.c.tenant_id, _api_keys.c.scopes).where(_api_keys.c.revoked_at.is_(None))
LIVE_KEY_BY_HASH = _LIVE_KEYS.where(_api_keys.c.key_hash == bindparam("key_hash"))
LIVE_KEY_BY_ID = _LIVE_KEYS.where(_api_keys.c.id == bindparam("key_id"))


def authenticate(session: Session, *, secret: str) -> LiveKey | None:
    """The live key whose secret this is, or None.

    Every authenticated request pays for this lookup, so it is one Core statement of the three columns a
    request uses, on the session's connection: no ORM row is built or kept in the session.
    """
    return _live_key(session, LIVE_KEY_BY_HASH, {"key_hash": key_hash(secret)})


def get_live_key(session: Session, *, key_id: str) -> LiveKey | None:
    """The key with this id unless it is revoked; None then, or when there is none."""
    return _live_key(session, LIVE_KEY_BY_ID, {"key_id": key_id})


def _live_key(session: Session, statement: Select, parameters: dict[str, str]) -> LiveKey | None:
    found = session.connection().execute(statement, parameters).first()
    return None if found is None else LiveKey(id=found.id, tenant_id=found.tenant_id, scopes=tuple(found.scopes))


def list_keys(session: Session, *, tenant_id: str) -> list[ApiKey]:
    """A tenant's keys, oldest first."""
    return list(
        session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id))
    )


def revoke_key(session: Session, *, tenant_id: str, key_id: str, actor: str) -> ApiKey:
    """Revoke a key of the tenant (idempotent)."""
    key = session.get(ApiKey, key_id)
    if key is None or key.tenant_id != tenant_id:
        raise NotFound(f"API key {key_id} not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
        audit.record(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="api_key.revoked",
            resource_type="api_key",
            resource_id=key.id,
        )
    return key

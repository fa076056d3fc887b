"""Tenant keys: each tenant's keyed hashes (subject ids, request bodies) are keyed by the tenant's own key.

A tenant key is 32 random bytes stored only wrapped: AES-256-GCM under a key derived (HKDF-SHA256)
from the server secret, with the tenant id as associated data so a wrapped key copied to another
tenant does not open. Every stored hash has its key's id beside it (`tenant_key_id` on datasets,
deletion requests and erasures). Hence:

- the same person hashes differently in two tenants: an admin who uploads chosen subject ids and
  reads their hashes back learns nothing about any other tenant's hashes;
- rotating the server secret re-wraps every tenant key and changes no hash (`rewrap_all`, run by
  `ltu secret rotate`): every lookup and idempotent replay keeps working;
- destroying a tenant's key (`destroy`, `ltu secret shred-tenant`) clears the only copy of its
  material. Hashes under it can no longer be linked to a subject id by anyone, the holder of the
  server secret included: crypto-shredding. The tenant's next keyed operation gets a fresh key.

Hashes written before migration 0011 were keyed by the server secret itself. A tenant's first key
adopts them: its material is that server secret (`origin` "legacy"), so they keep matching and
survive rotation like any tenant key. Every tenant that held data then shares that material, so
those tenants' hashes stay linkable with each other, and destroying a legacy key unlinks them only
once the server secret of that time has also been rotated away.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ledger import audit, hashing
from ledger.errors import SecretMismatch
from ledger.tables import Dataset, DeletionRequest, Erasure, TenantKey, utcnow

RANDOM, LEGACY = "random", "legacy"
WRAP_INFO = b"ltu-tenant-key-wrap:v1"
NONCE_BYTES = 12
# The rows whose hashes a tenant key keys; NULL there means "by the server secret" (before migration 0011).
KEYED = (Dataset, DeletionRequest, Erasure)


@dataclass(frozen=True)
class Key:
    """A tenant's live key, unwrapped: `id` is what the ledger stores beside each hash it made."""

    id: int
    material: bytes = field(repr=False)

    def subject_hash(self, subject_id: str) -> str:
        return hashing.subject_hash(self.material, subject_id)

    def body_hash(self, body: Any) -> str:
        return hashing.body_hash(self.material, body)


def current(session: Session, *, tenant_id: str, secret: str, actor: str = "system") -> Key:
    """The tenant's live key, created (and announced in the audit chain) on first need.

    SecretMismatch if `secret` does not unwrap it (the server secret was rotated under this process).
    """
    row = _live(session, tenant_id)
    if row is None:
        row = _create(session, tenant_id=tenant_id, secret=secret, actor=actor)
    return Key(row.id, _unwrap(secret, tenant_id, row.wrapped))


def live(session: Session, *, tenant_id: str, secret: str) -> Key | None:
    """The tenant's live key if it has one: `current` without its writes, for read-only sessions."""
    row = _live(session, tenant_id)
    return None if row is None else Key(row.id, _unwrap(secret, tenant_id, row.wrapped))


def key_for(session: Session, *, tenant_id: str, key_id: int | None, secret: str) -> Key | None:
    """The live key `key_id` of the tenant (None: destroyed, or another tenant's)."""
    row = session.get(TenantKey, key_id) if key_id is not None else None
    if row is None or row.tenant_id != tenant_id or row.wrapped is None:
        return None
    return Key(row.id, _unwrap(secret, tenant_id, row.wrapped))


def destroy(session: Session, *, tenant_id: str, secret: str, actor: str) -> TenantKey:
    """Crypto-shred the tenant's live key (adopting its pre-0011 hashes first); returns the destroyed row."""
    current(session, tenant_id=tenant_id, secret=secret, actor=actor)
    row = session.scalar(
        select(TenantKey).where(TenantKey.tenant_id == tenant_id, TenantKey.destroyed_at.is_(None)).with_for_update()
    )
    row.wrapped, row.destroyed_at = None, utcnow()
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tenant_key.destroyed",
        resource_type="tenant_key",
        resource_id=str(row.id),
        data={"key_id": row.id, "origin": row.origin},
    )
    session.flush()
    return row


def rewrap_all(session: Session, *, secret: str, new_secret: str, actor: str) -> tuple[int, int]:
    """Wrap every live tenant key under `new_secret` instead of `secret`; (re-wrapped, adopted).

    Tenants with pre-0011 hashes and no key yet adopt them first, under `secret`: after the
    rotation nothing in the ledger is keyed by the server secret directly any more.
    """
    from ledger.tables import Tenant

    adopted = 0
    for tenant_id in session.scalars(select(Tenant.id).order_by(Tenant.id)):
        if _live(session, tenant_id) is None and _has_unkeyed(session, tenant_id):
            current(session, tenant_id=tenant_id, secret=secret, actor=actor)
            adopted += 1
    rows = session.scalars(
        select(TenantKey).where(TenantKey.destroyed_at.is_(None)).order_by(TenantKey.id).with_for_update()
    ).all()
    for row in rows:
        row.wrapped = _wrap(new_secret, row.tenant_id, _unwrap(secret, row.tenant_id, row.wrapped))
    session.flush()
    return len(rows), adopted


def _live(session: Session, tenant_id: str) -> TenantKey | None:
    return session.scalar(select(TenantKey).where(TenantKey.tenant_id == tenant_id, TenantKey.destroyed_at.is_(None)))


def _has_unkeyed(session: Session, tenant_id: str) -> bool:
    return bool(
        session.scalar(
            select(or_(*(exists().where(t.tenant_id == tenant_id, t.tenant_key_id.is_(None)) for t in KEYED)))
        )
    )


def _create(session: Session, *, tenant_id: str, secret: str, actor: str) -> TenantKey:
    legacy = _has_unkeyed(session, tenant_id)
    material = secret.encode() if legacy else os.urandom(32)
    row = TenantKey(
        tenant_id=tenant_id, origin=LEGACY if legacy else RANDOM, wrapped=_wrap(secret, tenant_id, material)
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # another transaction created the tenant's key first: use theirs
        theirs = _live(session, tenant_id)
        if theirs is None:
            raise
        return theirs
    adopted = {}
    if legacy:
        for table in KEYED:
            result = session.execute(
                update(table)
                .where(table.tenant_id == tenant_id, table.tenant_key_id.is_(None))
                .values(tenant_key_id=row.id)
                .execution_options(synchronize_session=False)
            )
            adopted[table.__tablename__] = result.rowcount
    audit.record(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tenant_key.created",
        resource_type="tenant_key",
        resource_id=str(row.id),
        data={"key_id": row.id, "origin": row.origin, "adopted": adopted},
    )
    return row


@functools.lru_cache(maxsize=4)
def _wrapping_key(secret: str) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=WRAP_INFO).derive(secret.encode())
    return AESGCM(derived)


def _wrap(secret: str, tenant_id: str, material: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _wrapping_key(secret).encrypt(nonce, material, tenant_id.encode())


def _unwrap(secret: str, tenant_id: str, wrapped: bytes) -> bytes:
    try:
        return _wrapping_key(secret).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], tenant_id.encode())
    except InvalidTag:
        raise SecretMismatch(
            "this process's LTU_SECRET_KEY does not open the tenant's key: the server secret was rotated; "
            "restart the process with the ledger's current secret"
        ) from None


def live_row(session: Session, *, tenant_id: str) -> TenantKey | None:
    """The tenant's live key row (id, origin, creation; the material stays wrapped), None before its first use."""
    return _live(session, tenant_id)

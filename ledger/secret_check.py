"""The server secret's check value: every process proves it holds the secret the ledger's tenant keys are wrapped by.

The ledger's hashes are keyed by tenant keys stored only wrapped under LTU_SECRET_KEY
(ledger.tenant_keys), so a process started with another secret could open none of them. The
ledger keeps HMAC-SHA256(secret, LABEL); the first `ltu migrate` or start-up records it (with an
audit event) and every later one compares, refusing a mismatch. The value reveals nothing usable
about a secret of the strength `ltu_settings` demands.

`rotate` re-wraps every tenant key under the new secret and replaces the check value in one
transaction: no hash changes, so every lookup and idempotent replay stays valid.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from ledger import audit, tenant_keys, tenants
from ledger.db import Database
from ledger.errors import ConfigError
from ledger.tables import ServerSecretCheck, utcnow

log = logging.getLogger("ltu.ledger")

LABEL = b"ltu-server-secret-check:v1"
ROW_ID = 1
MISMATCH = (
    "LTU_SECRET_KEY is not the secret this ledger's tenant keys are wrapped by (its check value differs): "
    "with it no tenant key opens. Start with the ledger's secret; to replace "
    "it, run `ltu secret rotate --new-key-file FILE` with the current one"
)


def check_value(secret: str) -> str:
    """HMAC-SHA256 of the fixed label under `secret` (64 hex characters)."""
    return hmac.new(secret.encode(), LABEL, hashlib.sha256).hexdigest()


def verify_or_record(session: Session, secret: str, *, actor: str) -> None:
    """Compare `secret` with the ledger's check value, recording it first if the ledger has none.

    ConfigError if it differs. The caller commits (the first record and its audit event).
    """
    row = session.get(ServerSecretCheck, ROW_ID)
    if row is None:
        try:
            with session.begin_nested():
                session.add(ServerSecretCheck(id=ROW_ID, check_value=check_value(secret)))
        except IntegrityError:  # another process recorded one first: compare with theirs
            row = session.get(ServerSecretCheck, ROW_ID)
        else:
            _audit(session, actor=actor, action="server_secret.recorded", data={})
            return
    if not hmac.compare_digest(row.check_value, check_value(secret)):
        raise ConfigError(MISMATCH)


def check_secret(database: Database, secret: str, *, actor: str) -> bool:
    """`verify_or_record` in its own transaction: True once verified, False if the ledger could not be asked.

    ConfigError on a mismatch. An unreachable or unmigrated ledger is logged, not raised: the
    caller's readiness stays false until a later check succeeds.
    """
    try:
        with database.transaction() as session:
            verify_or_record(session, secret, actor=actor)
    except SQLAlchemyError as exc:
        log.warning("cannot check LTU_SECRET_KEY against the ledger yet (%s)", type(exc).__name__)
        return False
    return True


def check_secret_at(url: str, secret: str, *, actor: str) -> bool:
    """`check_secret` through a database of its own, closed afterwards (process start-up)."""
    database = Database(url)
    try:
        return check_secret(database, secret, actor=actor)
    finally:
        database.dispose()


def rotate(session: Session, *, current: str, new: str, actor: str) -> tuple[int, int]:
    """Make `new` the ledger's secret: re-wrap every tenant key under it and record its check value.

    (tenant keys re-wrapped, tenants whose pre-0011 hashes were adopted first). ConfigError if
    `current` is not the ledger's secret. The row lock on the check value makes concurrent
    rotations take turns.
    """
    verify_or_record(session, current, actor=actor)
    row = session.get(ServerSecretCheck, ROW_ID, with_for_update=True)
    rewrapped, adopted = tenant_keys.rewrap_all(session, secret=current, new_secret=new, actor=actor)
    row.check_value, row.recorded_at = check_value(new), utcnow()
    _audit(
        session,
        actor=actor,
        action="server_secret.rotated",
        data={"tenant_keys_rewrapped": rewrapped, "tenants_adopted": adopted},
    )
    return rewrapped, adopted


def _audit(session: Session, *, actor: str, action: str, data: dict) -> None:
    # The operator's tenant: its admins see the deployment's own events (ledger.tenants.is_operator).
    operator = tenants.ensure_tenant(session, name=tenants.DEFAULT_TENANT, actor=actor)
    audit.record(
        session,
        tenant_id=operator.id,
        actor=actor,
        action=action,
        resource_type="server_secret",
        resource_id="ledger",
        data=data,
    )

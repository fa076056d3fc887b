"""The server secret's check value: every process proves it holds the secret the ledger's hashes are keyed by.

Subject ids are stored only as HMAC-SHA256 under LTU_SECRET_KEY (ledger.hashing), so a process
started with another secret finds no stored subject: it would answer "no such data subject" to
real erasure requests. The ledger keeps HMAC-SHA256(secret, LABEL); the first `ltu migrate` or
start-up records it (with an audit event) and every later one compares, refusing a mismatch. The
value reveals nothing usable about a secret of the strength `ltu_settings` demands.

Rotation cannot re-key what is stored: the subject ids behind the keyed hashes of dataset samples
and requests are never kept, and audit events are immutable links of a hash chain. `rotate`
therefore replaces the check value only while the ledger holds no keyed hash (a deployment
started with the wrong secret before any data arrived); otherwise it refuses and says why.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from ledger import audit, tenants
from ledger.db import Database
from ledger.errors import ConfigError, Conflict
from ledger.tables import DatasetSample, DeletionRequest, ServerSecretCheck, utcnow

log = logging.getLogger("ltu.ledger")

LABEL = b"ltu-server-secret-check:v1"
ROW_ID = 1
MISMATCH = (
    "LTU_SECRET_KEY is not the secret this ledger's subject hashes are keyed by (its check value differs): "
    "with it every erasure request would find no data subject. Start with the ledger's secret; to replace "
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


def rotate(session: Session, *, current: str, new: str, actor: str) -> None:
    """Replace the check value of `current` by that of `new`, while no stored hash is keyed by `current`.

    ConfigError if `current` is not the ledger's secret; Conflict (with the counts) if keyed hashes
    exist, since their subject ids are not stored and cannot be hashed again under `new`.
    """
    verify_or_record(session, current, actor=actor)
    samples = session.scalar(select(func.count()).select_from(DatasetSample))
    requests = session.scalar(select(func.count()).select_from(DeletionRequest))
    if samples or requests:
        raise Conflict(
            f"the ledger holds {samples} dataset sample(s) and {requests} erasure request(s) keyed by the current "
            "secret; their subject ids are stored only as keyed hashes, so they cannot be hashed again under a "
            "new secret. Keep the current secret (a new one needs a new ledger)"
        )
    row = session.get(ServerSecretCheck, ROW_ID, with_for_update=True)
    row.check_value, row.recorded_at = check_value(new), utcnow()
    _audit(session, actor=actor, action="server_secret.rotated", data={})


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

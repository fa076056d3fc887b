"""Every table of the ledger (SQLAlchemy 2.0 typed mappings), one metadata for Alembic.

Ids are UUID strings; timestamps are timezone-aware UTC on every database; JSON columns are
JSONB on Postgres. Subject ids never appear in any table: only their hashes under the tenant's key
(`ledger.tenant_keys`), whose id is stored beside them (`tenant_key_id`). The current version of a model is a number that only moves
forward (`Model.current_version`); the version a request produced is found through the unique
`ModelVersion.producing_request_id`, which is also what makes publishing happen exactly once.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from ledger.records import Metrics, RunDetails, Verification, from_json, to_json

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Request lifecycle (SERVICE.md): received → queued → running → completed | failed | cancelled.
RECEIVED, QUEUED, RUNNING = "received", "queued", "running"
COMPLETED, FAILED, CANCELLED = "completed", "failed", "cancelled"
ACTIVE_STATUSES = (RECEIVED, QUEUED, RUNNING)
TERMINAL_STATUSES = (COMPLETED, FAILED, CANCELLED)
REQUEST_STATUSES = ACTIVE_STATUSES + TERMINAL_STATUSES

SCOPES = ("submit", "read", "audit", "admin")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh public id."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores them naive; they come back aware)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use ledger.tables.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class RecordJSON(TypeDecorator):
    """A JSON column (JSONB on Postgres) holding one record type: records in, records out.

    JSON path expressions (`column["passed"].as_boolean()`) still work in queries.
    """

    impl = JSON
    cache_ok = True

    class comparator_factory(TypeDecorator.Comparator, JSON.Comparator):
        def _setup_getitem(self, index):
            # A member of a record is plain JSON (a number, a flag), not a record of the column's type.
            operator, index, _ = super()._setup_getitem(index)
            return operator, index, JSONType

    def __init__(self, record_type: type) -> None:
        super().__init__()
        self.record_type = record_type

    def load_dialect_impl(self, dialect):
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else JSON())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if not isinstance(value, self.record_type):
            raise TypeError(f"expected a {self.record_type.__name__} record, got {type(value).__name__}")
        return to_json(value)

    def process_result_value(self, value, dialect):
        return None if value is None else from_json(self.record_type, value)


class Base(DeclarativeBase):
    """Declarative base: one metadata with deterministic constraint names (Alembic needs them)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}  # noqa: RUF012 - SQLAlchemy reads it


class Tenant(Base):
    """An isolated customer: owns keys, datasets, models, requests and audit events."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Purge an erased subject's pixels as soon as one model erased them, not once every model did (ledger.datasets).
    purge_raw_data_at_once: Mapped[bool] = mapped_column(default=False)


class ApiKey(Base):
    """An API key: only the SHA-256 of the secret is stored, with its scopes."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to recognise a key
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Dataset(Base):
    """A registered training set (an unpacked ltu-dataset folder in the artifact store)."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    format_version: Mapped[int]
    num_classes: Mapped[int]
    image_shape: Mapped[list[Any]]  # [C, H, W]
    num_samples: Mapped[int]
    archive_sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(500))  # folder, relative to the artifact root
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The tenant key its samples' subject hashes are keyed by; NULL: by the server secret (before migration 0011).
    tenant_key_id: Mapped[int | None]


class DatasetSample(Base):
    """One sample of a dataset: ids, label, split, and which request erased it (if any)."""

    __tablename__ = "dataset_samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "sample_id"),
        UniqueConstraint("dataset_id", "row"),
        Index("ix_dataset_samples_dataset_subject", "dataset_id", "subject_hash"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    row: Mapped[int]  # position in samples.csv / images.u8
    sample_id: Mapped[str] = mapped_column(String(255))
    subject_hash: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256(tenant key, subject_id)
    label: Mapped[int]
    split: Mapped[str] = mapped_column(String(16))
    # The first completed request that erased this sample: no later request or retrain reads it.
    erased_by_request_id: Mapped[str | None] = mapped_column(ForeignKey("deletion_requests.id"), index=True)
    erased_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]  # its pixels were removed from the stored dataset (ledger.datasets)


class Model(Base):
    """A stored classifier: architecture, training dataset and recipe, and its current version."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    architecture: Mapped[dict[str, Any]]  # ltu_core ArchConfig fields (timm name + arguments)
    recipe: Mapped[dict[str, Any] | None]  # ltu_core TrainRecipe fields; None: Retrain unavailable
    current_version: Mapped[int] = mapped_column(default=1)  # moves only forward
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    """Immutable weights of one model version (safetensors, addressed by sha256)."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    number: Mapped[int]
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("model_versions.id"))
    # Unique: a request publishes at most one version, however often its task is delivered.
    producing_request_id: Mapped[str | None] = mapped_column(ForeignKey("deletion_requests.id"), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16), default="ready")
    metrics: Mapped[Metrics | None] = mapped_column(RecordJSON(Metrics))  # the request's metrics after, if it made it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeletionRequest(Base):
    """An erasure request and everything needed to execute it (no state lives in the broker)."""

    __tablename__ = "deletion_requests"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_deletion_requests_tenant_received", "tenant_id", "received_at"),
        Index("ix_deletion_requests_model_status", "model_id", "status"),
        Index("ix_deletion_requests_tenant_due", "tenant_id", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    status: Mapped[str] = mapped_column(String(16), default=RECEIVED)
    phase: Mapped[str | None] = mapped_column(String(32))
    progress_step: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_token: Mapped[str | None] = mapped_column(String(36))  # the execution allowed to write
    heartbeat_at: Mapped[datetime | None]
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    body_hash: Mapped[str] = mapped_column(String(64))  # keyed hash of the canonical request body
    target_kind: Mapped[str] = mapped_column(String(16))  # subjects | samples
    subject_hashes: Mapped[list[Any]]  # keyed hashes only
    tenant_key_id: Mapped[int | None]  # the key of body_hash and subject_hashes (NULL: the server secret, pre-0011)
    num_targets: Mapped[int]
    method: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    due_at: Mapped[datetime]
    extension: Mapped[dict[str, Any] | None]  # months, reason, extended_at, previous_due_at (at most one)
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    base_version: Mapped[int | None]  # the version number the unlearning started from
    result_version: Mapped[int | None]  # the version it published (shared by a coalesced batch)
    # The run's typed records (ledger.records), stored as JSON.
    metrics_before: Mapped[Metrics | None] = mapped_column(RecordJSON(Metrics))
    metrics_after: Mapped[Metrics | None] = mapped_column(RecordJSON(Metrics))
    verification: Mapped[Verification | None] = mapped_column(RecordJSON(Verification))
    details: Mapped[RunDetails | None] = mapped_column(RecordJSON(RunDetails))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # Coalescing: the requests executed by one unlearning run share the id of the one that led it.
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)
    requeues: Mapped[int] = mapped_column(default=0)  # times the reconciler dispatched it again
    retries: Mapped[int] = mapped_column(default=0)  # times a transient fault put it back in the queue
    # The erasure of a person (ledger.erasures) this request is that person's part of, on its model.
    erasure_id: Mapped[str | None] = mapped_column(ForeignKey("erasures.id"), index=True)


class Erasure(Base):
    """One erasure of data subjects from every model of the tenant trained on them (ledger.erasures).

    Its status, deadline and end are computed from its deletion requests (one per affected model),
    never stored, so they cannot drift from them. The restriction the caller gave is kept as given.
    """

    __tablename__ = "erasures"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_erasures_tenant_received", "tenant_id", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    body_hash: Mapped[str] = mapped_column(String(64))  # keyed hash of the canonical request body
    subject_hashes: Mapped[list[Any]]  # keyed hashes only
    tenant_key_id: Mapped[int | None]  # the key of body_hash and subject_hashes (NULL: the server secret, pre-0011)
    subjects_not_found: Mapped[int]  # subjects in no dataset of the tenant
    model_ids: Mapped[list[Any] | None]  # the restriction to these models, if any
    dataset_ids: Mapped[list[Any] | None]  # the restriction to models of these datasets, if any
    method: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[dict[str, Any]]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]  # when its ending event (erasure.completed | failed | cancelled) was recorded


class RateLimitBucket(Base):
    """A token bucket per API key for erasure submissions, shared by every API process."""

    __tablename__ = "rate_limit_buckets"

    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    refilled_at: Mapped[datetime]


class RequestSample(Base):
    """The samples a request names (all splits), resolved from its subjects when it is received."""

    __tablename__ = "request_samples"

    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_requests.id"), primary_key=True)
    sample_pk: Mapped[int] = mapped_column(ForeignKey("dataset_samples.id"), primary_key=True, index=True)


class OutboxMessage(Base):
    """A dispatch row written in the same transaction as its request (transactional outbox)."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "dispatched_at", "id"),)

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    task_name: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    claim_token: Mapped[str | None] = mapped_column(String(36))
    claimed_until: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class AuditEvent(Base):
    """One state change of one resource, a link of the hash chain. Written only through `ledger.audit`.

    `body` is the canonical JSON (ledger.canonical) of every other column plus the event's data;
    `hash` is the SHA-256 of `body`, whose `prev_hash` is its predecessor's hash. `seq` counts
    the deployment's events from 1 without gaps. A tenant's events form a chain of their own
    too: `tenant_seq` counts them from 1 and `tenant_prev_hash` is the hash of the tenant's
    previous event (both None for events of no tenant). Events sealed before migration 0007
    have them as columns only; later bodies hold them. The table is append-only (a trigger on
    Postgres and SQLite); the filter columns are copies of the body's fields.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_tenant_seq", "tenant_id", "seq"),
        Index("ix_audit_events_tenant_chain", "tenant_id", "tenant_seq", unique=True),
        Index("ix_audit_events_request_seq", "request_id", "seq"),
        Index("ix_audit_events_model_seq", "model_id", "seq"),
    )

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    occurred_at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(100))  # "key:<id>", "worker", "system"
    action: Mapped[str] = mapped_column(String(64), index=True)
    resource_type: Mapped[str] = mapped_column(String(32))
    resource_id: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str | None] = mapped_column(String(36))
    request_id: Mapped[str | None] = mapped_column(String(36))
    body: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    tenant_seq: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    tenant_prev_hash: Mapped[str | None] = mapped_column(String(64))

    @property
    def data(self) -> dict[str, Any]:
        """The event's data, read from the chained body."""
        return json.loads(self.body)["data"]


class AuditReferenceSet(Base):
    """K reference models of the likelihood-ratio audit tier for one model lineage (ledger.references).

    Lifecycle: queued → running → ready | failed | cancelled; a ready set becomes superseded when a
    newer set of the model is ready. Only the reference models' scores are stored (`storage_key`,
    an `ltu-audit-references` safetensors file), never their weights. `erased_samples` counts the
    dataset's erased samples when training started, all left out of its training data; a set is
    refreshed once enough further samples are erased, which retires the older ones.
    """

    __tablename__ = "audit_reference_sets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    reason: Mapped[str] = mapped_column(String(16))  # registration | on_demand | refresh
    count: Mapped[int]  # K, even
    seed: Mapped[int]
    phase: Mapped[str | None] = mapped_column(String(32))
    progress_step: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int] = mapped_column(default=0)
    attempts: Mapped[int] = mapped_column(default=0)
    requeues: Mapped[int] = mapped_column(default=0)  # times the reconciler dispatched it again
    retries: Mapped[int] = mapped_column(default=0)  # times a transient fault put it back in the queue
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_token: Mapped[str | None] = mapped_column(String(36))  # the execution allowed to write
    heartbeat_at: Mapped[datetime | None]
    trained_on_version: Mapped[int | None]  # the model's current version when training started
    train_samples: Mapped[int | None]
    erased_samples: Mapped[int | None]
    storage_key: Mapped[str | None] = mapped_column(String(500))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    purged_at: Mapped[datetime | None]  # a superseded set's file was deleted (ledger.retention)


class TenantKey(Base):
    """A tenant's key for keyed hashes, stored only wrapped under the server secret (ledger.tenant_keys).

    At most one live key per tenant; destroying one (crypto-shredding) clears `wrapped` for good.
    """

    __tablename__ = "tenant_keys"
    __table_args__ = (
        Index(
            "ux_tenant_keys_live",
            "tenant_id",
            unique=True,
            sqlite_where=text("destroyed_at IS NULL"),
            postgresql_where=text("destroyed_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)  # the key id stored beside each hash
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    origin: Mapped[str] = mapped_column(String(16))  # random | legacy (the server secret of migration 0011's time)
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)  # nonce + AES-256-GCM ciphertext; NULL once destroyed
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    destroyed_at: Mapped[datetime | None]


class ServerSecretCheck(Base):
    """HMAC-SHA256 of a fixed label under the server secret (ledger.secret_check), one row per ledger.

    Every process compares its LTU_SECRET_KEY with it at start-up: a process with another secret would
    hash subject ids that match no stored hash and answer "no such data subject" to real erasures.
    """

    __tablename__ = "server_secret_check"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)  # always 1: one secret per ledger
    check_value: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEndpoint(Base):
    """A URL a tenant registered to receive signed events (ledger.webhooks).

    Its signing secret is derived from the server secret and the endpoint id, never stored.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


class WebhookEvent(Base):
    """One event as its receivers get it: `body` is the exact JSON sent, `id` the `webhook-id` header.

    `dedupe_key` makes an event that may be noticed more than once (a deadline coming due) exist once.
    """

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("tenant_id", "dedupe_key"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event on its way to one endpoint: pending → delivered | failed; a replay is a new delivery."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id"), index=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    replay_of: Mapped[str | None] = mapped_column(String(36))  # the delivery this one replays
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)  # attempts finished
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]  # an attempt in flight holds the delivery until then
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

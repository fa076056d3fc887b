"""Request and response bodies. Naming ladder: XCreate (input), XRead (output), XPage (a list page)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ledger import erasures, references, webhooks
from ledger.records import Metrics, RunDetails, Verification
from ledger.tables import REQUEST_STATUSES, SCOPES

RequestStatus = Literal["received", "queued", "running", "completed", "failed", "cancelled"]
Deadline = Literal["overdue", "due_soon"]
Scope = Literal["submit", "read", "audit", "admin"]
assert set(RequestStatus.__args__) == set(REQUEST_STATUSES)  # type: ignore[attr-defined]
assert set(Scope.__args__) == set(SCOPES)  # type: ignore[attr-defined]

MAX_TARGETS = 1000
MAX_PARAMETERS_BYTES = 16_384
Identifier = Field(min_length=1, max_length=255)


class InputBody(BaseModel):
    """A request body: unknown fields refused, and no coercion (`true` or `"1"` is not the integer 1)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str = Field(description="Stable machine-readable error name.")
    errors: list[dict[str, Any]] | None = Field(default=None, description="Validation errors: loc, msg, type.")


class Health(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok"]
    database: str | None = None
    schema_revision: str | None = None
    runner: Literal["embedded", "celery"] | None = None


# --- API keys -------------------------------------------------------------------------------------


class ApiKeyCreate(InputBody):
    """A new key for the caller's tenant."""

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1)


class ApiKeyRead(BaseModel):
    """An API key without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None = None


class ApiKeyCreated(ApiKeyRead):
    """A newly created key: the secret is shown once, here, and never again."""

    key: str


class ApiKeyPage(BaseModel):
    """The tenant's keys."""

    items: list[ApiKeyRead]
    next_cursor: str | None = None


# --- datasets ----------------------------------------------------------------------------------


class DatasetRead(BaseModel):
    """A registered dataset."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    format_version: int
    num_classes: int
    image_shape: list[int]
    num_samples: int
    erased_samples: int = 0
    archive_sha256: str
    created_at: datetime


class DatasetPage(BaseModel):
    """A page of datasets, newest first."""

    items: list[DatasetRead]
    next_cursor: str | None = None


# --- models and versions -------------------------------------------------------------------------


class TrainRecipeCreate(InputBody):
    """The original training recipe (ltu_core.train.TrainRecipe); Retrain reuses it."""

    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(64, ge=2, le=65_536)
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: bool = False


AuditStatus = Literal["none", "queued", "running", "ready", "failed", "cancelled"]
AuditTier = Literal["likelihood_ratio", "rank"]
ReferenceSetStatus = Literal["queued", "running", "ready", "failed", "cancelled", "superseded"]
MAX_REFERENCE_MODELS = 64
assert set(ReferenceSetStatus.__args__) == set(references.STATUSES)  # type: ignore[attr-defined]
assert MAX_REFERENCE_MODELS == references.MAX_COUNT


class ModelRead(BaseModel):
    """A registered model; `current_version` only moves forward."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    dataset_id: str
    architecture: dict[str, Any]
    recipe: dict[str, Any] | None
    current_version: int
    created_at: datetime
    audit_status: AuditStatus = Field(
        "none", description="Status of the model's newest training of audit reference models (none: never queued)."
    )
    audit_tier: AuditTier = Field(
        "rank",
        description="The audit tier its erasures get now: likelihood_ratio once a reference set is ready, else rank.",
    )


class ModelPage(BaseModel):
    """A page of models, newest first."""

    items: list[ModelRead]
    next_cursor: str | None = None


class AuditReferencesCreate(InputBody):
    """Train a new set of the model's audit reference models (the likelihood-ratio tier)."""

    count: int | None = Field(
        default=None,
        ge=2,
        le=MAX_REFERENCE_MODELS,
        description="Reference models, even (they train in complementary pairs); default LTU_AUDIT_REFERENCE_MODELS "
        "(4 when that is 0).",
    )

    @field_validator("count")
    @classmethod
    def _even(cls, count: int | None) -> int | None:
        if count is not None and count % 2:
            raise ValueError("must be even (the reference models train in complementary pairs)")
        return count


class ReferenceSetProgress(BaseModel):
    """Where a training is: phase (preparing, references, storing) and step of total (reference models trained)."""

    phase: str | None
    step: int
    total: int


class ReferenceSetError(BaseModel):
    """Why a training failed (no_recipe, dataset_mismatch, attempts_exhausted, internal_error, ...)."""

    code: str
    message: str | None


class ReferenceSetRead(BaseModel):
    """One training of K reference models: its lifecycle, and what it trained on once started."""

    id: str
    status: ReferenceSetStatus
    reason: Literal["registration", "on_demand", "refresh"]
    count: int = Field(description="K, the number of reference models.")
    seed: int
    progress: ReferenceSetProgress
    cancel_requested: bool
    attempts: int
    trained_on_version: int | None = Field(description="The model version current when training started.")
    train_samples: int | None = Field(description="Training samples the reference models drew their halves from.")
    erased_samples: int | None = Field(
        description="Samples of the dataset erased when training started: none of them was trained on."
    )
    sha256: str | None = Field(description="SHA-256 of the stored scores file (ready sets).")
    size_bytes: int | None
    seconds: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: ReferenceSetError | None


class AuditReferencesRead(BaseModel):
    """A model's audit reference models: the newest training, the ready set its audits read, and the tier."""

    model_id: str
    audit_status: AuditStatus
    audit_tier: AuditTier
    latest: ReferenceSetRead | None = Field(description="The newest training, whatever its status.")
    in_use: ReferenceSetRead | None = Field(
        description="The ready set the model's erasure audits read (none: rank tier)."
    )


class ModelVersionRead(BaseModel):
    """One immutable version of a model's weights."""

    id: str
    model_id: str
    number: int
    parent_number: int | None
    producing_request_id: str | None
    sha256: str
    size_bytes: int
    state: Literal["ready", "superseded", "purged"]
    current: bool
    metrics: Metrics | None = Field(description="Metrics after the erasure that produced this version (none for v1).")
    created_at: datetime
    weights_url: str


class ModelVersionPage(BaseModel):
    """All versions of a model, newest first."""

    items: list[ModelVersionRead]
    next_cursor: str | None = None


# --- deletion requests ---------------------------------------------------------------------------


class DeletionRequestCreate(InputBody):
    """An erasure request: a model and either data subjects or individual samples."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model_id": "3f0c…", "subject_ids": ["customer-1234"]}]},
    )

    model_id: str = Identifier
    subject_ids: list[str] | None = Field(
        default=None,
        max_length=MAX_TARGETS,
        description="Data subjects whose samples are erased (stored only as keyed hashes).",
    )
    sample_ids: list[str] | None = Field(
        default=None, max_length=MAX_TARGETS, description="Individual training samples."
    )
    method: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="Unlearning method (default: the service's, LTU). Checked by the worker.",
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="Method parameters overriding its defaults.")

    @field_validator("subject_ids", "sample_ids")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must name at least one id")
        if any(not isinstance(v, str) or not v or len(v) > 255 for v in value):
            raise ValueError("every id must be a non-empty string of at most 255 characters")
        if len(set(value)) != len(value):
            raise ValueError("ids must be unique")
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > MAX_PARAMETERS_BYTES:
            raise ValueError(f"parameters are limited to {MAX_PARAMETERS_BYTES} bytes of JSON")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> DeletionRequestCreate:
        if (self.subject_ids is None) == (self.sample_ids is None):
            raise ValueError("give exactly one of subject_ids or sample_ids")
        return self


class Progress(BaseModel):
    """Where a running request is: phase (preparing, training_attackers, unlearning, retraining,
    verifying, publishing) and step of total within it."""

    phase: str | None
    step: int
    total: int


class RequestError(BaseModel):
    """Why a request failed."""

    code: str
    message: str | None


class DeadlineExtension(BaseModel):
    """The one extension of a request's deadline (GDPR Art. 12(3)) and its reason."""

    months: int
    reason: str
    extended_at: datetime
    previous_due_at: datetime


class DeadlineExtensionCreate(InputBody):
    """Extend an open request's deadline by one or two further months, with the reason (recorded)."""

    months: int = Field(ge=1, le=2, description="Further months: 1 or 2 (GDPR allows at most two).")
    reason: str = Field(
        min_length=1, max_length=2000, description="Why (told to the data subject); audited as a keyed hash."
    )

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the reason must not be blank")
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):
            raise ValueError("the reason must not contain control characters")
        return value.strip()


class DeletionRequestRead(BaseModel):
    """A deletion request with its lifecycle, results and verification verdict."""

    id: str
    model_id: str
    status: RequestStatus
    progress: Progress
    cancel_requested: bool
    attempts: int = Field(description="Executions started and not given back: a worker that died mid-run counts.")
    retries: int = Field(description="Times a passing fault (database away, out of memory, full disk) requeued it.")
    target_kind: Literal["subjects", "samples"]
    num_targets: int
    subject_hashes: list[str] = Field(description="Keyed hashes of the subject ids (the ids are never stored).")
    method: str
    parameters: dict[str, Any]
    received_at: datetime
    due_at: datetime = Field(
        description="Legal deadline: one calendar month after receipt (GDPR Art. 12(3)), plus any extension."
    )
    overdue: bool = Field(description="Still open after its deadline.")
    extension: DeadlineExtension | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    base_version: int | None = Field(description="The version the unlearning started from.")
    result_version: int | None = Field(description="The version this request published (completed requests only).")
    result_sha256: str | None
    metrics_before: Metrics | None = Field(description="The model before unlearning, on this request's samples.")
    metrics_after: Metrics | None = Field(description="The published model, on this request's samples.")
    verification: Verification | None = Field(description="Membership-inference verdicts and how the version was made.")
    details: RunDetails | None = Field(description="The run: split, method record, timings, member scores.")
    error: RequestError | None


class CertificateKeyRead(BaseModel):
    """The Ed25519 public key that verifies erasure certificates (a JWK, RFC 8037)."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str = Field(description="The raw public key, base64url.")
    kid: str = Field(description="RFC 7638 thumbprint; certificates name it as signature.key_id.")
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class DeletionRequestPage(BaseModel):
    """A page of requests, newest first."""

    items: list[DeletionRequestRead]
    next_cursor: str | None = None


class RequestSampleRead(BaseModel):
    """A sample a request names, and whether (and by which request) it has been erased."""

    model_config = ConfigDict(from_attributes=True)

    sample_id: str
    split: str
    label: int
    erased_by_request_id: str | None
    erased_at: datetime | None


class RequestSamplePage(BaseModel):
    """The samples of one request, in dataset order."""

    items: list[RequestSampleRead]
    next_cursor: str | None = None


# --- erasures of a person ------------------------------------------------------------------------

ErasureStatus = Literal["received", "running", "completed", "failed", "cancelled"]
assert set(ErasureStatus.__args__) == set(erasures.ERASURE_STATUSES)  # type: ignore[attr-defined]


class ErasureCreate(InputBody):
    """Erase data subjects from every model of the tenant trained on them (optionally only some models)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"subject_ids": ["customer-1234"]}]})

    subject_ids: list[str] = Field(
        min_length=1, max_length=MAX_TARGETS, description="Data subjects to erase (stored only as keyed hashes)."
    )
    model_ids: list[str] | None = Field(
        default=None, min_length=1, max_length=MAX_TARGETS, description="Only these models (default: every model)."
    )
    dataset_ids: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TARGETS,
        description="Only models trained on these datasets (with model_ids: both must hold).",
    )
    method: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="Unlearning method of every request (default: the service's, LTU).",
    )
    parameters: dict[str, Any] | None = Field(default=None, description="Method parameters of every request.")

    @field_validator("subject_ids", "model_ids", "dataset_ids")
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        return DeletionRequestCreate._ids(value)

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else DeletionRequestCreate._parameters(value)


class ErasureRequestRead(BaseModel):
    """The deletion request an erasure made for one model (poll or cancel it as any request)."""

    request_id: str
    model_id: str
    status: RequestStatus
    progress: Progress
    result_version: int | None = Field(description="The version without the subjects (once completed).")


class DatasetPurgeRead(BaseModel):
    """The subjects' samples in one dataset, and how many were purged from its stored files."""

    dataset_id: str
    samples: int
    purged_samples: int


class ErasureRead(BaseModel):
    """An erasure of data subjects: its requests (one per affected model) and the aggregate of their status."""

    id: str
    status: ErasureStatus = Field(
        description="received: no request started; running: one is active; completed: all completed (or there "
        "were none); failed: none active, one failed; cancelled: none active or failed, one cancelled."
    )
    subject_count: int
    subjects_not_found: int = Field(description="Subjects in no dataset of the tenant (recorded, not an error).")
    received_at: datetime
    due_at: datetime = Field(description="The earliest deadline of its requests (one calendar month after receipt).")
    finished_at: datetime | None
    requests: list[ErasureRequestRead]
    dataset_purge: list[DatasetPurgeRead]


class ErasurePage(BaseModel):
    """A page of erasures, newest first."""

    items: list[ErasureRead]
    next_cursor: str | None = None


MAX_BULK_SUBJECTS = 100_000


class BulkErasureCreate(ErasureCreate):
    """Erase up to 100,000 data subjects in one erasure (application/json; duplicates collapse).

    The same erasure as POST /v1/erasures: one deletion request per affected model, carrying every
    subject that model still holds, so each model gets one coalesced run.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [{"subject_ids": ["customer-1234", "customer-5678"]}]})

    subject_ids: list[str] = Field(
        min_length=1,
        max_length=MAX_BULK_SUBJECTS,
        description="Data subjects to erase (stored only as keyed hashes); repeated ids count once.",
    )

    @field_validator("subject_ids")
    @classmethod
    def _subject_ids(cls, value: list[str]) -> list[str]:
        if any(not v or len(v) > 255 for v in value):
            raise ValueError("every id must be a non-empty string of at most 255 characters")
        return list(dict.fromkeys(value))

    @field_validator("model_ids", "dataset_ids")  # replaces ErasureCreate's, which also checks subject_ids
    @classmethod
    def _ids(cls, value: list[str] | None) -> list[str] | None:
        return DeletionRequestCreate._ids(value)


class BulkSubjectLine(InputBody):
    """One line of an application/x-ndjson bulk body, as an object (a bare JSON string is the same)."""

    subject_id: str = Field(min_length=1, max_length=255)


class SubjectModelOutcomeRead(BaseModel):
    """The erasure's request for one model that names the subject."""

    model_id: str
    request_id: str
    status: RequestStatus
    erased_in_version: int | None = Field(description="The version without the subject (once completed).")


class ErasureSubjectRead(BaseModel):
    """One line of GET /v1/erasures/{id}/subjects (application/x-ndjson)."""

    subject_hash: str = Field(description="Keyed hash of the subject id (the ids are never stored).")
    found: bool = Field(description="Whether a dataset of the tenant holds samples of the subject.")
    models: list[SubjectModelOutcomeRead] = Field(description="Empty: no model had to forget the subject.")


class DatasetLocationRead(BaseModel):
    """A dataset holding samples of the subject (all splits)."""

    dataset_id: str
    samples: int
    erased_samples: int = Field(description="Erased from the models trained on them (a completed request).")
    purged_samples: int = Field(description="Removed from the dataset's stored files.")


class ModelLocationRead(BaseModel):
    """A model trained on the subject's samples."""

    model_id: str
    dataset_id: str
    current_version: int
    erased_in_version: int | None = Field(description="The first version without any of them; null: still held.")
    versions_holding: list[int] = Field(description="Stored versions (not purged) trained on some of them.")


class SubjectLookup(InputBody):
    """A data subject to look up, in the body: unlike a URL path, a body stays out of proxies' access logs."""

    subject_id: str = Field(min_length=1, max_length=1000, description="Hashed under the tenant's key, never stored.")


class SubjectLocations(BaseModel):
    """Where a data subject's samples are, or were: datasets, models and their versions."""

    subject_hash: str = Field(description="The keyed hash the ledger knows the subject by.")
    datasets: list[DatasetLocationRead]
    models: list[ModelLocationRead]


# --- audit ---------------------------------------------------------------------------------------


class AuditEventRead(BaseModel):
    """One state change of one resource, a link of the hash chain.

    `hash` is the SHA-256 of the canonical JSON (RFC 8785) of every other field (for events sealed
    before migration 0007, of every other field but the tenant link); `prev_hash` is the hash of
    event `seq - 1` (64 zeros for the first).
    """

    model_config = ConfigDict(from_attributes=True)

    seq: int = Field(description="Position in the deployment's chain, from 1, without gaps.")
    tenant_seq: int | None = Field(description="Position in its tenant's chain, from 1 (none for system events).")
    tenant_prev_hash: str | None = Field(description="Hash of the tenant's previous event (64 zeros for its first).")
    occurred_at: datetime
    tenant_id: str | None
    actor: str
    action: str
    resource_type: str
    resource_id: str
    model_id: str | None
    request_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditEventPage(BaseModel):
    """A page of events in chain order."""

    items: list[AuditEventRead]
    next_cursor: str | None = None


class BrokenLink(BaseModel):
    """Where the chain breaks first, and why."""

    seq: int
    reason: str


class ChainVerification(BaseModel):
    """The outcome of walking one page of an audit chain: the deployment's (positions are `seq`) or the
    caller's tenant's (positions are `tenant_seq`; nothing about other tenants' events)."""

    chain: Literal["deployment", "tenant"] = Field(description="Which chain was walked.")
    tenant_id: str | None = Field(description="The tenant whose chain it is; null for the deployment's.")
    valid: bool = Field(description="No broken link in the events checked.")
    checked: int = Field(description="Events checked before the first broken link (all of the page when valid).")
    first_seq: int | None = Field(description="The first event checked (a position in the walked chain).")
    last_seq: int | None = Field(description="The last intact event checked: where this page stopped.")
    last_hash: str | None = Field(description="Its hash: compare it with a certificate's audit anchor.")
    broken: BrokenLink | None = Field(description="The first broken link (its position in the walked chain), if any.")
    next_from_seq: int | None = Field(
        description="The range goes on past this page: call again with from_seq set to this. Null when the walk "
        "reached to_seq or the chain's head, or found a broken link."
    )


class CompletionTimes(BaseModel):
    """Seconds from receipt to completion over completed requests (None before the first)."""

    p50: float | None
    p95: float | None


class RequestFigures(BaseModel):
    """Compliance figures over a set of requests."""

    total: int
    by_status: dict[str, int]
    overdue: int = Field(description="Open requests past their deadline.")
    due_soon: int = Field(description="Open requests whose deadline is within the due-soon window.")
    completed_late: int = Field(description="Requests completed after their deadline.")
    completion_seconds: CompletionTimes
    verified: int = Field(description="Requests with a verification verdict.")
    verification_pass_rate: float | None = Field(description="Share of verdicts that passed, in [0, 1].")


class ModelFigures(RequestFigures):
    """The figures of one model's requests."""

    model_id: str


class AuditSummary(BaseModel):
    """A tenant's compliance figures, overall and per model."""

    tenant_id: str
    generated_at: datetime
    due_soon_days: int
    overall: RequestFigures
    models: list[ModelFigures]


# --- webhooks -------------------------------------------------------------------------------------

WebhookEventType = Literal[
    "deletion_request.completed",
    "deletion_request.failed",
    "deletion_request.cancelled",
    "deletion_request.verification_fell_back",
    "deletion_request.due_soon",
    "deletion_request.overdue",
    "erasure.completed",
]
DeliveryStatus = Literal["pending", "delivered", "failed"]
assert set(WebhookEventType.__args__) == set(webhooks.EVENT_TYPES)  # type: ignore[attr-defined]
assert set(DeliveryStatus.__args__) == set(webhooks.DELIVERY_STATUSES)  # type: ignore[attr-defined]


class WebhookCreate(InputBody):
    """An endpoint that receives the tenant's events of the given types, signed (Standard Webhooks)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"url": "https://hooks.example.com/ltu", "event_types": ["deletion_request.completed"]}]
        }
    )

    url: str = Field(
        min_length=1,
        max_length=webhooks.MAX_URL_LENGTH,
        description="http(s) URL; public addresses only unless LTU_WEBHOOK_ALLOW_PRIVATE_ADDRESSES.",
    )
    event_types: list[WebhookEventType] = Field(min_length=1, max_length=len(webhooks.EVENT_TYPES))


class WebhookRead(BaseModel):
    """A registered endpoint, without its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    event_types: list[WebhookEventType]
    created_at: datetime
    deleted_at: datetime | None = None


class WebhookCreated(WebhookRead):
    """A newly registered endpoint: its signing secret is shown once, here, and never again."""

    secret: str = Field(description="`whsec_<base64>`: the HMAC-SHA256 key is the base64-decoded part.")


class WebhookPage(BaseModel):
    """The tenant's live endpoints."""

    items: list[WebhookRead]


class WebhookDeliveryRead(BaseModel):
    """One event's delivery to one endpoint and where its attempts stand."""

    id: str
    event_id: str = Field(description="The `webhook-id` header: the same for every delivery of the event.")
    event_type: WebhookEventType
    replay_of: str | None = Field(description="The delivery this one replays, if it is a replay.")
    status: DeliveryStatus
    attempts: int = Field(description="Attempts made so far.")
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending only).")
    last_status_code: int | None = Field(description="The receiver's last HTTP status, if it answered.")
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any] = Field(description="The body sent: {type, timestamp, data}.")


class WebhookDeliveryPage(BaseModel):
    """A page of an endpoint's deliveries, newest first."""

    items: list[WebhookDeliveryRead]
    next_cursor: str | None = None


class TenantKeyRead(BaseModel):
    """The tenant's live key for keyed hashes: its id (stored beside every hash it made), never its material."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    origin: str = Field(description="`random`, or `legacy`: the server secret that keyed hashes before tenant keys.")
    created_at: datetime


class TenantRead(BaseModel):
    """The caller's tenant and its policies."""

    id: str
    name: str
    purge_raw_data_at_once: bool = Field(
        description="Erased subjects' pixels are purged from a dataset once one model erased them (true) or once "
        "every model registered on the dataset did (false, the default: the others still need them to unlearn)."
    )
    tenant_key: TenantKeyRead | None = Field(description="None until the tenant's first keyed operation.")


class TenantUpdate(InputBody):
    """The tenant's policies to change."""

    purge_raw_data_at_once: bool

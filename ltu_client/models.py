"""Typed views of the service's JSON (frozen dataclasses; unknown fields are ignored, so newer
servers stay readable)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

TERMINAL = ("completed", "failed", "cancelled")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class _FromJSON:
    _times: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in data.items() if k in names}
        for key in cls._times:
            if key in values:
                values[key] = _time(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Dataset(_FromJSON):
    """A registered dataset."""

    _times = ("created_at",)
    id: str
    name: str
    num_classes: int
    image_shape: list[int]
    num_samples: int
    archive_sha256: str
    created_at: datetime | None = None
    erased_samples: int = 0
    format_version: int = 1


@dataclass(frozen=True)
class Model(_FromJSON):
    """A registered model."""

    _times = ("created_at",)
    id: str
    name: str
    dataset_id: str
    architecture: dict[str, Any]
    current_version: int
    recipe: dict[str, Any] | None = None
    created_at: datetime | None = None
    audit_status: str = "none"  # the newest audit reference-set training: none | queued | running | ready | ...
    audit_tier: str = "rank"  # likelihood_ratio once a reference set is ready


@dataclass(frozen=True)
class ModelVersion(_FromJSON):
    """One version of a model's weights."""

    _times = ("created_at",)
    id: str
    model_id: str
    number: int
    sha256: str
    size_bytes: int
    state: str
    current: bool
    weights_url: str
    parent_number: int | None = None
    producing_request_id: str | None = None
    metrics: dict[str, Any] | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class DeletionRequest(_FromJSON):
    """A deletion request as the service reports it."""

    _times = ("received_at", "due_at", "queued_at", "started_at", "finished_at")
    id: str
    model_id: str
    status: str
    progress: dict[str, Any] = field(default_factory=dict)
    cancel_requested: bool = False
    attempts: int = 0
    retries: int = 0
    target_kind: str = "subjects"
    num_targets: int = 0
    subject_hashes: list[str] = field(default_factory=list)
    method: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    received_at: datetime | None = None
    due_at: datetime | None = None
    overdue: bool = False
    extension: dict[str, Any] | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    base_version: int | None = None
    result_version: int | None = None
    result_sha256: str | None = None
    metrics_before: dict[str, Any] | None = None
    metrics_after: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None  # set by the client on a submission's answer: resubmit with it safely

    @property
    def done(self) -> bool:
        """True once the request is completed, failed or cancelled."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class Erasure(_FromJSON):
    """An erasure: data subjects erased from the tenant's models (one deletion request per model) and
    purged from its datasets.

    `requests`: {request_id, model_id, status, progress, result_version} per model; `dataset_purge`:
    {dataset_id, samples, purged_samples} per dataset. `subjects_not_found` counts subjects in no dataset
    (recorded, not an error).
    """

    _times = ("received_at", "due_at", "finished_at")
    id: str
    status: str
    subject_count: int = 0
    subjects_not_found: int = 0
    received_at: datetime | None = None
    due_at: datetime | None = None
    finished_at: datetime | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    dataset_purge: list[dict[str, Any]] = field(default_factory=list)
    idempotency_key: str | None = None  # set by the client on a submission's answer: resubmit with it safely

    @property
    def done(self) -> bool:
        """True once the erasure is completed, failed or cancelled."""
        return self.status in TERMINAL


@dataclass(frozen=True)
class RequestSample(_FromJSON):
    """A sample a request names, and whether it has been erased."""

    _times = ("erased_at",)
    sample_id: str
    split: str
    label: int
    erased_by_request_id: str | None = None
    erased_at: datetime | None = None


@dataclass(frozen=True)
class AuditEvent(_FromJSON):
    """One audit event, a link of the hash chain (`seq` from 1 without gaps)."""

    _times = ("occurred_at",)
    seq: int
    occurred_at: datetime | None
    actor: str
    action: str
    resource_type: str
    resource_id: str
    tenant_id: str | None = None
    model_id: str | None = None
    request_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""
    tenant_seq: int | None = None  # the event's position in its tenant's chain (none for system events)
    tenant_prev_hash: str | None = None


@dataclass(frozen=True)
class AuditReferences(_FromJSON):
    """A model's audit reference models: the newest training (`latest`), the ready set in use, the tier.

    `latest` and `in_use` are the service's reference-set objects (status, count, progress, error, ...).
    """

    model_id: str
    audit_status: str
    audit_tier: str
    latest: dict[str, Any] | None = None
    in_use: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """True when no training is queued or running."""
        return self.audit_status not in ("queued", "running")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list and the cursor of the next."""

    items: list[T]
    next_cursor: str | None

"""The content of an erasure certificate: what a completed request (or a completed erasure of a
person, over every model) did, taken from the ledger.

The API signs it (api/signing.py). Everything here is fixed once the request has completed, so
the same request always yields the same content, and (Ed25519 being deterministic) the same
signed bytes under the same key; only `dataset_purge` advances, once, as the erased samples'
pixels leave the stored dataset. No personal data: subjects appear as their keyed hashes and the
erased samples as one hash of their sorted ids.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger import erasures, registry, requests
from ledger.canonical import canonical_json
from ledger.errors import Conflict
from ledger.records import Verdict, to_json
from ledger.tables import COMPLETED, AuditEvent, DatasetSample, DeletionRequest

FORMAT = "ltu-erasure-certificate/2"  # 2: the audit statement (tier, test, per-subject p-values, calibration)
SUBJECT_FORMAT = "ltu-subject-erasure-certificate/1"  # an erasure of a person: every model, and the dataset purge
COMPLETION_ACTION = "deletion_request.completed"
SUBJECT_HASHING = "HMAC-SHA256 under the service's secret key"


def sample_set_hash(sample_ids: list[str]) -> str:
    """SHA-256 of the canonical JSON array of the sorted sample ids (reproducible from the id list)."""
    return hashlib.sha256(canonical_json(sorted(sample_ids)).encode()).hexdigest()


def certificate_content(session: Session, *, tenant_id: str, request_id: str) -> dict[str, Any]:
    """The certificate of a completed request (NotFound for another tenant's, Conflict while not completed)."""
    request = requests.get_request(session, tenant_id=tenant_id, request_id=request_id)
    if request.status != COMPLETED:
        raise Conflict(f"deletion request {request_id} is {request.status}: only completed requests have a certificate")
    assert request.result_version is not None and request.base_version is not None  # completion records both
    produced = registry.get_version(session, model_id=request.model_id, number=request.result_version)
    base = registry.get_version(session, model_id=request.model_id, number=request.base_version)
    samples = requests.request_samples(session, request_id=request.id)
    verification, details = request.verification, request.details
    assert verification is not None and details is not None  # completion records both
    after, fallback, batch = verification.after, verification.fallback, verification.batch
    return {
        "format": FORMAT,
        "request": {
            "id": request.id,
            "tenant_id": request.tenant_id,
            "target_kind": request.target_kind,
            "num_targets": request.num_targets,
            "received_at": request.received_at,
            "due_at": request.due_at,
            "deadline_extension_months": (request.extension or {}).get("months", 0),
            "started_at": request.started_at,
            "completed_at": request.finished_at,
            "completed_on_time": bool(request.finished_at and request.finished_at <= request.due_at),
        },
        "subjects": {"subject_hashes": request.subject_hashes, "hashing": SUBJECT_HASHING},
        "erased_samples": {
            "count": len(samples),
            "train": sum(s.split == "train" for s in samples),
            "sha256": sample_set_hash([s.sample_id for s in samples]),
            "hashing": "SHA-256 of the canonical JSON array of the sorted sample ids",
        },
        "model": {
            "id": request.model_id,
            "base_version": {"number": base.number, "sha256": base.sha256},
            "new_version": {"number": produced.number, "sha256": produced.sha256},
        },
        "method": {
            "requested": request.method,
            "parameters": request.parameters,
            "executed": details.run.method,
            "config": details.run.config,
        },
        "metrics": {"before": to_json(request.metrics_before), "after": to_json(request.metrics_after)},
        "verification": {
            "passed": verification.passed,
            "exact": verification.exact,
            "audit": audit_statement(after) if after else None,
            "before": to_json(verification.before),
            "after": to_json(after),
            "fallback": {"method": fallback.method, "reason": fallback.reason} if fallback else None,
            # Coalesced: one unlearning run forgot several requests' samples together; `before`/`after`
            # are this request's own verdicts, `run_after` the verdict over the run's whole forget set.
            "coalesced": {
                "requests": batch.size,
                "forget_samples": batch.forget_samples,
                "run_after": to_json(batch.verdict_after),
            }
            if batch
            else None,
        },
        "audit": _covered_events(session, request),
        "dataset_purge": dataset_purge_statement(samples),
    }


def dataset_purge_statement(samples: list[DatasetSample]) -> dict[str, Any]:
    """How many of the request's samples have had their pixels removed from the stored dataset so far."""
    purged = sum(s.purged_at is not None for s in samples)
    return {
        "samples": len(samples),
        "purged_samples": purged,
        "complete": purged == len(samples),
        "rule": "an erased sample's pixels are removed from the stored dataset once every model registered on it "
        "has erased it (at once under the tenant's purge-at-once policy); until then they follow",
    }


def erasure_certificate_content(session: Session, *, tenant_id: str, erasure_id: str) -> dict[str, Any]:
    """The certificate of a completed erasure: each model's request certificate and the dataset purge.

    NotFound for another tenant's, Conflict while not completed. The models' parts are fixed once
    the erasure completes; `dataset_purge` states the purge as it stands when the certificate is issued.
    """
    erasure = erasures.get_erasure(session, tenant_id=tenant_id, erasure_id=erasure_id)
    state = erasures.states(session, [erasure])[0]
    if state.status != COMPLETED:
        raise Conflict(f"erasure {erasure_id} is {state.status}: only completed erasures have a certificate")
    assert state.finished_at is not None  # a completed erasure has ended
    received = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).where(
            AuditEvent.resource_id == erasure.id, AuditEvent.action == "erasure.received"
        )
    ).one()
    return {
        "format": SUBJECT_FORMAT,
        "erasure": {
            "id": erasure.id,
            "tenant_id": erasure.tenant_id,
            "subject_count": len(erasure.subject_hashes),
            "subjects_not_found": erasure.subjects_not_found,
            "restricted_to": {"model_ids": erasure.model_ids, "dataset_ids": erasure.dataset_ids},
            "received_at": erasure.received_at,
            "due_at": state.due_at,
            "completed_at": state.finished_at,
            "completed_on_time": state.finished_at <= state.due_at,
        },
        "subjects": {"subject_hashes": erasure.subject_hashes, "hashing": SUBJECT_HASHING},
        "models": [certificate_content(session, tenant_id=tenant_id, request_id=r.id) for r in state.requests],
        "dataset_purge": [
            {
                "dataset_id": p.dataset_id,
                "samples": p.samples,
                "purged_samples": p.purged_samples,
                "complete": p.purged_samples == p.samples,
            }
            for p in state.dataset_purge
        ],
        "audit": {"received_seq": received.seq, "received_hash": received.hash},
    }


def audit_statement(verdict: Verdict) -> dict[str, Any]:
    """What the erasure audit of the published model claims, and the measured error rates behind the claim."""
    calibration = verdict.calibration
    return {
        "outcome": verdict.outcome,
        "tier": verdict.tier,
        "tier_reason": verdict.tier_reason,
        "test": verdict.test,
        "alpha": verdict.alpha,
        "samples": verdict.n_forget,
        "subjects": verdict.n_subjects,
        "control_samples": verdict.n_control,
        "family_size": verdict.family_size,
        "conclusive": verdict.conclusive,
        "over_forgetting": verdict.over_forgetting,
        "audit_seed": verdict.audit_seed,
        "subject_p_values": [
            {"subject": s.subject, "samples": s.samples, "p": s.p_remembered, "holm_adjusted_p": s.adjusted_remembered}
            for s in verdict.subjects
        ],
        "measured": to_json(calibration) if calibration else None,
        "max_test_drop": verdict.max_test_drop,
    }


def _covered_events(session: Session, request: DeletionRequest) -> dict[str, Any]:
    """The request's audit events up to its completion, and the chain hash there (the anchor)."""
    rows = session.execute(
        select(AuditEvent.seq, AuditEvent.action, AuditEvent.hash)
        .where(AuditEvent.request_id == request.id)
        .order_by(AuditEvent.seq)
    ).all()
    end = next(i for i, row in enumerate(rows) if row.action == COMPLETION_ACTION)
    covered = rows[: end + 1]
    return {
        "sequence_numbers": [row.seq for row in covered],
        "last_seq": covered[-1].seq,
        "last_hash": covered[-1].hash,
    }

"""One erasure through HTTP, end to end: embedded (SQLite + in-process runner) and the deployed
shape (Postgres + a real Celery worker process on Redis), with the same scenario."""

from __future__ import annotations

import hashlib
import json

import pytest

from ltu_client import ApiError


def erasure_scenario(service, artifacts, tmp_path) -> None:
    """register dataset and model → submit → completed → new version downloads with its sha256 →
    the subject's samples are erased → an audit event for every transition → the chain and the
    certificate verify."""
    from ltu_client import load_public_key, verify_certificate

    client = service.client
    tiny = service.tiny_ltu
    dataset = client.register_dataset(artifacts.archive)
    assert dataset.num_samples == len(artifacts.dataset)
    model = client.register_model(artifacts.weights, dataset_id=dataset.id, name="tiny", recipe=artifacts.recipe)
    assert [v.number for v in client.list_versions(model.id)] == [1]

    subject = artifacts.subject_with_train_samples()
    body = {"model_id": model.id, "subject_ids": [subject], "parameters": tiny}
    answer = service.http.post(
        "/v1/deletion-requests", json=body, headers={**client.headers, "Idempotency-Key": "ticket-1"}
    )
    assert answer.status_code == 202, answer.text
    request_id = answer.json()["id"]
    assert answer.headers["Location"] == f"/v1/deletion-requests/{request_id}"
    assert int(answer.headers["Retry-After"]) >= 1
    assert subject not in answer.text  # only keyed hashes come back

    # Same key + same body: the same request. Same key + another body: 422.
    again = client.submit_deletion(model.id, subject_ids=[subject], parameters=tiny, idempotency_key="ticket-1")
    assert again.id == request_id
    with pytest.raises(ApiError) as err:
        client.submit_deletion(
            model.id, subject_ids=[subject], parameters={**tiny, "max_passes": 2.0}, idempotency_key="ticket-1"
        )
    assert err.value.status == 422 and err.value.code == "idempotency_key_reused"

    done = client.wait(request_id, timeout=300, poll=0.2)
    assert done.status == "completed", done.error
    assert done.metrics_before and done.metrics_after and {"ua", "ra", "ta", "mia"} <= set(done.metrics_after)
    assert done.verification["before"]["forget_nonmember_rate"] is not None
    assert "passed" in done.verification["after"]

    # Exactly one new version, produced by this request; the old one is superseded.
    versions = client.list_versions(model.id)
    assert [v.number for v in versions] == [2, 1]
    assert versions[0].producing_request_id == request_id and versions[0].current
    assert versions[1].state == "superseded"
    assert client.get_model(model.id).current_version == 2
    assert done.result_version == 2 and done.base_version == 1

    path = client.download_weights(model.id, 2, tmp_path / "v2.safetensors")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == done.result_sha256 == versions[0].sha256

    # Every sample of the subject (any split) is marked erased by this request.
    samples = client.request_samples(request_id)
    assert {s.sample_id for s in samples} == artifacts.samples_of(subject)
    assert all(s.erased_by_request_id == request_id and s.erased_at for s in samples)
    assert client.get_dataset(dataset.id).erased_samples == len(samples)

    # An audit event for every transition, in order, and for the publication.
    actions = [e.action for e in client.audit_events(request_id=request_id)]
    lifecycle = [a for a in actions if a.startswith("deletion_request.")]
    assert lifecycle == [
        "deletion_request.received",
        "deletion_request.queued",
        "deletion_request.running",
        "deletion_request.completed",
    ]
    assert {"model_version.created", "model_version.superseded", "samples.erased"} <= set(actions)
    assert any(e.action == "dataset.registered" for e in client.audit_events(action="dataset.registered"))

    # Compliance: the audit chain verifies, and so does the request's signed certificate.
    assert client.verify_audit()["valid"]
    document = client.certificate(request_id)
    content = verify_certificate(document, load_public_key(json.dumps(client.certificate_key())))
    assert (
        content["model"]["new_version"]["sha256"] == done.result_sha256 and client.certificate(request_id) == document
    )
    assert client.audit_summary()["overall"]["by_status"]["completed"] == 1

    # The subject is gone: a new request for it is refused with a clear message.
    with pytest.raises(ApiError) as err:
        client.submit_deletion(model.id, subject_ids=[subject])
    assert err.value.status == 422 and "already been erased" in err.value.detail


def test_embedded_sqlite_end_to_end(embedded, artifacts, tmp_path):
    erasure_scenario(embedded, artifacts, tmp_path)


def test_postgres_celery_end_to_end(celery_service, artifacts, tmp_path):
    erasure_scenario(celery_service, artifacts, tmp_path)
    ready = celery_service.client.ready()
    assert ready["database"] == "postgresql" and ready["runner"] == "celery"

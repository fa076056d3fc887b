"""Coalescing: waiting requests on one model share one unlearning run, each keeping its own record."""

from __future__ import annotations

import json

import pytest

from tests.support import setup_model


def test_waiting_requests_on_one_model_run_once_and_complete_together(api, artifacts):
    from ltu_client import load_public_key, verify_certificate
    from worker.runner import EmbeddedRunner

    model = setup_model(api, artifacts)
    subjects = [artifacts.subject_with_train_samples(i) for i in range(3)]
    submitted = [api.client.submit_deletion(model.id, subject_ids=[s], parameters=api.tiny_ltu) for s in subjects]
    # Other parameters cannot share the run: this one runs on its own, on the batch's version.
    apart = api.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples(3)], parameters={**api.tiny_ltu, "batch_size": 8}
    )

    EmbeddedRunner(api.settings).run_pending()

    done = [api.client.get_request(r.id) for r in submitted]
    assert all(r.status == "completed" for r in done), [(r.status, r.error) for r in done]
    assert {r.result_version for r in done} == {2} and len({r.result_sha256 for r in done}) == 1
    assert all(r.attempts == 1 for r in done)
    separate = api.client.get_request(apart.id)
    assert separate.status == "completed" and (separate.base_version, separate.result_version) == (2, 3)
    assert [v.number for v in api.client.list_versions(model.id)] == [3, 2, 1]

    forget_total = sum(r.details["own_forget_samples"] for r in done)
    key = load_public_key(json.dumps(api.client.certificate_key()))
    for request, _subject in zip(done, subjects, strict=True):
        # Its own samples, metrics and verdict; the run's verdict over the union beside it.
        own = request.details["own_forget_samples"]
        assert own == sum(1 for s in api.client.request_samples(request.id) if s.split == "train")
        assert request.verification["after"]["n_forget"] == own
        assert request.verification["batch"]["size"] == 3
        assert request.verification["batch"]["verdict_after"]["n_forget"] == forget_total
        assert request.details["split"]["sizes"]["forget"] == forget_total
        assert set(request.metrics_before) == set(request.metrics_after) and "ua" in request.metrics_after
        assert all(
            s.erased_by_request_id == request.id for s in api.client.request_samples(request.id) if s.split == "train"
        )
        actions = [e.action for e in api.client.audit_events(request_id=request.id)]
        assert actions[0] == "deletion_request.received" and actions[-1] == "deletion_request.completed"
        assert actions.count("deletion_request.running") == 1 and actions.count("samples.erased") == 1
        content = verify_certificate(api.client.certificate(request.id), key)
        assert content["request"]["id"] == request.id and content["model"]["new_version"]["number"] == 2
        assert content["verification"]["coalesced"]["requests"] == 3


@pytest.mark.parametrize("max_batch", [1, 2])
def test_the_batch_is_capped(make_service, artifacts, max_batch):
    from worker.runner import EmbeddedRunner

    service = make_service(coalesce_max_batch=max_batch)
    model = setup_model(service, artifacts)
    for i in range(3):
        service.client.submit_deletion(
            model.id, subject_ids=[artifacts.subject_with_train_samples(i)], parameters=service.tiny_ltu
        )
    EmbeddedRunner(service.settings).run_pending()
    runs = 3 if max_batch == 1 else 2
    assert [v.number for v in service.client.list_versions(model.id)] == list(range(runs + 1, 0, -1))


def test_a_member_cancelled_mid_run_leaves_the_batch(api, artifacts):
    """Cancelling one coalesced request ends it as cancelled; the others complete without marking its samples."""
    from ledger import requests
    from worker.attempt import Attempt
    from worker.context import JobContext
    from worker.job import execute

    model = setup_model(api, artifacts)
    first, second = (
        api.client.submit_deletion(
            model.id, subject_ids=[artifacts.subject_with_train_samples(i)], parameters=api.tiny_ltu
        )
        for i in range(2)
    )
    ctx = JobContext.from_settings(api.settings)
    with ctx.database.transaction() as session:
        leader = requests.claim(session, request_id=first.id, token="t", lease_seconds=60, max_attempts=3)
        siblings = requests.claim_siblings(session, leader=leader, lease_seconds=60, max_attempts=3, limit=5)
    assert [s.id for s in siblings] == [second.id]
    assert api.client.cancel_request(second.id).cancel_requested
    attempt = Attempt(ctx, [first.id, second.id], "t")
    assert execute(attempt) == "completed"
    assert attempt.request_ids == [first.id]
    assert api.client.get_request(first.id).status == "completed"
    cancelled = api.client.get_request(second.id)
    assert cancelled.status == "cancelled" and cancelled.result_version is None
    assert all(s.erased_by_request_id is None for s in api.client.request_samples(second.id))

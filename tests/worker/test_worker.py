"""The erasure job: redelivery, crash takeover, cancellation, verification fallback, failures."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from ltu_client import ApiError
from tests.support import job_context, setup_model


def test_redelivery_is_a_no_op_and_publishes_once(api, artifacts):
    from worker.job import run_erasure
    from worker.runner import EmbeddedRunner

    model = setup_model(api, artifacts)
    request = api.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=api.tiny_ltu
    )
    assert EmbeddedRunner(api.settings).run_pending() == 1
    assert api.client.get_request(request.id).status == "completed"
    # The task delivered again (broker redelivery, a second relay): nothing changes.
    assert run_erasure(job_context(api), request.id) == "skipped"
    assert EmbeddedRunner(api.settings).run_pending() == 0
    assert [v.number for v in api.client.list_versions(model.id)] == [2, 1]
    running = [e for e in api.client.audit_events(request_id=request.id) if e.action == "deletion_request.running"]
    assert len(running) == 1


def test_a_crashed_execution_is_taken_over_then_capped(api, artifacts):
    from ledger import requests
    from ledger.tables import DeletionRequest, utcnow
    from worker.job import run_erasure

    model = setup_model(api, artifacts)
    first = api.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples(0)], parameters=api.tiny_ltu
    )
    second = api.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples(1)], parameters=api.tiny_ltu
    )
    ctx = job_context(api, coalesce_max_batch=1)  # one request per run: the takeover is what is tested

    def crash(request_id: str, *, attempts_left: int) -> None:
        # A worker claimed the request and died: running, with a heartbeat older than the lease.
        with ctx.database.transaction() as session:
            requests.claim(session, request_id=request_id, token="dead-worker", lease_seconds=0, max_attempts=99)
            row = session.get(DeletionRequest, request_id)
            assert row.status == "running"
            row.heartbeat_at = utcnow() - timedelta(seconds=api.settings.worker.lease_seconds + 1)
            row.attempts = api.settings.worker.max_attempts - attempts_left

    # While the other execution's lease is live, a delivery leaves it alone (the reconciler watches the lease).
    with ctx.database.transaction() as session:
        assert requests.claim(session, request_id=first.id, token="live-worker", lease_seconds=0, max_attempts=99)
    assert run_erasure(ctx, first.id) == "held"

    crash(first.id, attempts_left=1)
    assert run_erasure(ctx, first.id) == "completed"
    done = api.client.get_request(first.id)
    assert done.status == "completed" and done.attempts == api.settings.worker.max_attempts
    resumed = [e.data for e in api.client.audit_events(request_id=first.id) if e.action == "deletion_request.running"]
    assert resumed[-1]["resumed"] is True

    crash(second.id, attempts_left=0)
    assert run_erasure(ctx, second.id) == "skipped"
    failed = api.client.get_request(second.id)
    assert failed.status == "failed" and failed.error["code"] == "attempts_exhausted"
    assert [v.number for v in api.client.list_versions(model.id)] == [2, 1]


def test_cancel_before_start_and_after_the_end(api, artifacts):
    from worker.runner import EmbeddedRunner

    model = setup_model(api, artifacts)
    request = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples()])
    cancelled = api.client.cancel_request(request.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert api.client.cancel_request(request.id).status == "cancelled"  # idempotent
    EmbeddedRunner(api.settings).run_pending()  # the dispatch row is consumed, the job does nothing
    assert api.client.get_request(request.id).status == "cancelled"
    assert api.client.list_versions(model.id)[0].number == 1
    actions = [e.action for e in api.client.audit_events(request_id=request.id)]
    assert actions == ["deletion_request.received", "deletion_request.cancelled"]

    # A cancelled subject can be submitted again; a finished request cannot be cancelled.
    again = api.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=api.tiny_ltu
    )
    EmbeddedRunner(api.settings).run_pending()
    with pytest.raises(ApiError) as err:
        api.client.cancel_request(again.id)
    assert err.value.status == 409


def test_cancel_while_running_stops_between_steps(embedded, artifacts):
    model = setup_model(embedded, artifacts)
    long_ltu = {**embedded.tiny_ltu, "max_passes": 500.0, "stop_rule": "none"}
    request = embedded.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=long_ltu
    )
    deadline = time.monotonic() + 120
    while (current := embedded.client.get_request(request.id)).progress.get("phase") != "unlearning":
        assert current.status in ("received", "queued", "running") and time.monotonic() < deadline, current
        time.sleep(0.1)
    assert embedded.client.cancel_request(request.id).cancel_requested
    done = embedded.client.wait(request.id, timeout=120, poll=0.2)
    assert done.status == "cancelled"
    assert done.progress["step"] < done.progress["total"] or done.progress["total"] == 0
    assert [v.number for v in embedded.client.list_versions(model.id)] == [1]
    actions = [e.action for e in embedded.client.audit_events(request_id=request.id)]
    assert actions[-2:] == ["deletion_request.cancel_requested", "deletion_request.cancelled"]


def test_failed_verification_falls_back_to_retrain_and_says_so(make_service, artifacts):
    from worker.runner import EmbeddedRunner

    # A test-accuracy threshold no model can meet: verification always fails.
    strict = make_service(verify_max_test_drop=-100.0)
    model = setup_model(strict, artifacts)
    request = strict.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=strict.tiny_ltu
    )
    EmbeddedRunner(strict.settings).run_pending()
    done = strict.client.get_request(request.id)
    assert done.status == "completed" and done.result_version == 2
    verification = done.verification
    assert verification["exact"] is True and verification["passed"] is False
    assert verification["fallback"]["method"] == "retrain"
    assert verification["fallback"]["first_attempt"]["method"] == "ltu"
    assert done.details["run"]["method"] == "retrain"

    # Without the fallback, nothing is published and the record says why.
    no_fallback = make_service(verify_max_test_drop=-100.0, fallback_to_retrain=False)
    model = setup_model(no_fallback, artifacts)
    request = no_fallback.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=no_fallback.tiny_ltu
    )
    EmbeddedRunner(no_fallback.settings).run_pending()
    failed = no_fallback.client.get_request(request.id)
    assert failed.status == "failed" and failed.error["code"] == "verification_failed"
    assert failed.verification["passed"] is False and "utility" in failed.error["message"]
    assert [v.number for v in no_fallback.client.list_versions(model.id)] == [1]
    samples = no_fallback.client.request_samples(request.id)
    assert all(s.erased_by_request_id is None for s in samples)


@pytest.mark.parametrize(
    "method, parameters, code",
    [
        ("no_such_method", {}, "unknown_method_error"),
        ("ltu", {"not_a_knob": 1}, "method_config_error"),
        ("ltu", {"batch_size": "large"}, "method_config_error"),
        ("retrain", {}, "no_recipe"),
    ],
)
def test_bad_methods_fail_with_a_reason(api, artifacts, method, parameters, code):
    from worker.runner import EmbeddedRunner

    model = setup_model(api, artifacts, recipe=False)
    request = api.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], method=method, parameters=parameters
    )
    EmbeddedRunner(api.settings).run_pending()
    failed = api.client.get_request(request.id)
    assert failed.status == "failed" and failed.error["code"] == code and failed.error["message"]
    assert [e.action for e in api.client.audit_events(request_id=request.id)][-1] == "deletion_request.failed"


def test_later_requests_never_read_erased_samples(api, artifacts):
    from worker.runner import EmbeddedRunner

    model = setup_model(api, artifacts)
    first_subject, second_subject = artifacts.subject_with_train_samples(0), artifacts.subject_with_train_samples(1)
    first = api.client.submit_deletion(model.id, subject_ids=[first_subject], parameters=api.tiny_ltu)
    second = api.client.submit_deletion(
        model.id, subject_ids=[second_subject], method="retrain", parameters={"epochs": 1}
    )
    EmbeddedRunner(api.settings).run_pending()
    first, second = api.client.get_request(first.id), api.client.get_request(second.id)
    assert (first.result_version, second.result_version) == (2, 3) and second.base_version == 2
    # The second run excluded every sample the first erased (all splits), and retrained without them.
    assert second.details["excluded_erased_samples"] == len(artifacts.samples_of(first_subject))
    sizes = second.details["split"]["sizes"]
    train_total = len(artifacts.dataset.split_indices("train"))
    first_train = sum(s.split == "train" for s in api.client.request_samples(first.id))
    assert sizes["retain"] + sizes["forget"] == train_total - first_train


def test_the_reconciler_requeues_interrupted_work_then_gives_up(api, artifacts):
    from ledger import requests
    from ledger.tables import DeletionRequest, utcnow
    from worker.job import run_erasure
    from worker.reconciler import reconcile_once

    model = setup_model(api, artifacts)
    killed, lost, live = (
        api.client.submit_deletion(
            model.id, subject_ids=[artifacts.subject_with_train_samples(i)], parameters=api.tiny_ltu
        )
        for i in range(3)
    )
    ctx = job_context(api, coalesce_max_batch=1)
    lease = api.settings.worker.lease_seconds
    old = utcnow() - timedelta(seconds=lease + 1)
    with ctx.database.transaction() as session:
        requests.claim(session, request_id=killed.id, token="killed-worker", lease_seconds=lease, max_attempts=3)
        session.get(DeletionRequest, killed.id).heartbeat_at = old  # its worker died mid-run
        session.get(DeletionRequest, killed.id).updated_at = old
        requests.mark_queued(session, request_id=lost.id)
        session.flush()
        session.get(DeletionRequest, lost.id).updated_at = old  # the broker lost its message
    outcome = reconcile_once(ctx.database, api.settings.replace(requeue_queued_after=lease))
    assert set(outcome.requeued) == {killed.id, lost.id} and outcome.failed == ()
    assert reconcile_once(ctx.database, api.settings).requeued == ()  # not twice within one lease
    reasons = {e.request_id: e.data["reason"] for e in api.client.audit_events(action="deletion_request.requeued")}
    assert reasons == {killed.id: "worker_lost", lost.id: "broker_lost"}

    # The requeued messages run them (the killed one is taken over).
    assert run_erasure(ctx, killed.id) == "completed" and run_erasure(ctx, lost.id) == "completed"

    # A live execution is left alone; once it dies with its last attempt used, it is failed with the reason.
    with ctx.database.transaction() as session:
        requests.claim(session, request_id=live.id, token="live-worker", lease_seconds=lease, max_attempts=3)
    assert reconcile_once(ctx.database, api.settings) == requests.Reconciled()
    with ctx.database.transaction() as session:
        row = session.get(DeletionRequest, live.id)
        row.heartbeat_at = row.updated_at = old
        row.attempts = api.settings.worker.max_attempts
    assert reconcile_once(ctx.database, api.settings).failed == (live.id,)
    failed = api.client.get_request(live.id)
    assert failed.status == "failed" and failed.error["code"] == "attempts_exhausted"
    assert "worker lost" in failed.error["message"]
    assert [v.number for v in api.client.list_versions(model.id)] == [3, 2, 1]

"""The reliability layer never fails healthy work: silent phases, waiting, passing faults, a broken device,
concurrent workers on one model, a member cancelled mid-run, shutdown, clock skew, old outbox rows.

Each fault is injected into the real component: a step that stays silent for several leases while
the reconciler runs, a step that raises the driver's own exception, two workers racing on Postgres.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy.exc

from tests.support import job_context, setup_model


def submit(service, model, index: int, **parameters):
    return service.client.submit_deletion(
        model.id,
        subject_ids=[service_subject(service, index)],
        parameters={**service.tiny_ltu, **parameters},
    )


def service_subject(service, index: int) -> str:
    return service.subjects[index]


@pytest.fixture()
def ready(make_service, artifacts):
    """factory(**settings) → (service, model) with a registered model and subject lookup."""

    def make(**overrides):
        service = make_service(**overrides)
        service.subjects = [artifacts.subject_with_train_samples(i) for i in range(6)]
        return service, setup_model(service, artifacts)

    return make


def events(service, request_id: str, action: str) -> list[dict]:
    return [e.data for e in service.client.audit_events(request_id=request_id) if e.action == action]


@contextlib.contextmanager
def reconciling(reconcile_pass):
    """Run `reconcile_pass` every 0.1 s in a thread for the block; yields the list of the passes' outcomes."""
    stop, passes = threading.Event(), []

    def loop():
        while not stop.wait(0.1):
            passes.append(reconcile_pass())

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield passes
    finally:
        stop.set()
        thread.join()


# --- 1. silent phases and waiting ----------------------------------------------------------------


def test_a_phase_silent_for_many_leases_keeps_its_request(ready, monkeypatch):
    """The measurement writes nothing for four leases while the reconciler runs every 0.1 s: the heartbeat
    thread keeps the lease, so the request is neither requeued nor taken over, and completes on attempt 1."""
    from worker.job import run_erasure
    from worker.reconciler import reconcile_once
    from worker.steps import measure

    service, model = ready(lease_seconds=1.0)
    request = submit(service, model, 0)
    silent_measure = measure.run

    def slow(*args, **kwargs):
        time.sleep(4.0)  # four leases without a progress write
        return silent_measure(*args, **kwargs)

    monkeypatch.setattr(measure, "run", slow)
    ctx = job_context(service, coalesce_max_batch=1)
    with reconciling(lambda: reconcile_once(ctx.database, service.settings)) as passes:
        assert run_erasure(ctx, request.id) == "completed"
    assert len(passes) > 30 and not any(p.requeued or p.failed for p in passes)
    done = service.client.get_request(request.id)
    assert done.status == "completed" and done.attempts == 1
    assert events(service, request.id, "deletion_request.requeued") == []


def test_waiting_in_the_broker_is_never_held_against_a_request(ready):
    """A queued request the broker lost is dispatched again every lease, ten times, and never failed."""
    from ledger import requests
    from ledger.tables import DeletionRequest, utcnow
    from worker.reconciler import reconcile_once

    service, model = ready()
    request = submit(service, model, 0)
    ctx = job_context(service)
    lease = service.settings.worker.lease_seconds
    with ctx.database.transaction() as session:
        requests.mark_queued(session, request_id=request.id)
    settings = service.settings.replace(requeue_queued_after=lease, max_attempts=1)
    for _ in range(10):
        with ctx.database.transaction() as session:  # a lease and more has passed since the last pass
            session.get(DeletionRequest, request.id).updated_at = utcnow() - timedelta(seconds=lease + 1)
        assert reconcile_once(ctx.database, settings).requeued == (request.id,)
    waiting = service.client.get_request(request.id)
    assert waiting.status == "queued" and waiting.attempts == 0
    assert [e["requeue"] for e in events(service, request.id, "deletion_request.requeued")] == list(range(1, 11))


def test_the_lease_is_judged_on_the_database_clock(ready, monkeypatch):
    """A worker whose clock runs an hour behind writes heartbeats a reconciler reads as fresh: every lease
    timestamp comes from the database, not from the host."""
    from ledger import leases, requests
    from ledger.tables import DeletionRequest, utcnow
    from worker.reconciler import reconcile_once

    service, model = ready()
    request = submit(service, model, 0)
    ctx = job_context(service)
    behind = utcnow() - timedelta(hours=1)
    monkeypatch.setattr(requests, "utcnow", lambda: behind)  # the worker host's clock
    with ctx.database.transaction() as session:
        requests.claim(session, request_id=request.id, token="w", lease_seconds=300, max_attempts=3)
        assert requests.heartbeat(session, request_ids=[request.id], token="w") == 1
    monkeypatch.undo()
    with ctx.database.session() as session:
        heartbeat = session.get(DeletionRequest, request.id).heartbeat_at
        assert abs((heartbeat - leases.db_now(session)).total_seconds()) < 60
    assert reconcile_once(ctx.database, service.settings) == requests.Reconciled()


def test_the_database_clock_on_postgres(postgres_url):
    from ledger import leases
    from ledger.db import Database
    from ledger.tables import utcnow

    database = Database(postgres_url)
    try:
        with database.session() as session:
            now = leases.db_now(session)
        assert now.tzinfo is not None and abs((now - utcnow()).total_seconds()) < 60
    finally:
        database.dispose()


# --- 2. passing faults, a broken device ------------------------------------------------------------


def _fails_once(monkeypatch, module, name: str, exc: BaseException) -> list[int]:
    """Make `module.name` raise `exc` on its first call only; returns the call log."""
    original, calls = getattr(module, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise exc
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)
    return calls


def _out_of_memory():
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


PASSING_FAULTS = {
    "sqlite locked": lambda: sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is locked")),
    "connection lost": lambda: sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionResetError("reset")),
    "cuda out of memory": _out_of_memory,
    "disk full": lambda: OSError(errno.ENOSPC, "No space left on device"),
}


@pytest.mark.parametrize("fault", PASSING_FAULTS)
def test_a_passing_fault_puts_the_request_back_and_it_completes(ready, monkeypatch, fault):
    from worker.runner import EmbeddedRunner
    from worker.steps import unlearn

    service, model = ready(retry_backoff_seconds=0)
    request = submit(service, model, 0)
    calls = _fails_once(monkeypatch, unlearn, "run", PASSING_FAULTS[fault]())
    EmbeddedRunner(service.settings).run_pending()
    done = service.client.get_request(request.id)
    assert done.status == "completed", done.error
    assert (done.attempts, done.retries, len(calls)) == (1, 1, 2)
    (released,) = [e for e in events(service, request.id, "deletion_request.queued") if e.get("reason")]
    assert released["reason"].startswith("a passing fault") and released["retries"] == 1
    assert [v.number for v in service.client.list_versions(model.id)] == [2, 1]


def test_a_passing_fault_backs_off_then_fails_with_its_reason_when_it_keeps_coming(ready, monkeypatch):
    from ledger.tables import OutboxMessage, utcnow
    from worker.runner import EmbeddedRunner
    from worker.steps import unlearn

    service, model = ready(retry_backoff_seconds=60, retry_backoff_cap_seconds=90, max_transient_retries=2)
    request = submit(service, model, 0)

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(unlearn, "run", disk_full)
    runner = EmbeddedRunner(service.settings)
    delays = []
    for _ in range(3):
        runner.run_pending()
        with runner.context.database.transaction() as session:  # the backoff's dispatch row, made due now
            row = session.query(OutboxMessage).filter(OutboxMessage.dispatched_at.is_(None)).one_or_none()
            if row is None:
                break
            delays.append(round((row.claimed_until - utcnow()).total_seconds() / 30) * 30)
            row.claimed_until = None
    assert delays == [60, 90]  # doubled, capped
    failed = service.client.get_request(request.id)
    assert failed.status == "failed" and failed.error["code"] == "transient_error"
    assert "No space left" in failed.error["message"] and failed.retries == 2


def test_a_database_blip_during_a_progress_write_is_ridden_out(ready, monkeypatch):
    from ledger import requests
    from worker import attempt
    from worker.runner import EmbeddedRunner

    service, model = ready()
    request = submit(service, model, 0)
    monkeypatch.setattr(attempt, "WRITE_RETRY_DELAYS", (0.01, 0.01, 0.01))
    original, failures = requests.report, []

    def blip(session, **kwargs):
        if kwargs.get("phase") == "unlearning" and len(failures) < 2:
            failures.append(1)
            raise sqlalchemy.exc.OperationalError("UPDATE", {}, ConnectionResetError("server closed the connection"))
        return original(session, **kwargs)

    monkeypatch.setattr(requests, "report", blip)
    EmbeddedRunner(service.settings).run_pending()
    done = service.client.get_request(request.id)
    assert failures == [1, 1] and done.status == "completed" and (done.attempts, done.retries) == (1, 0)


def test_a_broken_device_stops_the_worker_and_another_one_completes_the_request(ready, monkeypatch):
    from worker.runner import EmbeddedRunner
    from worker.steps import unlearn

    service, model = ready()
    first, second = submit(service, model, 0), submit(service, model, 1, batch_size=8)  # two runs
    _fails_once(monkeypatch, unlearn, "run", RuntimeError("CUDA error: an illegal memory access was encountered"))
    broken = EmbeddedRunner(service.settings)
    broken.run_pending()
    assert broken.problem is not None and "CUDA error" in broken.problem
    back = service.client.get_request(first.id)
    assert back.status == "queued" and back.attempts == 1  # the attempt counts: a poison request still ends
    assert service.client.get_request(second.id).status == "received"  # the broken worker took nothing more
    assert broken.run_pending() == 0

    healthy = EmbeddedRunner(service.settings)
    healthy.run_pending()
    for request in (first, second):
        assert service.client.get_request(request.id).status == "completed"


def test_a_celery_worker_whose_device_failed_leaves_its_queues_and_hands_deliveries_on(ready, monkeypatch):
    from ledger import outbox
    from worker.celery_app import create_celery
    from worker.steps import unlearn

    service, model = ready()
    first, second = submit(service, model, 0), submit(service, model, 1, batch_size=8)
    settings = service.settings.replace(broker_url="redis://127.0.0.1:1/0", queue="gpu-x", audit_queue="audit-x")
    app = create_celery(settings)
    task = app.tasks[outbox.ERASURE_TASK]
    left, handed_on = [], []
    monkeypatch.setattr(app.control, "cancel_consumer", lambda queue, destination: left.append((queue, destination)))
    monkeypatch.setattr(task, "retry", lambda countdown: handed_on.append(countdown) or RuntimeError("retry"))
    _fails_once(monkeypatch, unlearn, "run", RuntimeError("CUDA error: an illegal memory access was encountered"))
    task.push_request(hostname="gpu0@host", id="t1")
    try:
        assert task.run(first.id) == "released"
        assert left == [("gpu-x", ["gpu0@host"]), ("audit-x", ["gpu0@host"])]
        with pytest.raises(RuntimeError, match="retry"):  # a delivery still in flight goes back to the broker
            task.run(second.id)
    finally:
        task.pop_request()
    assert handed_on == [5.0]
    assert [service.client.get_request(r.id).status for r in (first, second)] == ["queued", "received"]


def test_readiness_reports_a_broken_device(make_service, artifacts):
    from tests.support import problem

    service = make_service(runner=True)
    assert service.http.get("/readyz").status_code == 200
    service.runner.context.device_fault = "AcceleratorError: CUDA error: unspecified launch failure"
    body = problem(service.http.get("/readyz"), 503)
    assert body["code"] == "worker_device_failed" and "CUDA error" in body["detail"]


def test_a_defect_still_fails_with_internal_error(ready, monkeypatch):
    from worker.runner import EmbeddedRunner
    from worker.steps import unlearn

    service, model = ready()
    request = submit(service, model, 0)
    _fails_once(monkeypatch, unlearn, "run", KeyError("a bug"))
    EmbeddedRunner(service.settings).run_pending()
    failed = service.client.get_request(request.id)
    assert failed.status == "failed" and failed.error["code"] == "internal_error" and failed.retries == 0


# --- 2. concurrency on one model (Postgres) ----------------------------------------------------------


@pytest.fixture()
def on_postgres(make_service, artifacts, fresh_postgres_url):
    service = make_service(
        database_url=fresh_postgres_url, secret_key=secrets.token_urlsafe(48), coalesce_window_seconds=0.0
    )
    service.subjects = [artifacts.subject_with_train_samples(i) for i in range(6)]
    yield service, setup_model(service, artifacts)


def test_two_workers_claiming_one_model_at_once_never_deadlock(on_postgres, monkeypatch):
    """Each worker claims its own request, then looks for siblings to coalesce: on Postgres the two
    claims used to lock each other's request rows in opposite orders (DeadlockDetected). The model's
    row is locked first now, so the second claim waits for the first and finds its request taken."""
    from ledger import requests
    from worker.claim import claim

    service, model = on_postgres
    first, second = submit(service, model, 0), submit(service, model, 1)
    barrier, original = threading.Barrier(2, timeout=3), requests.claim_siblings

    def meet_then_claim_siblings(session, **kwargs):
        # Both leaders claimed before either looks for siblings: the old deadlock's interleaving. A broken
        # barrier means the other claim is blocked on the model's lock: nothing to meet.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return original(session, **kwargs)

    monkeypatch.setattr(requests, "claim_siblings", meet_then_claim_siblings)
    ctxs = [job_context(service) for _ in range(2)]
    results: dict[str, object] = {}

    def worker(ctx, request_id):
        try:
            results[request_id] = claim(ctx, request_id)
        except Exception as exc:
            results[request_id] = exc

    threads = [threading.Thread(target=worker, args=(c, r.id)) for c, r in zip(ctxs, (first, second), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(isinstance(r, Exception) for r in results.values()), results
    attempts = [r for r in results.values() if not isinstance(r, str)]
    assert len(attempts) == 1 and sorted(attempts[0].request_ids) == sorted([first.id, second.id])
    assert sorted(str(r) for r in results.values() if isinstance(r, str)) == ["held"]


def test_workers_with_different_methods_on_one_model_take_turns_and_all_complete(on_postgres):
    """Three workers, three methods that cannot share a run, one model: each run waits for the model
    (WAITING) instead of publishing on a base that moved, so none ends in stale_base."""
    from worker.job import run_erasure

    service, model = on_postgres
    submitted = [
        submit(service, model, 0),
        submit(service, model, 1, batch_size=8),
        submit(service, model, 2, batch_size=2),
    ]
    outcomes: dict[str, list[str]] = {r.id: [] for r in submitted}

    def worker(request_id):
        ctx = job_context(service)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            outcome = run_erasure(ctx, request_id)
            outcomes[request_id].append(str(outcome))
            if outcome.retry_after is None:
                return
            time.sleep(0.2)

    threads = [threading.Thread(target=worker, args=(r.id,)) for r in submitted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    done = [service.client.get_request(r.id) for r in submitted]
    assert all(r.status == "completed" for r in done), [(r.status, r.error, outcomes[r.id]) for r in done]
    assert sorted(r.result_version for r in done) == [2, 3, 4]
    assert sorted(r.base_version for r in done) == [1, 2, 3]  # one after another, never on a moved base
    assert any("waiting" in o for o in outcomes.values()), outcomes


# --- 4. a member of a coalesced run cancelled mid-run -------------------------------------------------


@pytest.mark.parametrize("leaving", ["member", "leader"])
def test_a_request_cancelled_after_the_forget_set_was_built_is_not_unlearned(ready, monkeypatch, leaving):
    from worker.attempt import Attempt
    from worker.claim import claim
    from worker.job import execute
    from worker.steps import unlearn

    service, model = ready()
    first, second = submit(service, model, 0), submit(service, model, 1)
    gone, staying = (second, first) if leaving == "member" else (first, second)
    original, forget_sizes = unlearn.run, []

    def cancel_then_unlearn(attempt, prepared, *args, **kwargs):
        forget_sizes.append(len(prepared.split.forget))
        if len(forget_sizes) == 1:  # the run already forgets both; now one of them is cancelled
            assert service.client.cancel_request(gone.id).cancel_requested
            attempt.check_cancelled()
        return original(attempt, prepared, *args, **kwargs)

    monkeypatch.setattr(unlearn, "run", cancel_then_unlearn)
    attempt = claim(job_context(service), first.id)
    assert isinstance(attempt, Attempt) and attempt.request_ids == [first.id, second.id]
    assert execute(attempt) == "completed"
    done, cancelled = service.client.get_request(staying.id), service.client.get_request(gone.id)
    own = done.details["own_forget_samples"]
    assert forget_sizes[0] > own and forget_sizes[1:] == [own]  # redone without the cancelled samples
    assert done.details["forget_samples"] == own and done.verification["batch"] is None
    assert service.client.list_versions(model.id)[0].producing_request_id == staying.id
    assert cancelled.status == "cancelled" and cancelled.result_version is None
    assert all(s.erased_by_request_id is None for s in service.client.request_samples(gone.id))


# --- 5. shutdown, the outbox ---------------------------------------------------------------------------


def test_shutdown_gives_a_running_request_back_and_the_next_start_completes_it(make_service, artifacts):
    from worker.runner import EmbeddedRunner

    service = make_service()
    model = setup_model(service, artifacts)
    long_ltu = {**service.tiny_ltu, "max_passes": 500.0, "stop_rule": "none"}
    request = service.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=long_ltu
    )
    runner = EmbeddedRunner(service.settings)
    runner.start()
    deadline = time.monotonic() + 120
    while service.client.get_request(request.id).progress.get("phase") != "unlearning":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 10
    back = service.client.get_request(request.id)
    assert back.status == "queued" and back.attempts == 0 and back.retries == 0
    assert events(service, request.id, "deletion_request.queued")[-1]["reason"] == "the worker is shutting down"

    with runner.context.database.transaction() as session:  # a short run for the next start
        from ledger.tables import DeletionRequest

        session.get(DeletionRequest, request.id).parameters = service.tiny_ltu
    EmbeddedRunner(service.settings).run_pending()
    assert service.client.get_request(request.id).status == "completed"


def test_dispatched_outbox_rows_are_deleted_after_their_retention(ready):
    from ledger.tables import OutboxMessage, utcnow
    from worker.reconciler import delete_old_dispatches
    from worker.runner import EmbeddedRunner

    service, model = ready(outbox_retention_hours=1)
    old, recent = submit(service, model, 0), submit(service, model, 1, batch_size=8)
    EmbeddedRunner(service.settings).run_pending()
    waiting = submit(service, model, 2)  # not dispatched yet
    ctx = job_context(service)
    with ctx.database.transaction() as session:
        for row in session.query(OutboxMessage):
            if row.payload["request_id"] == old.id:
                row.dispatched_at = utcnow() - timedelta(hours=2)
    assert delete_old_dispatches(ctx.database, service.settings) == 1
    with ctx.database.session() as session:
        left = {row.payload["request_id"] for row in session.query(OutboxMessage)}
    assert left == {recent.id, waiting.id}


# --- the same for the audit's reference-model trainings --------------------------------------------------

REFERENCE_RECIPE = {"epochs": 1, "batch_size": 32, "lr": 0.05}  # seconds per reference model


def _reference_set(make_service, artifacts, **overrides):
    service = make_service(audit_reference_models=2, **overrides)
    model = setup_model(service, artifacts, recipe=REFERENCE_RECIPE)
    return service, model, service.client.get_audit_references(model.id).latest["id"]


def test_a_reference_training_silent_for_many_leases_is_not_taken_away(make_service, artifacts, monkeypatch):
    import ltu_core.audit
    from worker.reconciler import reconcile_references_once
    from worker.references import run_reference_training

    service, model, set_id = _reference_set(make_service, artifacts, lease_seconds=1.0)
    train = ltu_core.audit.train_references

    def silent(*args, **kwargs):
        time.sleep(4.0)  # no progress write, no cancellation check: four leases
        return train(*args, **kwargs)

    monkeypatch.setattr(ltu_core.audit, "train_references", silent)
    ctx = job_context(service)
    with reconciling(lambda: reconcile_references_once(ctx.database, service.settings)) as passes:
        assert run_reference_training(ctx, set_id) == "completed"
    assert len(passes) > 30 and not any(p.requeued or p.failed for p in passes)
    assert service.client.get_audit_references(model.id).in_use["attempts"] == 1


def test_a_passing_fault_puts_a_reference_training_back_in_the_queue(make_service, artifacts, monkeypatch):
    import ltu_core.audit
    from worker.runner import EmbeddedRunner

    service, model, set_id = _reference_set(make_service, artifacts, retry_backoff_seconds=0)
    _fails_once(monkeypatch, ltu_core.audit, "train_references", PASSING_FAULTS["sqlite locked"]())
    runner = EmbeddedRunner(service.settings)
    runner.run_pending_references()  # the fault, then the retry in the same drain
    status = service.client.get_audit_references(model.id)
    assert status.audit_status == "ready" and status.in_use["id"] == set_id
    queued = [e.data for e in service.client.audit_events(action="audit_reference_set.queued") if "reason" in e.data]
    assert queued and queued[-1]["reason"].startswith("a passing fault (OperationalError")

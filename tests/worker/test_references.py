"""The reference-training job: trains on the training split without erased samples, stores only scores,
supersedes and purges older sets, honours cancellation and shutdown, fails with a reason, and runs on a
dispatcher lane (and Celery queue) of its own."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from tests.support import job_context
from tests.support import setup_model as setup_with_recipe

TINY = {"epochs": 1, "batch_size": 32, "lr": 0.05}  # seconds per reference model, not minutes


def setup_model(service, artifacts, *, recipe=TINY):
    return setup_with_recipe(service, artifacts, recipe=recipe)


def erase(service, artifacts, model_id: str, subject: str) -> set[int]:
    """Mark a subject's samples erased in the ledger, as a completed request does; their dataset rows."""
    import numpy as np
    from sqlalchemy import update

    from ledger.db import Database
    from ledger.tables import DatasetSample, Model

    request = service.client.submit_deletion(model_id, subject_ids=[subject])
    service.client.cancel_request(request.id)  # only its id is needed, as the erasing request
    samples = artifacts.samples_of(subject)
    database = Database(service.settings.ledger.database_url)
    try:
        with database.transaction() as session:
            session.execute(
                update(DatasetSample)
                .where(
                    DatasetSample.dataset_id == session.get(Model, model_id).dataset_id,
                    DatasetSample.sample_id.in_(samples),
                )
                .values(erased_by_request_id=request.id)
            )
    finally:
        database.dispose()
    return set(np.flatnonzero(np.isin(artifacts.dataset.sample_ids, list(samples))).tolist())


def test_a_set_trains_without_erased_samples_and_stores_only_scores(make_service, artifacts):
    from ledger.artifacts import sha256_file
    from ltu_core.audit import ReferenceScores
    from worker.references import run_reference_training
    from worker.runner import EmbeddedRunner

    service = make_service(audit_reference_models=2)
    model = setup_model(service, artifacts)
    erased = erase(service, artifacts, model.id, artifacts.subject_with_train_samples(0))
    status = service.client.get_audit_references(model.id)
    assert status.audit_status == "queued" and status.latest["reason"] == "registration"
    runner = EmbeddedRunner(service.settings)
    assert runner.run_pending() == 1  # the erasure lane takes the (cancelled) erasure's row, never the reference job
    assert service.client.get_audit_references(model.id).audit_status == "queued"
    assert runner.run_pending_references() == 1

    status = service.client.get_audit_references(model.id)
    assert (status.audit_status, status.audit_tier) == ("ready", "likelihood_ratio")
    ready = status.in_use
    assert ready == status.latest and ready["count"] == 2 and ready["error"] is None
    train = set(artifacts.dataset.split_indices("train").tolist())
    assert ready["erased_samples"] == len(erased) and ready["train_samples"] == len(train - erased)
    assert ready["trained_on_version"] == 1 and ready["progress"]["step"] == ready["progress"]["total"] == 2
    assert service.client.get_model(model.id).audit_tier == "likelihood_ratio"

    from ledger import references
    from ledger.db import Database

    database = Database(service.settings.ledger.database_url)
    with database.session() as session:
        storage_key = references.load(session, set_id=ready["id"]).storage_key
    database.dispose()
    path = service.settings.ledger.artifacts_dir / storage_key
    assert sha256_file(path) == ready["sha256"] and path.stat().st_size == ready["size_bytes"]
    scores = ReferenceScores.load(path)
    assert scores.count == 2 and scores.phi.shape == (2, len(artifacts.dataset))
    trained = scores.trained_on
    assert not trained[:, sorted(erased)].any(), "an erased sample trained a reference model"
    assert not trained[:, sorted(set(range(len(artifacts.dataset))) - train)].any()  # test and holdout stay unseen
    assert (trained[:, sorted(train - erased)].sum(axis=0) == 1).all()  # a complementary pair: in exactly one
    events = [e.action for e in service.client.audit_events(model_id=model.id) if e.resource_id == ready["id"]]
    assert events == ["audit_reference_set.queued", "audit_reference_set.running", "audit_reference_set.ready"]

    # Delivered again: nothing changes.
    assert run_reference_training(job_context(service), ready["id"]) == "skipped"


def test_a_newer_set_supersedes_the_older_one_whose_file_is_then_purged(make_service, artifacts):
    from ledger import references
    from ledger.db import Database
    from worker.retention import PurgeLoop, purge_references_due
    from worker.runner import EmbeddedRunner

    service = make_service(audit_reference_models=2)
    model = setup_model(service, artifacts)
    runner = EmbeddedRunner(service.settings)
    runner.run_pending_references()
    first = service.client.get_audit_references(model.id).in_use
    assert service.client.train_audit_references(model.id, count=4).audit_status == "queued"
    runner.run_pending_references()
    status = service.client.get_audit_references(model.id)
    assert status.in_use["id"] != first["id"] and status.in_use["count"] == 4

    database = Database(service.settings.ledger.database_url)
    try:
        with database.session() as session:
            old = references.load(session, set_id=first["id"])
            assert old.status == "superseded"
            path = service.settings.ledger.artifacts_dir / old.storage_key
        assert path.is_file()
        loop = PurgeLoop(service.settings, database=database)
        assert purge_references_due(database, loop.store, grace=timedelta(hours=1)) == []  # within its grace
        purged = purge_references_due(database, loop.store, grace=timedelta(0))
        assert [p.set_id for p in purged] == [first["id"]] and not path.exists()
        assert purge_references_due(database, loop.store, grace=timedelta(0)) == []
        with database.session() as session:
            assert references.load(session, set_id=first["id"]).purged_at is not None
            in_use = references.load(session, set_id=status.in_use["id"])
        assert (service.settings.ledger.artifacts_dir / in_use.storage_key).is_file()
    finally:
        database.dispose()
    event = service.client.audit_events(action="audit_reference_set.purged")[-1]
    assert event.resource_id == first["id"] and event.data["gone"] is True
    assert service.client.verify_audit()["valid"]


def test_cancel_stops_a_running_training(make_service, artifacts):
    service = make_service(runner=True, audit_reference_models=0)
    model = setup_model(service, artifacts, recipe={**TINY, "epochs": 10_000})
    service.client.train_audit_references(model.id, count=2)
    deadline = time.monotonic() + 60
    while (status := service.client.get_audit_references(model.id)).latest["progress"]["phase"] != "references":
        assert status.audit_status in ("queued", "running") and time.monotonic() < deadline, status
        time.sleep(0.05)
    assert service.client.cancel_audit_references(model.id).latest["cancel_requested"]
    done = service.client.wait_audit_references(model.id, timeout=60, poll=0.1)
    assert (done.audit_status, done.audit_tier, done.in_use) == ("cancelled", "rank", None)
    assert done.latest["progress"]["step"] == 0 and done.latest["sha256"] is None
    actions = [
        e.action for e in service.client.audit_events(model_id=model.id) if e.resource_type == "audit_reference_set"
    ]
    assert actions[-2:] == ["audit_reference_set.cancel_requested", "audit_reference_set.cancelled"]


def test_a_shutdown_puts_the_training_back_in_the_queue(make_service, artifacts):
    from worker.references import run_reference_training
    from worker.runner import EmbeddedRunner

    service = make_service(audit_reference_models=2)
    model = setup_model(service, artifacts)
    set_id = service.client.get_audit_references(model.id).latest["id"]
    assert run_reference_training(job_context(service), set_id, stopping=lambda: True) == "skipped"
    status = service.client.get_audit_references(model.id)
    assert status.audit_status == "queued" and status.latest["attempts"] == 0  # nothing failed: no attempt used
    # Dispatched again: the original row and the one written at shutdown; the second finds it ready.
    assert EmbeddedRunner(service.settings).run_pending_references() == 2
    assert service.client.get_audit_references(model.id).audit_status == "ready"


def test_stopping_the_embedded_runner_does_not_wait_for_a_training(make_service, artifacts):
    from ledger import outbox
    from ledger.db import Database
    from ledger.tables import OutboxMessage

    service = make_service(runner=True, audit_reference_models=0)
    model = setup_model(service, artifacts, recipe={**TINY, "epochs": 10_000})
    service.client.train_audit_references(model.id, count=2)
    deadline = time.monotonic() + 60
    while service.client.get_audit_references(model.id).latest["progress"]["phase"] != "references":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    service.runner.stop()
    assert time.monotonic() - started < 10
    status = service.client.get_audit_references(model.id)
    assert status.audit_status == "queued" and status.latest["attempts"] == 0
    database = Database(service.settings.ledger.database_url)
    try:
        with database.session() as session:
            pending = session.query(OutboxMessage).filter(
                OutboxMessage.task_name == outbox.AUDIT_REFERENCES_TASK, OutboxMessage.dispatched_at.is_(None)
            )
            assert [m.payload["reference_set_id"] for m in pending] == [status.latest["id"]]  # for the next start
    finally:
        database.dispose()


def test_a_set_without_a_recipe_or_with_a_broken_dataset_fails_with_a_reason(make_service, artifacts):
    from ledger import references
    from ledger.db import Database
    from ledger.tables import AuditReferenceSet, Model
    from worker.references import run_reference_training

    service = make_service(audit_reference_models=0)
    no_recipe = setup_model(service, artifacts, recipe=None)
    database = Database(service.settings.ledger.database_url)
    try:
        with database.transaction() as session:  # written directly: the ledger refuses to queue it
            model = session.get(Model, no_recipe.id)
            ref = AuditReferenceSet(
                model_id=model.id, tenant_id=model.tenant_id, status="queued", reason="on_demand", count=2, seed=1
            )
            session.add(ref)
            session.flush()
            set_id = ref.id
        assert run_reference_training(job_context(service), set_id) == "failed"
        with database.session() as session:
            failed = references.load(session, set_id=set_id)
            assert (failed.status, failed.error_code, failed.lease_token) == ("failed", "no_recipe", None)
            assert "recipe" in failed.error_message

        # A dataset file that is not the one registered: failed, never left running.
        model = setup_model(service, artifacts)
        set_id = service.client.train_audit_references(model.id, count=2).latest["id"]
        with database.session() as session:
            key = session.get(Model, model.id).dataset_id
        (service.settings.ledger.artifacts_dir / "datasets" / key / "samples.csv").write_text("garbage\n")
        assert run_reference_training(job_context(service), set_id) == "failed"
        status = service.client.get_audit_references(model.id)
        assert status.audit_status == "failed" and status.latest["error"]["code"] and status.latest["seconds"] >= 0
    finally:
        database.dispose()


def test_the_reconciler_dispatches_an_interrupted_training_again(make_service, artifacts):
    from ledger.db import Database
    from ledger.tables import AuditReferenceSet, utcnow
    from worker.reconciler import reconcile_references_once
    from worker.references import run_reference_training

    service = make_service(audit_reference_models=2)
    model = setup_model(service, artifacts)
    set_id = service.client.get_audit_references(model.id).latest["id"]
    database = Database(service.settings.ledger.database_url)
    try:
        from ledger import references

        with database.transaction() as session:
            references.claim(session, set_id=set_id, token="killed", lease_seconds=60, max_attempts=3)
            row = session.get(AuditReferenceSet, set_id)
            row.heartbeat_at = row.updated_at = utcnow() - timedelta(seconds=service.settings.worker.lease_seconds + 1)
        assert reconcile_references_once(database, service.settings).requeued == (set_id,)
    finally:
        database.dispose()
    assert run_reference_training(job_context(service), set_id) == "completed"
    status = service.client.get_audit_references(model.id)
    assert status.audit_status == "ready" and status.latest["attempts"] == 2


def test_celery_routes_reference_trainings_to_their_own_queue(make_service):
    from ledger import outbox
    from worker.celery_app import create_celery, task_routes

    service = make_service()
    settings = service.settings.replace(broker_url="redis://127.0.0.1:1/0", audit_queue="audit-x", queue="gpu-x")
    app = create_celery(settings)
    assert {outbox.ERASURE_TASK, outbox.AUDIT_REFERENCES_TASK} <= set(app.tasks)
    assert task_routes(settings) == {
        outbox.ERASURE_TASK: {"queue": "gpu-x"},
        outbox.AUDIT_REFERENCES_TASK: {"queue": "audit-x"},
    }
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost


@pytest.mark.parametrize("consume, queues", [("all", "gpu,audit"), ("erasures", "gpu"), ("audit", "audit")])
def test_ltu_worker_consumes_both_queues_by_default(monkeypatch, tmp_path, consume, queues):
    from celery import Celery

    from tests.support import ltu

    seen = {}
    monkeypatch.setattr(Celery, "worker_main", lambda self, argv: seen.setdefault("argv", argv))
    monkeypatch.setenv("LTU_HOME", str(tmp_path))
    monkeypatch.setenv("LTU_BROKER_URL", "redis://127.0.0.1:1/0")
    assert ltu("worker", "--consume", consume) == 0
    argv = seen["argv"]
    assert argv[argv.index("-Q") + 1] == queues


def test_an_erasure_is_audited_by_the_likelihood_ratio_tier_once_references_are_ready(make_service, artifacts):
    from worker.runner import EmbeddedRunner

    service = make_service(audit_reference_models=2, audit_refresh_after_erasures=1)
    model = setup_model(service, artifacts)
    runner = EmbeddedRunner(service.settings)

    # References still queued: the rank tier audits, and the record says why.
    first = service.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples(0)], parameters=service.tiny_ltu
    )
    runner.run_pending()
    after = service.client.get_request(first.id).verification["after"]
    assert after["tier"] == "rank" and "not ready" in after["tier_reason"]
    assert after["audit_seed"] is not None and after["n_control"] > 0 and after["subjects"]

    assert runner.run_pending_references() == 1
    second = service.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples(1)], parameters=service.tiny_ltu
    )
    runner.run_pending()
    done = service.client.get_request(second.id)
    assert done.status == "completed", done.error
    for verdict in (done.verification["before"], done.verification["after"]):
        assert verdict["tier"] == "likelihood_ratio" and verdict["tier_reason"] == "2 reference models are ready"
        assert "LiRA" in verdict["test"] and verdict["family_size"] == len(verdict["subjects"]) >= 1
        [subject] = verdict["subjects"]
        assert 0 < subject["p_remembered"] <= 1 and subject["adjusted_remembered"] >= subject["p_remembered"]
    # The second erasure passed the refresh threshold (1 sample): a fresh set, without the erased, is queued.
    status = service.client.get_audit_references(model.id)
    assert status.latest["reason"] == "refresh" and status.latest["status"] == "queued"
    assert status.in_use is not None and status.audit_tier == "likelihood_ratio"

"""Audit reference sets in the ledger: idempotent queueing with its dispatch row, the compare-and-set claim
and lease, superseding, the refresh rule after erasures, cancellation and reconciliation."""

from __future__ import annotations

from datetime import timedelta

import pytest

RECIPE = {"epochs": 1, "batch_size": 32, "lr": 0.05}


@pytest.fixture()
def ledger(make_service, artifacts):
    """(service, database, model id with a recipe, model id without one); nothing queued at registration."""
    from ledger.db import Database

    service = make_service(audit_reference_models=0)
    dataset = service.client.register_dataset(artifacts.archive)
    with_recipe = service.client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=RECIPE)
    without = service.client.register_model(artifacts.weights, dataset_id=dataset.id)
    database = Database(service.settings.ledger.database_url)
    yield service, database, with_recipe.id, without.id
    database.dispose()


def queue(database, model_id: str, *, count: int = 2, reason: str = "on_demand"):
    from ledger import references
    from ledger.tables import Model

    with database.transaction() as session:
        ref, created = references.queue(
            session, model=session.get(Model, model_id), count=count, reason=reason, actor="test"
        )
        return ref.id, created


def claim(database, set_id: str, token: str, *, lease_seconds: float = 60, max_attempts: int = 3):
    from ledger import references

    with database.transaction() as session:
        ref = references.claim(
            session, set_id=set_id, token=token, lease_seconds=lease_seconds, max_attempts=max_attempts
        )
        return None if ref is None else (ref.status, ref.attempts)


def make_ready(database, set_id: str, *, erased: int = 0, token: str = "t") -> None:
    from ledger import references

    assert claim(database, set_id, token)
    with database.transaction() as session:
        references.report(session, set_id=set_id, token=token, erased_samples=erased, trained_on_version=1)
        assert references.finish_ready(
            session, set_id=set_id, token=token, storage_key=f"references/{set_id}", sha256="ab" * 32, size_bytes=1
        )


def age(database, set_id: str, seconds: float) -> None:
    """Make a set look untouched for `seconds` (a dead worker's heartbeat, a lost broker message)."""
    from ledger.tables import AuditReferenceSet, utcnow

    with database.transaction() as session:
        row = session.get(AuditReferenceSet, set_id)
        row.updated_at = utcnow() - timedelta(seconds=seconds)
        if row.heartbeat_at is not None:
            row.heartbeat_at = row.updated_at


def test_queueing_is_idempotent_and_dispatched_in_the_same_transaction(ledger):
    from sqlalchemy import select

    from ledger import outbox, references
    from ledger.errors import InvalidInput
    from ledger.tables import Model, OutboxMessage

    service, database, model_id, without = ledger
    first, created = queue(database, model_id, count=4)
    assert created
    assert queue(database, model_id, count=8) == (first, False)  # queued: the same set
    assert claim(database, first, "t") == ("running", 1)
    assert queue(database, model_id) == (first, False)  # running: still the same set
    with database.session() as session:
        rows = session.scalars(select(OutboxMessage).where(OutboxMessage.task_name == outbox.AUDIT_REFERENCES_TASK))
        assert [r.payload for r in rows] == [{"reference_set_id": first}]
        ref = references.load(session, set_id=first)
        assert (ref.count, ref.reason, ref.status) == (4, "on_demand", "running") and 0 <= ref.seed < 2**31
    events = service.client.audit_events(model_id=model_id, action="audit_reference_set.queued")
    assert [(e.resource_id, e.data["count"], e.data["reason"]) for e in events] == [(first, 4, "on_demand")]

    with pytest.raises(references.NoRecipe) as err:
        queue(database, without)
    assert err.value.code == "no_recipe"
    for count, reason in ((3, "on_demand"), (0, "on_demand"), (66, "on_demand"), (2, "whim")):
        with database.transaction() as session, pytest.raises(InvalidInput):
            references.queue(session, model=session.get(Model, model_id), count=count, reason=reason, actor="t")


def test_the_claim_is_a_compare_and_set_with_a_lease(ledger):
    from ledger import references
    from ledger.errors import LeaseLost

    service, database, model_id, _ = ledger
    set_id, _ = queue(database, model_id)
    assert claim(database, set_id, "a") == ("running", 1)
    assert claim(database, set_id, "b") is None  # a live execution holds it
    with database.transaction() as session, pytest.raises(LeaseLost):
        references.progress(session, set_id=set_id, token="b", phase="references", step=1, total=2)
    with database.transaction() as session:
        references.progress(session, set_id=set_id, token="a", phase="references", step=1, total=2)

    # Its worker died: once the heartbeat is older than the lease a redelivery takes over, and the old one is out.
    age(database, set_id, 120)
    assert claim(database, set_id, "c", lease_seconds=60) == ("running", 2)
    with database.transaction() as session:
        assert not references.finish_ready(
            session, set_id=set_id, token="a", storage_key="k", sha256="0" * 64, size_bytes=1
        )
        assert not references.finish(session, set_id=set_id, token="a", to="failed", error_code="x")
        assert references.finish_ready(
            session, set_id=set_id, token="c", storage_key="k", sha256="0" * 64, size_bytes=1
        )
    assert claim(database, set_id, "d") is None  # finished: a redelivery is a no-op
    with database.session() as session:
        ref = references.load(session, set_id=set_id)
        assert (ref.status, ref.lease_token, ref.attempts, ref.storage_key) == ("ready", None, 2, "k")
    running = service.client.audit_events(model_id=model_id, action="audit_reference_set.running")
    assert [e.data["resumed"] for e in running] == [False, True]

    # Out of attempts: a takeover fails it instead.
    other, _ = queue(database, model_id)
    assert claim(database, other, "a", max_attempts=1) == ("running", 1)
    age(database, other, 120)
    assert claim(database, other, "b", lease_seconds=60, max_attempts=1) is None
    with database.session() as session:
        ref = references.load(session, set_id=other)
        assert (ref.status, ref.error_code) == ("failed", "attempts_exhausted")


def test_a_ready_set_supersedes_the_older_ones_and_sets_the_tier(ledger):
    from ledger import references

    service, database, model_id, without = ledger
    with database.session() as session:
        assert references.status(session, model_id=model_id).tier == "rank"
        assert references.status(session, model_id=model_id).audit_status == "none"
    first, _ = queue(database, model_id)
    make_ready(database, first)
    second, _ = queue(database, model_id)
    with database.session() as session:
        status = references.status(session, model_id=model_id)
        assert (status.audit_status, status.tier, status.in_use.id, status.latest.id) == (
            "queued",
            "likelihood_ratio",
            first,
            second,
        )
    make_ready(database, second)
    with database.session() as session:
        assert references.ready_set(session, model_id=model_id).id == second
        assert references.load(session, set_id=first).status == "superseded"
        both = references.statuses(session, model_ids=[model_id, without])
        assert (both[model_id].audit_status, both[model_id].tier, both[model_id].in_use.id) == (
            "ready",
            "likelihood_ratio",
            second,
        )
        assert (both[without].audit_status, both[without].tier) == ("none", "rank")
    superseded = service.client.audit_events(model_id=model_id, action="audit_reference_set.superseded")
    assert [(e.resource_id, e.data["by"]) for e in superseded] == [(first, second)]


def test_a_refresh_is_queued_once_enough_samples_were_erased(ledger, artifacts):
    from sqlalchemy import select, update

    from ledger import references
    from ledger.tables import DatasetSample, Model

    service, database, model_id, without = ledger
    request = service.client.submit_deletion(model_id, subject_ids=[artifacts.subject_with_train_samples()])

    def erase(count: int) -> None:
        with database.transaction() as session:
            dataset_id = session.get(Model, model_id).dataset_id
            rows = session.scalars(
                select(DatasetSample.id)
                .where(DatasetSample.dataset_id == dataset_id, DatasetSample.erased_by_request_id.is_(None))
                .limit(count)
            ).all()
            session.execute(
                update(DatasetSample).where(DatasetSample.id.in_(rows)).values(erased_by_request_id=request.id)
            )

    def refresh(threshold: int = 3):
        with database.transaction() as session:
            ref = references.queue_refresh_if_due(session, model_id=model_id, threshold=threshold)
            return None if ref is None else (ref.id, ref.reason, ref.count, ref.seed)

    assert refresh(threshold=1) is None  # no ready set: nothing to refresh
    erase(1)
    first, _ = queue(database, model_id, count=4)
    make_ready(database, first, erased=1)
    erase(2)
    assert refresh() is None  # 3 erased, 1 when it trained: not due at 3 more
    erase(1)
    refreshed = refresh()
    assert refreshed is not None and refreshed[1:3] == ("refresh", 4)
    with database.session() as session:
        assert refreshed[3] != references.load(session, set_id=first).seed
    assert refresh() is None  # one is queued already
    with database.transaction() as session:
        assert references.queue_refresh_if_due(session, model_id=without, threshold=1) is None  # no recipe
    events = service.client.audit_events(model_id=model_id, action="audit_reference_set.queued")
    assert [(e.actor, e.data["reason"]) for e in events][-1] == ("worker", "refresh")


def test_cancel_stops_a_queued_set_at_once_and_asks_a_running_one(ledger):
    from ledger import references
    from ledger.errors import Conflict, NotFound
    from ledger.tables import Model

    service, database, model_id, _ = ledger
    with database.session() as session:
        tenant_id = session.get(Model, model_id).tenant_id

    def cancel(model: str = model_id, tenant: str = tenant_id):
        with database.transaction() as session:
            ref = references.cancel(session, tenant_id=tenant, model_id=model, actor="test")
            return ref.id, ref.status, ref.cancel_requested

    with pytest.raises(Conflict):
        cancel()  # nothing to cancel
    queued, _ = queue(database, model_id)
    assert cancel() == (queued, "cancelled", False)
    assert cancel() == (queued, "cancelled", False)  # idempotent
    assert claim(database, queued, "t") is None  # a late delivery does nothing

    running, _ = queue(database, model_id)
    claim(database, running, "t")
    with database.session() as session:
        assert not references.cancel_requested(session, set_id=running)
    assert cancel() == (running, "running", True)
    assert cancel() == (running, "running", True)
    with database.session() as session:
        assert references.cancel_requested(session, set_id=running)
    with database.transaction() as session:
        assert references.finish(session, set_id=running, token="t", to="cancelled")
    with pytest.raises(NotFound):
        cancel(tenant="another-tenant")
    actions = [
        e.action for e in service.client.audit_events(model_id=model_id) if e.resource_type == "audit_reference_set"
    ]
    assert actions == [
        "audit_reference_set.queued",
        "audit_reference_set.cancelled",
        "audit_reference_set.queued",
        "audit_reference_set.running",
        "audit_reference_set.cancel_requested",
        "audit_reference_set.cancelled",
    ]


def test_the_reconciler_requeues_interrupted_trainings_then_gives_up(ledger):
    from sqlalchemy import func, select

    from ledger import outbox, references
    from ledger.tables import OutboxMessage

    service, database, model_id, _ = ledger
    set_id, _ = queue(database, model_id)

    def reconcile(**overrides):
        with database.transaction() as session:
            return references.reconcile(
                session, **{"lease_seconds": 60, "queued_after": 600, "max_attempts": 2, **overrides}
            )

    assert reconcile() == references.Reconciled()  # freshly queued: left alone
    age(database, set_id, 700)
    assert reconcile().requeued == (set_id,)  # the broker lost it
    assert reconcile().requeued == ()  # not twice within one lease
    claim(database, set_id, "dead")
    age(database, set_id, 120)
    assert reconcile().requeued == (set_id,)  # its worker died
    with database.session() as session:
        rows = session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.task_name == outbox.AUDIT_REFERENCES_TASK)
        )
        assert rows == 3
    claim(database, set_id, "dead-again")  # the requeued message ran it: its second execution
    age(database, set_id, 120)
    assert reconcile().failed == (set_id,)  # out of attempts: only executions count, not the broker requeue
    with database.session() as session:
        ref = references.load(session, set_id=set_id)
        assert (ref.status, ref.error_code, ref.lease_token) == ("failed", "attempts_exhausted", None)
    reasons = [e.data["reason"] for e in service.client.audit_events(action="audit_reference_set.requeued")]
    assert reasons == ["broker_lost", "worker_lost"]


def test_queueing_claiming_and_superseding_on_postgres(fresh_postgres_url):
    from ledger import datasets, references, registry, tenants
    from ledger.datasets import SampleRow
    from ledger.db import Database

    database = Database(fresh_postgres_url)
    try:
        with database.transaction() as session:
            tenant = tenants.ensure_tenant(session, name="pg")
            datasets.create_dataset(
                session,
                tenant_id=tenant.id,
                dataset_id="d" * 36,
                name="tiny",
                format_version=1,
                num_classes=2,
                image_shape=[1, 2, 2],
                archive_sha256="0" * 64,
                storage_key="datasets/x",
                samples=[SampleRow(i, f"s{i}", "h" * 64, i % 2, "train") for i in range(4)],
                tenant_key_id=0,  # no subject is looked up here
                actor="test",
            )
            model, _ = registry.create_model(
                session,
                tenant_id=tenant.id,
                name="m",
                dataset_id="d" * 36,
                architecture={"name": "resnet18"},
                recipe=RECIPE,
                sha256="1" * 64,
                size_bytes=1,
                storage_key="models/x",
                actor="test",
            )
            model_id = model.id
        first, created = queue(database, model_id)
        assert created and queue(database, model_id) == (first, False)
        make_ready(database, first)
        second, _ = queue(database, model_id)
        make_ready(database, second)
        with database.session() as session:
            status = references.statuses(session, model_ids=[model_id])[model_id]
            assert (status.audit_status, status.tier, status.in_use.id, status.latest.id) == (
                "ready",
                "likelihood_ratio",
                second,
                second,
            )
            assert references.load(session, set_id=first).status == "superseded"
    finally:
        database.dispose()

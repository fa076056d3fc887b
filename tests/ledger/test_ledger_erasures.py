"""ledger.erasures: one erasure finds every model trained on a person and makes one request per model; its
status is the aggregate of theirs (in Python and in SQL alike); where a person is, before and after."""

from __future__ import annotations

import pytest

from tests.support import setup_estate


@pytest.fixture()
def estate(api, artifacts, tmp_path):
    """(service, Estate, database, tenant id) with the erasures' models registered."""
    from ledger.db import Database
    from ledger.tables import Model

    estate = setup_estate(api, artifacts, tmp_path)
    database = Database(api.settings.ledger.database_url)
    with database.session() as session:
        tenant_id = session.get(Model, estate.other_model_id).tenant_id
    yield api, estate, database, tenant_id
    database.dispose()


def hashed(service, tenant_id: str, *subject_ids: str) -> list[str]:
    """The subject ids as the API stores them: hashed under the tenant's key."""
    from ledger import tenant_keys
    from ledger.db import Database

    database = Database(service.settings.ledger.database_url)
    try:
        with database.transaction() as session:
            key = tenant_keys.current(session, tenant_id=tenant_id, secret=service.settings.ledger.secret_key)
    finally:
        database.dispose()
    return [key.subject_hash(s) for s in subject_ids]


def erase(session, tenant_id, subject_hashes, *, key=None, body="body", model_ids=None, dataset_ids=None):
    from sqlalchemy import select

    from ledger import erasures
    from ledger.tables import TenantKey

    live_key = select(TenantKey.id).where(TenantKey.tenant_id == tenant_id, TenantKey.destroyed_at.is_(None))
    return erasures.create_erasure(
        session,
        tenant_id=tenant_id,
        subject_hashes=subject_hashes,
        model_ids=model_ids,
        dataset_ids=dataset_ids,
        method="ltu",
        parameters={"max_passes": 1.0, "batch_size": 4, "attacker_steps": 20},
        idempotency_key=key,
        body_hash=body,
        tenant_key_id=session.scalar(live_key),
        actor="test",
    )


def test_one_erasure_makes_one_request_per_model_trained_on_the_person(estate, artifacts):
    from sqlalchemy import select

    from ledger import erasures
    from ledger.tables import AuditEvent, DeletionRequest

    service, estate, database, tenant_id = estate
    person = hashed(service, tenant_id, artifacts.subject_with_train_samples(0))
    with database.transaction() as session:
        erasure, created = erase(session, tenant_id, [*person, *hashed(service, tenant_id, "nobody-at-all")])
        erasure_id = erasure.id
    assert created
    with database.session() as session:
        state = erasures.states(session, [erasures.get_erasure(session, tenant_id=tenant_id, erasure_id=erasure_id)])[0]
        assert sorted(r.model_id for r in state.requests) == sorted(estate.model_ids)  # not the stranger's model
        assert all(r.subject_hashes == person and r.status == "received" for r in state.requests)
        assert state.status == "received" and state.finished_at is None
        assert state.due_at == min(r.due_at for r in state.requests)
        assert state.erasure.subjects_not_found == 1
        samples = len(artifacts.samples_of(artifacts.subject_with_train_samples(0)))
        assert [(p.dataset_id, p.samples, p.purged_samples) for p in state.dataset_purge] == [
            (estate.dataset_id, samples, 0)
        ]
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "erasure.received")).all()
        assert len(events) == 1 and events[0].resource_id == erasure_id
        data = events[0].data
        assert data["subject_hashes"] == erasure.subject_hashes and data["subjects_not_found"] == 1
        assert artifacts.subject_with_train_samples(0) not in events[0].body  # hashes only, never the raw id
        assert {r["request_id"] for r in data["requests"]} == {r.id for r in state.requests}
        assert session.scalars(select(DeletionRequest.erasure_id)).all() == [erasure_id] * 2


def test_restrictions_replays_and_unknown_ids(estate, artifacts):
    from ledger.errors import IdempotencyConflict, NotFound

    service, estate, database, tenant_id = estate
    person = hashed(service, tenant_id, artifacts.subject_with_train_samples(1))
    with database.transaction() as session:
        only_first, _ = erase(session, tenant_id, person, model_ids=[estate.model_ids[0]], key="k1")
        assert [r.model_id for r in requests_of(session, only_first)] == [estate.model_ids[0]]
        by_dataset, _ = erase(session, tenant_id, person, dataset_ids=[estate.other_dataset_id])
        assert requests_of(session, by_dataset) == []  # the stranger's dataset lacks the person
        # Both restrictions hold together: the first model is not on the strangers' dataset.
        both, _ = erase(session, tenant_id, person, model_ids=[estate.model_ids[0]], dataset_ids=[estate.dataset_id])
        assert [r.model_id for r in requests_of(session, both)] == [estate.model_ids[0]]
        again, created = erase(session, tenant_id, person, model_ids=[estate.model_ids[0]], key="k1")
        assert again.id == only_first.id and not created
        with pytest.raises(IdempotencyConflict):
            erase(session, tenant_id, person, key="k1", body="another body")
        with pytest.raises(NotFound, match="model_ids: no such model: nope, gone"):
            erase(session, tenant_id, person, model_ids=[estate.model_ids[0], "nope", "gone"])
        with pytest.raises(NotFound, match="dataset_ids: no such dataset: nope"):
            erase(session, tenant_id, person, dataset_ids=["nope"])


def requests_of(session, erasure):
    from ledger import erasures

    return erasures.states(session, [erasure])[0].requests


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), "completed"),
        (("received", "queued"), "received"),
        (("queued", "running"), "running"),
        (("completed", "received"), "running"),
        (("completed", "completed"), "completed"),
        (("completed", "failed"), "failed"),
        (("failed", "cancelled"), "failed"),
        (("cancelled", "cancelled"), "cancelled"),
        (("completed", "cancelled"), "cancelled"),
    ],
)
def test_the_aggregate_status_in_python_and_in_sql(estate, artifacts, statuses, expected):
    from sqlalchemy import update

    from ledger import erasures
    from ledger.tables import DeletionRequest

    service, estate, database, tenant_id = estate
    person = hashed(service, tenant_id, artifacts.subject_with_train_samples(0))
    with database.transaction() as session:
        erasure, _ = erase(session, tenant_id, person if statuses else hashed(service, tenant_id, "nobody"))
        requests = requests_of(session, erasure)
        for request, status in zip(requests, statuses, strict=True):
            session.execute(update(DeletionRequest).where(DeletionRequest.id == request.id).values(status=status))
        erasure_id = erasure.id
    with database.session() as session:
        state = erasures.states(session, [erasures.get_erasure(session, tenant_id=tenant_id, erasure_id=erasure_id)])
        assert state[0].status == expected == erasures.aggregate_status(statuses)
        for status in erasures.ERASURE_STATUSES:
            listed = [e.id for e in erasures.list_erasures(session, tenant_id=tenant_id, status=status).items]
            assert listed == ([erasure_id] if status == expected else []), status


def test_a_model_that_forgot_the_person_gets_no_second_request_and_the_locations_say_so(estate, artifacts):
    from ledger import erasures
    from worker.runner import EmbeddedRunner

    service, estate, database, tenant_id = estate
    subject = artifacts.subject_with_train_samples(0)
    (person,) = hashed(service, tenant_id, subject)

    def locations():
        with database.session() as session:
            return erasures.subject_locations(session, tenant_id=tenant_id, subject_hash=person)

    before = locations()
    assert [(d.dataset_id, d.samples, d.erased_samples) for d in before.datasets] == [
        (estate.dataset_id, len(artifacts.samples_of(subject)), 0)
    ]
    assert sorted(m.model_id for m in before.models) == sorted(estate.model_ids)
    assert all(m.versions_holding == [1] and m.erased_in_version is None for m in before.models)

    with database.transaction() as session:
        erase(session, tenant_id, [person], model_ids=[estate.model_ids[0]])
    EmbeddedRunner(service.settings).run_pending()
    after = {m.model_id: m for m in locations().models}
    first, second = (after[m] for m in estate.model_ids)
    assert (first.current_version, first.erased_in_version, first.versions_holding) == (2, 2, [1])
    assert (second.current_version, second.erased_in_version, second.versions_holding) == (1, None, [1])
    assert locations().datasets[0].erased_samples > 0

    with database.transaction() as session:
        erasure, _ = erase(session, tenant_id, [person])
        assert [r.model_id for r in requests_of(session, erasure)] == [estate.model_ids[1]]
    EmbeddedRunner(service.settings).run_pending()
    assert all((m.erased_in_version, m.versions_holding) == (2, [1]) for m in locations().models)
    # Forgotten everywhere: one more erasure has nothing left to do and is completed at once.
    with database.transaction() as session:
        erasure, _ = erase(session, tenant_id, [person])
        state = erasures.states(session, [erasure])[0]
    assert (state.status, state.requests, state.erasure.subjects_not_found) == ("completed", [], 0)


def test_a_subject_found_nowhere_is_recorded_and_completed_without_requests(estate):
    from ledger import erasures

    service, estate, database, tenant_id = estate
    with database.transaction() as session:
        erasure, created = erase(session, tenant_id, hashed(service, tenant_id, "nobody", "no-one"))
        state = erasures.states(session, [erasure])[0]
    assert created and state.requests == [] and state.dataset_purge == []
    assert (state.status, state.erasure.subjects_not_found, state.finished_at) == (
        "completed",
        2,
        state.erasure.received_at,
    )
    with database.session() as session:
        nowhere = erasures.subject_locations(
            session, tenant_id=tenant_id, subject_hash=hashed(service, tenant_id, "nobody")[0]
        )
    assert (nowhere.datasets, nowhere.models) == ([], [])

"""The ledger: migrations on SQLite and Postgres, compare-and-set transitions, exactly-once
publication, deadlines (settings: tests/ltu_settings)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support import tenant_key


def _schema_diff(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from ledger.db import make_engine
    from ledger.tables import Base

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_migrations_build_exactly_the_declared_schema_on_sqlite(tmp_path):
    from alembic import command

    from ledger import migrate
    from ledger.db import make_engine

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    assert _schema_diff(url) == []
    command.downgrade(migrate.alembic_config(url), "base")  # downgrades work too
    migrate.upgrade(url)
    engine = make_engine(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_migrations_build_exactly_the_declared_schema_on_postgres(postgres_url):
    assert _schema_diff(postgres_url) == []


@pytest.mark.parametrize(
    "received, due",
    [
        (datetime(2025, 1, 31, 9, 0, tzinfo=UTC), datetime(2025, 2, 28, 9, 0, tzinfo=UTC)),
        (datetime(2024, 1, 31, 9, 0, tzinfo=UTC), datetime(2024, 2, 29, 9, 0, tzinfo=UTC)),
        (datetime(2025, 12, 15, 23, 59, tzinfo=UTC), datetime(2026, 1, 15, 23, 59, tzinfo=UTC)),
        (datetime(2025, 3, 31, 0, 0, tzinfo=UTC), datetime(2025, 4, 30, 0, 0, tzinfo=UTC)),
    ],
)
def test_due_at_is_one_calendar_month_later(received, due):
    from ledger.requests import gdpr_due_at

    assert gdpr_due_at(received) == due


@pytest.fixture()
def ledger_with_request(api, artifacts):
    """(database, request id, model id) of one received request."""
    from ledger.db import Database

    dataset = api.client.register_dataset(artifacts.archive)
    model = api.client.register_model(artifacts.weights, dataset_id=dataset.id)
    request = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples()])
    database = Database(api.settings.ledger.database_url)
    yield database, request.id, model.id
    database.dispose()


def test_transitions_are_compare_and_set(ledger_with_request):
    from ledger import requests
    from ledger.errors import Conflict

    database, request_id, _ = ledger_with_request
    with database.transaction() as session:
        assert requests.mark_queued(session, request_id=request_id) is True
        assert requests.mark_queued(session, request_id=request_id) is False  # already queued: no-op
        assert requests.claim(session, request_id=request_id, token="a", lease_seconds=60, max_attempts=3)
        # A second execution while the first is alive gets nothing.
        assert requests.claim(session, request_id=request_id, token="b", lease_seconds=60, max_attempts=3) is None
        # Only the holder of the lease may finish it.
        assert requests.finish(session, request_id=request_id, token="b", to="failed") is False
        assert requests.finish(session, request_id=request_id, token="a", to="failed", error_code="x") is True
        assert requests.finish(session, request_id=request_id, token="a", to="cancelled") is False
    with database.transaction() as session, pytest.raises(Conflict):
        requests.cancel(
            session, tenant_id=requests.load(session, request_id=request_id).tenant_id, request_id=request_id, actor="t"
        )


def test_a_request_publishes_at_most_one_version(ledger_with_request):
    from sqlalchemy.exc import IntegrityError

    from ledger import registry, requests
    from ledger.errors import LeaseLost, StaleBase
    from ledger.records import Metrics, RunDetails, Verification, from_json
    from ledger.tables import Model

    database, request_id, model_id = ledger_with_request
    scores = {
        "n_forget": 1,
        "n_control": 1,
        "forget": [0.0],
        "forget_ranks": [0.5],
        "mean_rank": 0.5,
        "control_histogram": {"edges": [0.0, 1.0], "counts": [1]},
    }
    details = from_json(
        RunDetails,
        {
            "split": {
                "forget_spec": {"kind": "samples"},
                "retain_fraction": 0.1,
                "seed": 0,
                "sizes": {"forget": 1, "retain": 1, "retain_subset": 1, "reference": 1, "test": 1},
            },
            "forget_samples": 1,
            "excluded_erased_samples": 0,
            "base_version": 1,
            "base_sha256": "00" * 32,
            "run": {"method": "ft"},
            "device": "cpu",
            "phase_seconds": {},
            "scores": {"before": scores, "after": scores},
            "own_forget_samples": 1,
        },
    )

    def publish(token: str, base_number: int):
        with database.transaction() as session:
            model = session.get(Model, model_id)
            base = registry.get_version(session, model_id=model_id, number=base_number)
            outcome = requests.Outcome(
                metrics_before=Metrics(),
                metrics_after=Metrics(),
                verification=Verification(passed=True),
                details=details,
            )
            return requests.complete(
                session,
                token=token,
                model=model,
                base=base,
                outcomes={request_id: outcome},
                sha256="ab" * 32,
                size_bytes=1,
                storage_key="models/x",
            )

    with database.transaction() as session:
        requests.claim(session, request_id=request_id, token="t", lease_seconds=60, max_attempts=3)
    assert publish("t", 1).number == 2
    # Replaying the publication (a redelivered task that got this far) changes nothing.
    for token, base in (("t", 1), ("t", 2), ("other", 2)):
        with pytest.raises((StaleBase, LeaseLost, IntegrityError)):
            publish(token, base)
    with database.session() as session:
        assert [v.number for v in registry.list_versions(session, model_id=model_id)] == [2, 1]
        assert session.get(Model, model_id).current_version == 2


def test_subject_hashes_are_keyed(api, artifacts):
    from sqlalchemy import select

    from ledger.db import Database
    from ledger.hashing import subject_hash
    from ledger.tables import Dataset, DatasetSample

    dataset = api.client.register_dataset(artifacts.archive)
    subject = artifacts.subject_with_train_samples()
    database = Database(api.settings.ledger.database_url)
    with database.session() as session:
        stored = set(session.scalars(select(DatasetSample.subject_hash)))
        row = session.get(Dataset, dataset.id)
    key = tenant_key(database, row.tenant_id, api.settings.ledger.secret_key)
    database.dispose()
    assert row.tenant_key_id == key.id and key.subject_hash(subject) in stored
    # Keyed by the tenant's own key, not by the server secret itself.
    assert subject_hash(api.settings.ledger.secret_key.encode(), subject) not in stored
    # Neither the ledger file nor the stored dataset keeps the raw subject id.
    assert all(subject.encode() not in f.read_bytes() for f in api.settings.ledger.home.glob("ledger.db*"))
    stored_csv = next(api.settings.ledger.artifacts_dir.glob("datasets/*/samples.csv")).read_text()
    assert subject not in stored_csv


def test_a_claim_that_races_the_relay_marking_it_queued_still_starts_it(celery_service, artifacts, monkeypatch):
    """Postgres, READ COMMITTED: the relay commits received → queued between the worker's read and
    its compare-and-set; the claim retries on the new state instead of dropping the request."""
    from ledger import requests, tenant_keys
    from ledger.db import Database
    from ledger.tables import Model, OutboxMessage

    client = celery_service.client
    dataset = client.register_dataset(artifacts.archive)
    model = client.register_model(artifacts.weights, dataset_id=dataset.id)
    database = Database(celery_service.settings.ledger.database_url)
    try:
        with database.transaction() as setup:  # a request the relay never sees (its outbox row is removed)
            tenant_id = setup.get(Model, model.id).tenant_id
            key = tenant_keys.current(setup, tenant_id=tenant_id, secret=celery_service.settings.ledger.secret_key)
            target = requests.Target("subjects", (key.subject_hash(artifacts.subject_with_train_samples(5)),))
            request, _ = requests.create_request(
                setup,
                tenant_id=setup.get(Model, model.id).tenant_id,
                model=setup.get(Model, model.id),
                target=target,
                method="ltu",
                parameters={},
                idempotency_key=None,
                body_hash="0" * 64,
                tenant_key_id=key.id,
                actor="test",
            )
            request_id = request.id
            setup.query(OutboxMessage).filter(OutboxMessage.payload["request_id"].as_string() == request_id).delete()
        original_load, raced = requests.load, []

        def load_then_race(session, *, request_id):
            row = original_load(session, request_id=request_id)
            if not raced:  # the relay, in its own transaction, right after the worker's read
                raced.append(True)
                with database.transaction() as relay:
                    assert requests.mark_queued(relay, request_id=request_id)
            return row

        monkeypatch.setattr(requests, "load", load_then_race)
        with database.transaction() as session:
            claimed = requests.claim(session, request_id=request_id, token="w", lease_seconds=60, max_attempts=3)
        assert raced and claimed is not None and claimed.status == "running" and claimed.attempts == 1
    finally:
        database.dispose()

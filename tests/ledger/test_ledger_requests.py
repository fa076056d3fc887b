"""ledger.requests at the ledger level: a submission pays its rate-limit token last and a refused one writes
nothing; forget sets follow the one forget-set rule at submission and in the worker."""

from __future__ import annotations

import pytest

from tests.support import tenant_key


@pytest.fixture()
def ledger(api, artifacts):
    """(database, model id, tenant id, tenant key) of a registered model with no requests."""
    from ledger.db import Database

    dataset = api.client.register_dataset(artifacts.archive)
    model = api.client.register_model(artifacts.weights, dataset_id=dataset.id)
    database = Database(api.settings.ledger.database_url)
    with database.session() as session:
        from ledger.tables import Model

        tenant_id = session.get(Model, model.id).tenant_id
    yield database, model.id, tenant_id, tenant_key(database, tenant_id, api.settings.ledger.secret_key)
    database.dispose()


def samples(artifacts, index: int) -> tuple[str, ...]:
    """Sample ids (all splits) of the index-th subject with training samples."""
    return tuple(sorted(artifacts.samples_of(artifacts.subject_with_train_samples(index))))


def train_samples(artifacts, index: int) -> tuple[str, ...]:
    """The training samples among them."""
    train = set(artifacts.dataset.sample_ids[artifacts.dataset.split_indices("train")].tolist())
    return tuple(s for s in samples(artifacts, index) if s in train)


def counts(session) -> dict[str, int]:
    from sqlalchemy import func, select

    from ledger.tables import DeletionRequest, OutboxMessage, RequestSample

    return {
        table.__name__: session.scalar(select(func.count()).select_from(table))
        for table in (DeletionRequest, RequestSample, OutboxMessage)
    }


def test_a_submission_takes_its_token_last_and_a_rate_limited_one_writes_nothing(ledger, artifacts, monkeypatch):
    from sqlalchemy import func, select

    from ledger import ratelimit, requests, tenants
    from ledger.errors import InvalidInput, RateLimited
    from ledger.tables import AuditEvent, DeletionRequest, RateLimitBucket

    database, model_id, tenant_id, key = ledger
    with database.transaction() as session:
        key_id = tenants.create_key(session, tenant_id=tenant_id, name="limited", scopes=["submit"], actor="test")[0].id

    def submit(session, sample_ids, *, idempotency_key=None):
        return requests.submit(
            session,
            tenant_id=tenant_id,
            api_key_id=key_id,
            model_id=model_id,
            target=requests.Target("samples", sample_ids=sample_ids),
            method="ltu",
            parameters={},
            idempotency_key=idempotency_key,
            body_hash=str(sample_ids),
            tenant_key_id=key.id,
            actor="test",
            per_minute=1,
            burst=2,
        )

    def tokens() -> float | None:
        with database.session() as session:
            return session.scalar(select(RateLimitBucket.tokens).where(RateLimitBucket.api_key_id == key_id))

    taken = []
    original_take = ratelimit.take

    def take_after_the_request_is_written(session, **kw):
        # Last: the request, its samples and its dispatch row are already in the transaction.
        taken.append(counts(session))
        return original_take(session, **kw)

    monkeypatch.setattr(ratelimit, "take", take_after_the_request_is_written)
    never_trained = min(artifacts.samples_of(artifacts.subject_without_train_samples()))
    with database.transaction() as session, pytest.raises(InvalidInput):
        submit(session, (never_trained,))
    assert taken == [] and tokens() is None  # a refusal takes no token

    with database.transaction() as session:
        before = counts(session)
        first, created = submit(session, train_samples(artifacts, 0)[:1], idempotency_key="first")
    assert created and tokens() == 1.0  # a full bucket of 2, one taken
    assert taken == [{name: n + 1 for name, n in before.items()}]  # one request, one sample, one dispatch row
    with database.transaction() as session:
        replay, created = submit(session, train_samples(artifacts, 0)[:1], idempotency_key="first")
    assert replay.id == first.id and not created and tokens() == 1.0  # replays are free
    with database.transaction() as session:
        submit(session, train_samples(artifacts, 1)[:1])
    left = tokens()
    assert left < 1.0

    with database.session() as session:
        before = counts(session)
        events = session.scalar(select(func.count()).select_from(AuditEvent))
    with pytest.raises(RateLimited) as refused, database.transaction() as session:
        submit(session, train_samples(artifacts, 2)[:1])
    assert refused.value.retry_after >= 1 and "retry in" in str(refused.value)
    with database.session() as session:
        assert counts(session) == before  # no request, no samples, no dispatch row
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == events
        assert (
            session.scalar(
                select(func.count())
                .select_from(DeletionRequest)
                .where(DeletionRequest.body_hash == str(train_samples(artifacts, 2)[:1]))
            )
            == 0
        )
    assert tokens() == left  # the refusal's refill bookkeeping rolled back with it


def test_forget_sets_are_the_named_training_samples_not_yet_erased(ledger, artifacts):
    from sqlalchemy import select, update

    from ledger import requests
    from ledger.errors import InvalidInput
    from ledger.tables import COMPLETED, DatasetSample, DeletionRequest, Model

    database, model_id, tenant_id, key = ledger
    train = set(artifacts.dataset.sample_ids[artifacts.dataset.split_indices("train")].tolist())
    first_subject = artifacts.subject_with_train_samples(0)
    mixed = next(
        s
        for s in sorted(set(artifacts.dataset.subject_ids.tolist()))  # training and test samples
        if s != first_subject and artifacts.samples_of(s) & train and artifacts.samples_of(s) - train
    )
    with database.transaction() as session:
        model = session.get(Model, model_id)
        dataset_id = model.dataset_id

        def create(target):
            return requests.create_request(
                session,
                tenant_id=tenant_id,
                model=model,
                target=target,
                method="ltu",
                parameters={},
                idempotency_key=None,
                body_hash=str(target),
                tenant_key_id=key.id,
                actor="test",
            )[0].id

        first = create(requests.Target("samples", sample_ids=train_samples(artifacts, 0)))
        both = create(
            requests.Target("subjects", subject_hashes=tuple(key.subject_hash(s) for s in (first_subject, mixed)))
        )  # names every split's samples

    def forget_sets(request_ids):
        with database.session() as session:
            return {
                r: [s.sample_id for s in chosen]
                for r, chosen in requests.forget_sets(session, request_ids=request_ids, model_id=model_id).items()
            }

    def train_in_dataset_order(ids):
        with database.session() as session:
            in_order = session.scalars(
                select(DatasetSample.sample_id)
                .where(DatasetSample.dataset_id == dataset_id, DatasetSample.sample_id.in_(list(ids)))
                .order_by(DatasetSample.row)
            )
            return [sample_id for sample_id in in_order if sample_id in train]

    named_by_both = artifacts.samples_of(first_subject) | artifacts.samples_of(mixed)
    with database.session() as session:
        assert {s.sample_id for s in requests.request_samples(session, request_id=both)} == named_by_both
    assert forget_sets([both, first, "no-such-request"]) == {
        both: train_in_dataset_order(named_by_both),
        first: train_in_dataset_order(artifacts.samples_of(first_subject)),
        "no-such-request": [],
    }
    with database.transaction() as session:  # the first request completed: its samples are erased from the model
        session.execute(update(DeletionRequest).where(DeletionRequest.id == first).values(status=COMPLETED))
    assert forget_sets([first, both]) == {first: [], both: train_in_dataset_order(artifacts.samples_of(mixed))}
    # The same rule refuses a submission with nothing left to forget.
    with database.transaction() as session, pytest.raises(InvalidInput, match="already been erased"):
        requests.create_request(
            session,
            tenant_id=tenant_id,
            model=session.get(Model, model_id),
            target=requests.Target("subjects", subject_hashes=(key.subject_hash(first_subject),)),
            method="ltu",
            parameters={},
            idempotency_key=None,
            body_hash="x",
            tenant_key_id=key.id,
            actor="test",
        )


@pytest.fixture()
def pg_ledger(make_service, artifacts, fresh_postgres_url):
    """The `ledger` fixture's (database, model id, tenant id, tenant key), on Postgres."""
    import secrets

    from ledger.db import Database
    from ledger.tables import Model

    service = make_service(database_url=fresh_postgres_url, secret_key=secrets.token_urlsafe(48))
    dataset = service.client.register_dataset(artifacts.archive)
    model = service.client.register_model(artifacts.weights, dataset_id=dataset.id)
    database = Database(fresh_postgres_url)
    with database.session() as session:
        tenant_id = session.get(Model, model.id).tenant_id
    yield database, model.id, tenant_id, tenant_key(database, tenant_id, service.settings.ledger.secret_key)
    database.dispose()


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
@pytest.mark.parametrize("second_body", ["same", "other"])
def test_one_idempotency_key_arriving_twice_at_once_makes_one_request(pg_ledger, artifacts, first_ends, second_body):
    """The second INSERT of a key waits for the first transaction: it replays (or conflicts on another body) once
    the first commits, and creates the request itself if the first rolls back."""
    import threading

    from sqlalchemy import func, select

    from ledger import requests
    from ledger.errors import IdempotencyConflict
    from ledger.tables import DeletionRequest, Model

    database, model_id, tenant_id, key = pg_ledger
    with database.session() as session:
        model = session.get(Model, model_id)

    def create(session, index: int):
        sample_ids = train_samples(artifacts, index)[:1]
        return requests.create_request(
            session,
            tenant_id=tenant_id,
            model=model,
            target=requests.Target("samples", sample_ids=sample_ids),
            method="ltu",
            parameters={},
            idempotency_key="twice",
            body_hash=str(sample_ids),
            tenant_key_id=key.id,
            actor="test",
        )

    outcome: dict[str, object] = {}

    def second() -> None:
        with database.session() as session:
            try:
                outcome["second"] = create(session, 0 if second_body == "same" else 1)
                session.commit()
            except IdempotencyConflict as exc:
                outcome["second"] = exc

    with database.session() as session:
        first, created = create(session, 0)
        assert created
        first_id = first.id
        racer = threading.Thread(target=second)
        racer.start()
        racer.join(timeout=1.0)
        assert racer.is_alive()  # its INSERT waits on the first transaction's row
        session.commit() if first_ends == "commit" else session.rollback()
    racer.join(timeout=30)
    assert not racer.is_alive()

    with database.session() as session:
        rows = session.scalar(
            select(func.count()).select_from(DeletionRequest).where(DeletionRequest.idempotency_key == "twice")
        )
    assert rows == 1
    if first_ends == "rollback":
        request, created = outcome["second"]
        assert created and request.id != first_id
    elif second_body == "same":
        request, created = outcome["second"]
        assert not created and request.id == first_id
    else:
        assert isinstance(outcome["second"], IdempotencyConflict)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_bucket_counts_to_the_microsecond_and_a_refusal_writes_nothing(backend, key_on):
    """The refill is computed in SQL: one token a second is there after 1 s, not after 999,999 µs, on either
    backend; and a refusal leaves the stored bucket as it was."""
    from datetime import timedelta

    from ledger import ratelimit
    from ledger.tables import RateLimitBucket, utcnow

    database, key_id = key_on(backend)

    def take(at):
        with database.transaction() as session:
            return ratelimit.take(session, api_key_id=key_id, per_minute=60, burst=1, now=at)

    def stored():
        with database.session() as session:
            bucket = session.get(RateLimitBucket, key_id)
            return bucket.tokens, bucket.refilled_at

    start = utcnow()
    assert take(start).allowed and stored() == (0.0, start)
    refused = take(start + timedelta(microseconds=999_999))
    assert not refused.allowed and refused.retry_after == 1 and refused.remaining == pytest.approx(0.999999)
    assert stored() == (0.0, start)
    assert take(start + timedelta(seconds=1)).allowed
    assert stored() == (0.0, start + timedelta(seconds=1))
    # A clock behind the bucket's adds nothing and does not move the refill time back.
    assert not take(start).allowed
    assert take(start + timedelta(seconds=2, microseconds=500_000)).allowed
    assert stored() == (0.0, start + timedelta(seconds=2, microseconds=500_000))  # refilled to the burst, no further


@pytest.fixture()
def key_on(tmp_path, request):
    """(database, API key id) on a fresh SQLite or Postgres ledger."""
    from ledger import migrate, tenants
    from ledger.db import Database

    databases = []

    def make(backend: str):
        url = (
            request.getfixturevalue("fresh_postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'l.db'}"
        )
        if backend == "sqlite":
            migrate.upgrade(url)
        database = Database(url)
        databases.append(database)
        with database.transaction() as session:
            tenant = tenants.ensure_tenant(session, name="bucket")
            key, _ = tenants.create_key(session, tenant_id=tenant.id, name="b", scopes=["submit"], actor="test")
        return database, key.id

    yield make
    for database in databases:
        database.dispose()

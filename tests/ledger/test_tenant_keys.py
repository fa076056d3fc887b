"""Per-tenant keys (ledger.tenant_keys): the same person hashes differently in two tenants, a rotation of the
server secret changes no hash, and destroying a tenant's key (crypto-shredding) makes its hashes unlinkable."""

from __future__ import annotations

import secrets

import pytest
from sqlalchemy import select

from ledger import tenant_keys
from ledger.db import Database
from ledger.errors import SecretMismatch
from ledger.hashing import subject_hash
from ledger.tables import AuditEvent, Dataset, DatasetSample, DeletionRequest, Erasure, TenantKey
from tests.support import ltu, new_key, problem, tenant_key

FIRST, SECOND = secrets.token_urlsafe(48), secrets.token_urlsafe(48)


def stored_hashes(database: Database, dataset_id: str) -> set[str]:
    with database.session() as session:
        return set(session.scalars(select(DatasetSample.subject_hash).where(DatasetSample.dataset_id == dataset_id)))


def tenant_of(database: Database, dataset_id: str) -> str:
    with database.session() as session:
        return session.get(Dataset, dataset_id).tenant_id


def locations(client, subject: str) -> dict:
    response = client.http.get(f"/v1/subjects/{subject}/locations", headers=client.headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_same_person_hashes_differently_in_two_tenants(api, artifacts):
    """The oracle is closed: a tenant admin who uploads chosen ids learns their hashes under its own key only."""
    other = api.client_for(new_key(api, scopes=["admin", "submit", "read", "audit"], tenant="other"))
    mine, theirs = api.client.register_dataset(artifacts.archive), other.register_dataset(artifacts.archive)
    database = Database(api.settings.ledger.database_url)
    try:
        assert stored_hashes(database, mine.id).isdisjoint(stored_hashes(database, theirs.id))
        with database.session() as session:
            keys = {session.get(Dataset, d.id).tenant_key_id for d in (mine, theirs)}
        assert len(keys) == 2 and None not in keys
    finally:
        database.dispose()
    subject = artifacts.subject_with_train_samples()
    here, there = locations(api.client, subject), locations(other, subject)
    assert here["subject_hash"] != there["subject_hash"]
    assert [d["dataset_id"] for d in here["datasets"]] == [mine.id]
    assert [d["dataset_id"] for d in there["datasets"]] == [theirs.id]


def test_a_wrapped_key_opens_only_for_its_tenant_and_secret(api, artifacts):
    dataset = api.client.register_dataset(artifacts.archive)
    new_key(api, scopes=["read"], tenant="other")
    database = Database(api.settings.ledger.database_url)
    try:
        tenant_id = tenant_of(database, dataset.id)
        key = tenant_key(database, tenant_id, api.settings.ledger.secret_key)
        secret = api.settings.ledger.secret_key
        with database.transaction() as session:
            row = session.get(TenantKey, key.id)
            assert row.origin == tenant_keys.RANDOM and key.material not in row.wrapped
            other = tenant_keys.current(session, tenant_id=_tenant_named(session, "other"), secret=secret)
            session.get(TenantKey, other.id).wrapped = row.wrapped  # one tenant's wrapped key copied to another
        with database.transaction() as session, pytest.raises(SecretMismatch):
            tenant_keys.current(session, tenant_id=_tenant_named(session, "other"), secret=secret)
        with database.transaction() as session, pytest.raises(SecretMismatch):
            tenant_keys.current(session, tenant_id=tenant_id, secret=SECOND)
    finally:
        database.dispose()


def _tenant_named(session, name: str) -> str:
    from ledger import tenants

    return tenants.get_tenant_by_name(session, name=name).id


def test_rotating_the_server_secret_keeps_every_lookup_replay_and_webhook_secret(
    make_service, fresh_postgres_url, artifacts, tmp_path, monkeypatch, capsys
):
    before = make_service(database_url=fresh_postgres_url, secret_key=FIRST)
    dataset = before.client.register_dataset(artifacts.archive)
    model = before.client.register_model(artifacts.weights, dataset_id=dataset.id)
    subject = artifacts.subject_with_train_samples()
    request = before.client.submit_deletion(model.id, subject_ids=[subject], idempotency_key="request-1")
    erasure = before.client.submit_erasure([artifacts.subject_with_train_samples(1)], idempotency_key="erasure-1")
    where = locations(before.client, subject)
    database = Database(fresh_postgres_url)
    try:
        tenant_id = tenant_of(database, dataset.id)
        material = tenant_key(database, tenant_id, FIRST).material

        new_file = tmp_path / "new.key"
        new_file.write_text(SECOND + "\n")
        monkeypatch.setenv("LTU_HOME", str(tmp_path / "cli"))
        monkeypatch.setenv("LTU_DATABASE_URL", fresh_postgres_url)
        monkeypatch.setenv("LTU_SECRET_KEY", FIRST)
        assert ltu("secret", "rotate", "--new-key-file", str(new_file)) == 0
        assert "1 tenant key(s) re-wrapped" in capsys.readouterr().err

        # A process still holding the old secret is told so (503), it does not hash under a wrong key.
        stale = before.client.http.get(f"/v1/subjects/{subject}/locations", headers=before.client.headers)
        assert problem(stale, 503)["code"] == "server_secret_mismatch"

        after = make_service(database_url=fresh_postgres_url, secret_key=SECOND)
        assert tenant_key(database, tenant_id, SECOND).material == material  # so every hash and webhook secret
        assert locations(after.client, subject) == where
        replayed = after.client.submit_deletion(model.id, subject_ids=[subject], idempotency_key="request-1")
        assert replayed.id == request.id
        again = after.client.submit_erasure([artifacts.subject_with_train_samples(1)], idempotency_key="erasure-1")
        assert (again.id, again.subjects_not_found) == (erasure.id, 0)
        # A new submission names the person's samples: hashed under the same key as the dataset.
        fresh = after.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples(2)])
        assert fresh.status == "received"  # an unknown subject would be a 422
    finally:
        database.dispose()


def test_destroying_a_tenant_key_crypto_shreds_its_hashes(api, artifacts, monkeypatch, capsys):
    other = api.client_for(new_key(api, scopes=["admin", "submit", "read", "audit"], tenant="other"))
    dataset, kept = api.client.register_dataset(artifacts.archive), other.register_dataset(artifacts.archive)
    model = api.client.register_model(artifacts.weights, dataset_id=dataset.id)
    subject = artifacts.subject_with_train_samples()
    api.client.submit_deletion(model.id, subject_ids=[subject], idempotency_key="before-shredding")
    database = Database(api.settings.ledger.database_url)
    try:
        tenant_id = tenant_of(database, dataset.id)
        old = tenant_key(database, tenant_id, api.settings.ledger.secret_key)
        hashes = stored_hashes(database, dataset.id)
        assert old.subject_hash(subject) in hashes

        monkeypatch.setenv("LTU_HOME", str(api.settings.ledger.home))
        monkeypatch.setenv("LTU_SECRET_KEY", api.settings.ledger.secret_key)
        assert ltu("secret", "shred-tenant", "--tenant", "default", "--confirm", "other-name") == 2
        assert ltu("secret", "shred-tenant", "--tenant", "default", "--confirm", "default") == 0
        assert f"key {old.id} of tenant 'default' destroyed" in capsys.readouterr().err

        with database.session() as session:
            row = session.get(TenantKey, old.id)
            assert row.wrapped is None and row.destroyed_at is not None
            event = session.scalars(select(AuditEvent).where(AuditEvent.action == "tenant_key.destroyed")).one()
            assert (event.tenant_id, event.data["key_id"]) == (tenant_id, old.id)
        # Nothing the ledger or the server secret holds links a subject id to the old hashes any more.
        new = tenant_key(database, tenant_id, api.settings.ledger.secret_key)
        assert new.id != old.id
        assert new.subject_hash(subject) not in hashes
        assert subject_hash(api.settings.ledger.secret_key.encode(), subject) not in hashes
        with database.session() as session:
            assert tenant_keys.key_for(session, tenant_id=tenant_id, key_id=old.id, secret=FIRST) is None
    finally:
        database.dispose()
    # The service answers as for a stranger: found nowhere, and an erasure of them names no model.
    assert locations(api.client, subject)["datasets"] == []
    assert api.client.submit_erasure([subject]).subjects_not_found == 1
    # The earlier body cannot be compared with a replay any more: a clear 422, never a wrong match.
    replay = api.client.http.post(
        "/v1/deletion-requests",
        json={"model_id": model.id, "subject_ids": [subject]},
        headers={**api.client.headers, "Idempotency-Key": "before-shredding"},
    )
    assert "destroyed" in problem(replay, 422)["detail"]
    # Another tenant's key is untouched.
    assert [d["dataset_id"] for d in locations(other, subject)["datasets"]] == [kept.id]


def test_hashes_made_before_tenant_keys_are_adopted_by_the_tenants_first_key(api, artifacts):
    """Rows of migration 0011's time carry no key id and are keyed by the server secret itself."""
    from ledger import datasets
    from ledger.datasets import SampleRow

    secret = api.settings.ledger.secret_key
    subject = artifacts.subject_with_train_samples()
    legacy_admin = api.client_for(new_key(api, scopes=["admin", "audit"], tenant="legacy"))
    database = Database(api.settings.ledger.database_url)
    try:
        with database.transaction() as session:
            tenant_id = _tenant_named(session, "legacy")
            datasets.create_dataset(
                session,
                tenant_id=tenant_id,
                dataset_id="d" * 36,
                name="before 0011",
                format_version=1,
                num_classes=2,
                image_shape=[1, 2, 2],
                archive_sha256="0" * 64,
                storage_key="datasets/legacy",
                samples=[SampleRow(0, "s0", subject_hash(secret.encode(), subject), 0, "train")],
                tenant_key_id=None,
                actor="test",
            )
        found = locations(legacy_admin, subject)
        assert [d["dataset_id"] for d in found["datasets"]] == ["d" * 36]
        with database.session() as session:
            key = session.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant_id)).one()
            assert key.origin == tenant_keys.LEGACY
            assert session.get(Dataset, "d" * 36).tenant_key_id == key.id
            event = session.scalars(select(AuditEvent).where(AuditEvent.action == "tenant_key.created")).all()
            assert [e.data["adopted"] for e in event if e.tenant_id == tenant_id] == [
                {"datasets": 1, "deletion_requests": 0, "erasures": 0}
            ]
            assert session.scalar(select(DeletionRequest.id).where(DeletionRequest.tenant_key_id.is_(None))) is None
            assert session.scalar(select(Erasure.id).where(Erasure.tenant_key_id.is_(None))) is None
    finally:
        database.dispose()


def test_two_first_uses_at_once_make_one_key_on_postgres(fresh_postgres_url):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ledger import tenants

    database = Database(fresh_postgres_url)
    try:
        with database.transaction() as session:
            tenant_id = tenants.ensure_tenant(session, name="racing").id
        together = threading.Barrier(2)

        def first_use(_) -> tuple[int, bytes]:
            with database.transaction() as session:
                together.wait(timeout=30)
                key = tenant_keys.current(session, tenant_id=tenant_id, secret=FIRST)
                return key.id, key.material

        with ThreadPoolExecutor(2) as pool:
            (one, two) = pool.map(first_use, range(2))
        assert one == two
        with database.session() as session:
            assert len(session.scalars(select(TenantKey).where(TenantKey.tenant_id == tenant_id)).all()) == 1
    finally:
        database.dispose()

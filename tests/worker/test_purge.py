"""Purge: superseded weights leave the artifact store after the grace period, with an audit event;
the current pointer never moves back."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from tests.support import ltu, problem


def purge(service, *, grace_hours: float = 0.0):
    from ledger.artifacts import ArtifactStore
    from ledger.db import Database
    from worker.retention import purge_due

    database = Database(service.settings.ledger.database_url)
    try:
        store = ArtifactStore(service.settings.ledger.artifacts_dir)
        return purge_due(database, store, grace=timedelta(hours=grace_hours))
    finally:
        database.dispose()


def test_superseded_weights_are_purged_after_the_grace_period(completed):
    service, client, model = completed.service, completed.client, completed.model
    v1 = client.get_version(model.id, 1)
    path = service.settings.ledger.artifacts_dir / f"models/{v1.sha256[:2]}/{v1.sha256}.safetensors"
    assert path.is_file() and v1.state == "superseded"
    assert purge(service, grace_hours=1) == []  # still within its grace period
    purged = purge(service)
    assert [(p.model_id, p.number, p.sha256) for p in purged] == [(model.id, 1, v1.sha256)]
    assert not path.exists() and client.get_version(model.id, 1).state == "purged"
    event = client.audit_events(action="model_version.purged")[-1]
    assert event.data == {"number": 1, "sha256": v1.sha256, "gone": True, "kept_for_other_versions": 0}
    assert event.request_id == completed.request.id and event.resource_id == v1.id
    assert client.verify_audit()["valid"]
    # Its weights are gone for good; the current version is untouched.
    problem(service.http.get(f"/v1/models/{model.id}/versions/1/weights", headers=client.headers), 410)
    current = client.get_model(model.id)
    assert current.current_version == 2 and client.get_version(model.id, 2).state == "ready"
    assert purge(service) == []  # a second pass finds nothing


def test_weights_shared_with_a_live_version_stay_until_that_one_goes(completed, artifacts):
    service, client = completed.service, completed.client
    dataset = client.list_models()[0].dataset_id
    twin = client.register_model(artifacts.weights, dataset_id=dataset, name="twin")  # the same file as model 1's v1
    v1 = client.get_version(completed.model.id, 1)
    assert client.get_version(twin.id, 1).sha256 == v1.sha256
    assert [p.model_id for p in purge(service)] == [completed.model.id]
    event = client.audit_events(action="model_version.purged")[-1]
    assert event.data["gone"] is False and event.data["kept_for_other_versions"] == 1
    assert client.download_weights(twin.id, 1, service.settings.ledger.home / "twin.safetensors").is_file()


def test_a_purge_interrupted_after_deleting_the_file_is_completed_next_time(completed):
    from ledger.artifacts import ArtifactStore

    service, client = completed.service, completed.client
    v1 = client.get_version(completed.model.id, 1)
    store = ArtifactStore(service.settings.ledger.artifacts_dir)
    assert store.delete(f"models/{v1.sha256[:2]}/{v1.sha256}.safetensors")  # the crash came right after this
    assert [p.number for p in purge(service)] == [1]
    assert client.audit_events(action="model_version.purged")[-1].data["gone"] is True


def test_the_current_version_only_moves_forward(completed):
    from ledger import registry
    from ledger.db import Database
    from ledger.errors import Conflict, StaleBase

    database = Database(completed.service.settings.ledger.database_url)
    model_id = completed.model.id
    with database.session() as session, pytest.raises(Conflict, match="only moves forward"):
        registry.move_current(session, model_id=model_id, expect=2, to=1)  # a rollback to pre-erasure weights
    with database.session() as session, pytest.raises(StaleBase):
        registry.move_current(session, model_id=model_id, expect=1, to=2)  # it is not at 1 any more
    database.dispose()
    assert completed.client.get_model(model_id).current_version == 2


def test_the_purge_command_and_the_purge_loop(completed, artifacts, monkeypatch, capsys):
    from worker.retention import PurgeLoop
    from worker.runner import EmbeddedRunner

    service, client, model = completed.service, completed.client, completed.model
    monkeypatch.setenv("LTU_HOME", str(service.settings.ledger.home))
    monkeypatch.setenv("LTU_SECRET_KEY", service.settings.ledger.secret_key)
    for name in ("LTU_DATABASE_URL", "LTU_BROKER_URL", "LTU_ARTIFACTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LTU_PURGE_GRACE_HOURS", "soon")
    assert ltu("purge") == 2
    monkeypatch.setenv("LTU_PURGE_GRACE_HOURS", "0")
    assert ltu("purge") == 0
    assert f"purged model {model.id} version 1" in capsys.readouterr().out

    # A second erasure supersedes version 2; the loop `ltu serve` and the workers run purges it.
    second = client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples(1)], parameters=service.tiny_ltu
    )
    EmbeddedRunner(service.settings).run_pending()
    assert client.get_request(second.id).status == "completed"
    loop = PurgeLoop(service.settings.replace(purge_grace_hours=0.0, purge_interval=0.1))
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while client.get_version(model.id, 2).state != "purged":
            assert time.monotonic() < deadline, "the purge loop did not purge version 2"
            time.sleep(0.1)
    finally:
        loop.stop()
    assert [v.state for v in client.list_versions(model.id)] == ["ready", "purged", "purged"]

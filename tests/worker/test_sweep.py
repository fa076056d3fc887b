"""Files outlive no rollback: a publication that loses its race (stale base, lost lease) or a registration that
fails leaves nothing in the artifact store, and what a crash leaves behind, which no ledger row references, the
sweeper deletes after its grace period with an `artifact.swept` event, sparing referenced and young items."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest

DAY = 86_400
GRACE = timedelta(hours=6)


def sweep(service, *, grace: timedelta = GRACE):
    from ledger.artifacts import ArtifactStore
    from ledger.db import Database
    from worker.retention import sweep_unreferenced

    database = Database(service.settings.ledger.database_url)
    try:
        return sweep_unreferenced(database, ArtifactStore(service.settings.ledger.artifacts_dir), grace=grace)
    finally:
        database.dispose()


def store_of(service):
    from ledger.artifacts import ArtifactStore

    return ArtifactStore(service.settings.ledger.artifacts_dir)


def referenced(service) -> set[str]:
    from ledger import retention
    from ledger.db import Database

    database = Database(service.settings.ledger.database_url)
    try:
        with database.session() as session:
            return retention.referenced_keys(session)
    finally:
        database.dispose()


def swept_events(service) -> list:
    """The sweeper's events: they belong to no tenant, so no tenant's /v1/audit/events lists them."""
    from sqlalchemy import select

    from ledger.db import Database
    from ledger.tables import AuditEvent

    database = Database(service.settings.ledger.database_url)
    try:
        with database.session() as session:
            return list(
                session.scalars(
                    select(AuditEvent).where(AuditEvent.action == "artifact.swept").order_by(AuditEvent.seq)
                )
            )
    finally:
        database.dispose()


def backdate(path, seconds: float = DAY) -> None:
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (time.time() - seconds, time.time() - seconds))


def assert_only_referenced_files(service) -> None:
    """models/ and references/ hold exactly what rows reference, and tmp/ nothing."""
    store = store_of(service)
    stored = {key for key in store.items() if not key.startswith("datasets/")}
    assert stored == {key for key in referenced(service) if not key.startswith("datasets/")}


# --- publications that lose their race ----------------------------------------------------------


@pytest.fixture()
def racing_job(api, artifacts, monkeypatch):
    """(service, request id, job context, race) where race(fault) makes the job's publication meet `fault` once, right
    after its weights are saved; returns the sha256 of those weights."""
    import worker.steps.publish as publish
    from ledger.artifacts import sha256_file
    from worker.context import JobContext

    dataset = api.client.register_dataset(artifacts.archive)
    model = api.client.register_model(artifacts.weights, dataset_id=dataset.id)
    request = api.client.submit_deletion(
        model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=api.tiny_ltu
    )
    ctx = JobContext.from_settings(api.settings)
    real_save, lost = publish.save_model, []

    def race(fault):
        def save_and_meet_the_fault(module, arch, path, *, metadata):
            real_save(module, arch, path, metadata=metadata)
            if not lost:
                lost.append(sha256_file(path))
                fault(model.id, module, arch)

        monkeypatch.setattr(publish, "save_model", save_and_meet_the_fault)
        return lost

    yield api, request.id, ctx, race
    ctx.database.dispose()


def test_a_publication_rolled_back_by_a_stale_base_leaves_no_file(racing_job, artifacts, submit_backdated):
    from ledger import registry
    from ledger.tables import Model
    from ltu_core.models import save_model
    from worker.job import run_erasure

    service, request_id, ctx, race = racing_job

    def another_publication_moves_the_model_on(model_id, module, arch):
        rival = submit_backdated(service, model_id, artifacts.subject_with_train_samples(1), 0)
        weights = ctx.store.staging_file(".safetensors")
        save_model(module, arch, weights, metadata={"request_id": rival})
        with ctx.database.transaction() as session:
            blob = ctx.store.stage_model(session, weights)
            registry.publish_version(
                session,
                model=session.get(Model, model_id),
                base=registry.get_version(session, model_id=model_id, number=1),
                request_id=rival,
                sha256=blob.sha256,
                size_bytes=blob.size,
                storage_key=blob.key,
                metrics=None,
                actor="test",
            )

    lost = race(another_publication_moves_the_model_on)
    assert run_erasure(ctx, request_id) == "completed"  # redone on the rival's version
    done = service.client.get_request(request_id)
    assert (done.base_version, done.result_version) == (2, 3)
    stale = lost[0]
    assert not store_of(service).path(f"models/{stale[:2]}/{stale}.safetensors").exists()
    assert stale not in {v.sha256 for v in service.client.list_versions(done.model_id)}
    assert_only_referenced_files(service)


def test_a_publication_that_lost_its_lease_leaves_no_file(racing_job):
    from sqlalchemy import update

    from ledger.tables import DeletionRequest
    from worker.job import run_erasure

    service, request_id, ctx, race = racing_job

    def another_execution_takes_the_request_over(*_):
        with ctx.database.transaction() as session:
            session.execute(
                update(DeletionRequest).where(DeletionRequest.id == request_id).values(lease_token="another-execution")
            )

    lost = race(another_execution_takes_the_request_over)
    assert run_erasure(ctx, request_id) == "lease_lost"
    stale = lost[0]
    assert not store_of(service).path(f"models/{stale[:2]}/{stale}.safetensors").exists()
    assert [v.number for v in service.client.list_versions(service.client.get_request(request_id).model_id)] == [1]
    assert_only_referenced_files(service)


def test_a_crash_between_moving_the_weights_and_committing_leaves_an_orphan_the_sweeper_removes(racing_job):
    from sqlalchemy import event

    from worker.job import run_erasure

    service, request_id, ctx, race = racing_job
    lost = race(lambda *_: None)

    def crash(session):
        if lost and session.info.get("ltu.artifacts.staged"):  # after the weights were moved into models/
            raise RuntimeError("the process died before COMMIT")

    event.listen(ctx.database.sessions, "before_commit", crash)  # after the store's own hook
    assert run_erasure(ctx, request_id) == "failed"
    event.remove(ctx.database.sessions, "before_commit", crash)
    orphan = store_of(service).path(f"models/{lost[0][:2]}/{lost[0]}.safetensors")
    assert orphan.is_file(), "the fault must strike between the move and the commit"

    assert sweep(service) == [] and orphan.is_file()  # young: it could be a publication in flight
    backdate(orphan)
    swept = sweep(service)
    assert [s.key for s in swept] == [f"models/{lost[0][:2]}/{lost[0]}.safetensors"] and not orphan.exists()
    (event_row,) = swept_events(service)
    assert (event_row.tenant_id, event_row.actor, event_row.resource_type) == (None, "system", "artifact")
    assert event_row.resource_id == lost[0]
    assert event_row.data["sha256"] == lost[0] and event_row.data["age_seconds"] >= DAY - 60
    assert event_row.data["size"] == swept[0].size > 0
    assert service.client.verify_audit()["valid"]
    assert_only_referenced_files(service)


# --- registrations that fail ----------------------------------------------------------------------


def test_a_failed_dataset_registration_leaves_no_folder(api, artifacts, monkeypatch):
    from ledger import datasets

    real = datasets.create_dataset

    def written_then_failed(session, **fields):
        real(session, **fields)
        raise RuntimeError("the registration failed after writing its rows")

    monkeypatch.setattr(datasets, "create_dataset", written_then_failed)
    with pytest.raises(RuntimeError, match="after writing its rows"):
        api.client.register_dataset(artifacts.archive)
    assert store_of(api).items() == []  # neither datasets/<id> nor the upload with its raw subject ids in tmp/


def test_a_reference_set_that_lost_its_lease_while_storing_leaves_no_file(make_service, artifacts, monkeypatch):
    from sqlalchemy import update

    from ledger.db import Database
    from ledger.tables import AuditReferenceSet
    from ltu_core.audit import ReferenceScores
    from worker.runner import EmbeddedRunner

    service = make_service(audit_reference_models=2)
    dataset = service.client.register_dataset(artifacts.archive)
    model = service.client.register_model(
        artifacts.weights, dataset_id=dataset.id, recipe={"epochs": 1, "batch_size": 32, "lr": 0.05}
    )
    real_save = ReferenceScores.save

    def save_then_lose_the_lease(scores, path, *, metadata):
        real_save(scores, path, metadata=metadata)
        database = Database(service.settings.ledger.database_url)
        with database.transaction() as session:
            session.execute(update(AuditReferenceSet).values(lease_token="another-execution"))
        database.dispose()

    monkeypatch.setattr(ReferenceScores, "save", save_then_lose_the_lease)
    assert EmbeddedRunner(service.settings).run_pending_references() == 1
    assert service.client.get_audit_references(model.id).audit_status != "ready"
    assert not [key for key in store_of(service).items() if not key.startswith(("models/", "datasets/"))]
    assert_only_referenced_files(service)


# --- the sweeper ------------------------------------------------------------------------------------


def plant(store, key: str, *, old: bool = True, content: bytes = b"orphan"):
    path = store.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if key.startswith(("datasets/", "tmp/upload")):
        path.mkdir()
        (path / "samples.csv").write_text("sample_id,subject_id,label,split\ns1,alice@example.com,0,train\n")
    else:
        path.write_bytes(content)
    if old:
        backdate(path)
    return path


def a_reference_set(service, *, storage_key: str, purged: bool) -> None:
    from sqlalchemy import select

    from ledger.db import Database
    from ledger.tables import AuditReferenceSet, Model, utcnow

    database = Database(service.settings.ledger.database_url)
    with database.transaction() as session:
        model = session.scalars(select(Model)).one()
        session.add(
            AuditReferenceSet(
                model_id=model.id,
                tenant_id=model.tenant_id,
                status="superseded" if purged else "ready",
                reason="registration",
                count=2,
                seed=0,
                storage_key=storage_key,
                purged_at=utcnow() if purged else None,
            )
        )
    database.dispose()


def test_the_sweeper_deletes_old_unreferenced_items_only(completed_on_each_ledger):
    service = completed_on_each_ledger.service
    store = store_of(service)
    kept_keys = referenced(service)
    assert len(kept_keys) == 3  # versions 1 and 2, the dataset
    for key in kept_keys:
        backdate(store.path(key))  # kept because a row references them, not because they are young
    in_use, retired = "references/aa/" + "a" * 64 + ".safetensors", "references/bb/" + "b" * 64 + ".safetensors"
    a_reference_set(service, storage_key=in_use, purged=False)
    a_reference_set(service, storage_key=retired, purged=True)
    plant(store, in_use)
    orphans = {
        "models/cc/" + "c" * 64 + ".safetensors": plant(store, "models/cc/" + "c" * 64 + ".safetensors"),
        retired: plant(store, retired),
        "datasets/no-such-dataset": plant(store, "datasets/no-such-dataset"),  # a registration that failed
        "tmp/upload-crashed": plant(store, "tmp/upload-crashed"),  # raw subject ids of a crashed upload
        "tmp/tmpcrashed.safetensors": plant(store, "tmp/tmpcrashed.safetensors"),
    }
    young = [plant(store, "models/dd/" + "d" * 64 + ".safetensors", old=False), store.staging_file(".tar")]

    swept = sweep(service)
    assert sorted(s.key for s in swept) == sorted(orphans)
    assert not any(path.exists() for path in orphans.values())
    assert all(path.exists() for path in young) and all(store.path(key).exists() for key in [*kept_keys, in_use])
    events = {e.data["key"]: e for e in swept_events(service)}
    assert set(events) == set(orphans) and all(e.tenant_id is None for e in events.values())
    assert "sha256" not in events["tmp/upload-crashed"].data  # a folder
    assert events["models/cc/" + "c" * 64 + ".safetensors"].resource_id == "c" * 64
    assert events["datasets/no-such-dataset"].data["size"] > 0
    assert sweep(service) == []  # a second pass finds nothing
    assert service.client.verify_audit()["valid"]
    assert not [e for e in service.client.audit_events() if e.action == "artifact.swept"]  # no tenant's events


def test_the_purge_loop_sweeps_too(completed):
    from worker.retention import PurgeLoop

    service, store = completed.service, store_of(completed.service)
    orphan = plant(store, "tmp/upload-crashed")
    PurgeLoop(service.settings).purge_once()
    assert not orphan.exists() and [e.data["key"] for e in swept_events(service)] == ["tmp/upload-crashed"]


def test_ltu_purge_sweeps_too(completed, monkeypatch, capsys):
    from tests.support import ltu

    service = completed.service
    monkeypatch.setenv("LTU_HOME", str(service.settings.ledger.home))
    monkeypatch.setenv("LTU_SECRET_KEY", service.settings.ledger.secret_key)
    for name in ("LTU_DATABASE_URL", "LTU_BROKER_URL", "LTU_ARTIFACTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    orphan = plant(store_of(service), "tmp/upload-crashed")
    assert ltu("purge") == 0
    assert not orphan.exists() and "swept tmp/upload-crashed" in capsys.readouterr().out

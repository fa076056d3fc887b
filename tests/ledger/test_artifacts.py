"""The artifact store: a staged file lands at its key only as the transaction that references it commits, a
rollback deletes it, and the sweeper never takes bytes a publication adopts at that moment."""

from __future__ import annotations

import os
import time

import pytest

DAY = 86_400


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path):
    """(database, store) on a migrated ledger of each backend."""
    from ledger import migrate
    from ledger.artifacts import ArtifactStore
    from ledger.db import Database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        migrate.upgrade(url)
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    database = Database(url)
    yield database, ArtifactStore(tmp_path / "artifacts").ensure()
    database.dispose()


def staged_weights(store, content: bytes = b"weights"):
    staged = store.staging_file(".safetensors")
    staged.write_bytes(content)
    return staged


def event(session, action: str = "test.published", data=None) -> None:
    from ledger import audit

    audit.record(session, tenant_id=None, actor="test", action=action, resource_type="test", resource_id="r", data=data)


def test_a_staged_file_lands_only_when_its_transaction_commits(ledger):
    database, store = ledger
    staged = staged_weights(store)
    with database.transaction() as session:
        blob = store.stage_model(session, staged)
        event(session)
        assert not staged.exists() and not store.path(blob.key).exists()  # the transaction holds it until COMMIT
    assert store.path(blob.key).read_bytes() == b"weights"
    assert list((store.root / "tmp").iterdir()) == []


@pytest.mark.parametrize("stage", ["stage_model", "stage_scores"])
def test_a_rolled_back_transaction_leaves_neither_the_file_nor_its_staged_copy(ledger, stage):
    database, store = ledger
    staged = staged_weights(store)
    with pytest.raises(RuntimeError, match="rolled back"), database.transaction() as session:
        blob = getattr(store, stage)(session, staged)
        event(session)
        raise RuntimeError("rolled back")
    assert not store.path(blob.key).exists()
    assert list((store.root / "tmp").iterdir()) == []


def test_a_transaction_whose_writes_fail_never_places_its_file(ledger):
    database, store = ledger
    staged = staged_weights(store)
    with pytest.raises(ValueError, match="canonical"), database.transaction() as session:
        blob = store.stage_model(session, staged)
        event(session, data={"not canonical": {1, 2}})  # fails as the commit seals the audit chain
    assert not store.path(blob.key).exists()
    assert list((store.root / "tmp").iterdir()) == []


def test_a_staged_dataset_folder_lands_at_its_dataset_key(ledger):
    database, store = ledger
    folder = store.staging_dir()
    (folder / "samples.csv").write_text("sample_id,subject_id,label,split\n")
    with database.transaction() as session:
        key = store.stage_dataset(session, folder, "d1")
        event(session)
    assert key == "datasets/d1" and (store.path(key) / "samples.csv").is_file()
    assert list((store.root / "tmp").iterdir()) == []


def test_bytes_stored_already_are_kept_and_made_young_again(ledger):
    database, store = ledger
    with database.transaction() as session:
        blob = store.stage_model(session, staged_weights(store))
    path = store.path(blob.key)
    os.utime(path, (time.time() - DAY, time.time() - DAY))
    with database.transaction() as session:
        assert store.stage_model(session, staged_weights(store)) == blob  # another version, the same weights
    assert time.time() - path.stat().st_mtime < 60, "a file a commit adopts must look young to the sweeper"
    assert store.items() == [blob.key]


def backdated(store, key: str, content: bytes = b"weights"):
    path = store.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, (time.time() - DAY, time.time() - DAY))
    return path


def test_only_old_items_are_set_aside_with_what_their_event_records(ledger):
    from ledger.artifacts import sha256_file

    _, store = ledger
    old = backdated(store, "models/ab/old.safetensors")
    sha = sha256_file(old)
    young = store.staging_file(".tar")
    assert store.set_aside("tmp/" + young.name, idle_seconds=3600) is None and young.exists()
    item = store.set_aside("models/ab/old.safetensors", idle_seconds=3600)
    assert (item.key, item.sha256, item.size) == ("models/ab/old.safetensors", sha, len(b"weights"))
    assert DAY - 60 < item.age_seconds <= DAY + 60 and not old.exists()
    assert item.path.parent == store.root / "tmp" and item.path.read_bytes() == b"weights"
    assert store.set_aside("models/ab/old.safetensors", idle_seconds=3600) is None  # gone already


@pytest.mark.parametrize("publication", ["before the move aside", "after the move aside"])
def test_bytes_a_publication_adopts_while_they_are_swept_are_never_lost(ledger, monkeypatch, publication):
    from ledger import artifacts

    database, store = ledger
    with database.transaction() as session:
        key = store.stage_model(session, staged_weights(store)).key
    path = backdated(store, key)  # an orphan of a crashed publication, about to be swept
    real = artifacts._untouched_seconds
    moment = path if publication == "before the move aside" else None

    def racing(item):
        age = real(item)
        if item == moment or (moment is None and item != path):  # the same weights are published right now
            with database.transaction() as session:
                store.stage_model(session, staged_weights(store))
        return age

    monkeypatch.setattr(artifacts, "_untouched_seconds", racing)
    item = store.set_aside(key, idle_seconds=3600)
    assert path.read_bytes() == b"weights"
    # Refreshed before the move aside: put back. Found missing by the publication: its own copy is in place.
    assert (item is None) == (publication == "before the move aside")
    assert [p for p in (store.root / "tmp").iterdir()] == ([] if item is None else [item.path])

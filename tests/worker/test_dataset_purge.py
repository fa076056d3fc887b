"""Erased pixels leave the stored dataset: once every model registered on it has erased a subject (or
at once, by the tenant's policy) its rows are tombstoned, with an audit event and a certificate line;
a model registered later never reads them; a purge that rolls back leaves the stored folder as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest


def purge_pixels(service):
    from ledger.artifacts import ArtifactStore
    from ledger.db import Database
    from worker.retention import purge_erased_pixels

    database = Database(service.settings.ledger.database_url)
    try:
        return purge_erased_pixels(database, ArtifactStore(service.settings.ledger.artifacts_dir))
    finally:
        database.dispose()


def in_ledger(service, work):
    from ledger.db import Database

    database = Database(service.settings.ledger.database_url)
    try:
        with database.transaction() as session:
            return work(session)
    finally:
        database.dispose()


def dataset_folder(service, dataset_id):
    return service.settings.ledger.artifacts_dir / "datasets" / dataset_id


def rows_of(artifacts, subject):
    return sorted(np.flatnonzero(artifacts.dataset.subject_ids == subject).tolist())


def erase(service, model_id, subject, **options):
    from worker.runner import EmbeddedRunner

    request = service.client.submit_deletion(
        model_id, subject_ids=[subject], **{"parameters": service.tiny_ltu, **options}
    )
    EmbeddedRunner(service.settings).run_pending()
    return service.client.get_request(request.id)


def certificate_purge(service, request_id):
    from ledger.certificates import certificate_content
    from ledger.tables import DeletionRequest

    def content(session):
        tenant = session.get(DeletionRequest, request_id).tenant_id
        return certificate_content(session, tenant_id=tenant, request_id=request_id)["dataset_purge"]

    return in_ledger(service, content)


@pytest.fixture()
def two_models(completed_on_each_ledger, artifacts):
    """The tiny dataset with two models on it (SQLite, then Postgres); subject 0 erased from the first one only."""
    completed = completed_on_each_ledger
    dataset_id = completed.client.get_model(completed.model.id).dataset_id
    second = completed.client.register_model(artifacts.weights, dataset_id=dataset_id, name="second")
    return completed, dataset_id, second


def test_pixels_go_once_every_model_erased_the_subject(two_models, artifacts):
    from ltu_core.data import read_dataset

    completed, dataset_id, second = two_models
    service, client = completed.service, completed.client
    subject = artifacts.subject_with_train_samples(0)
    rows = rows_of(artifacts, subject)
    folder = dataset_folder(service, dataset_id)
    before = (folder / "images.u8").read_bytes()

    assert purge_pixels(service) == []  # the second model still holds the subject: it needs the pixels to unlearn
    assert (folder / "images.u8").read_bytes() == before
    statement = certificate_purge(service, completed.request.id)  # issued before the purge
    assert (statement["samples"], statement["purged_samples"], statement["complete"]) == (len(rows), 0, False)
    assert "follow" in statement["rule"]

    assert erase(service, second.id, subject).status == "completed"
    [purge] = purge_pixels(service)
    assert sorted(purge.rows) == rows and not purge.at_once
    stored = read_dataset(folder)
    assert stored.purged_rows.tolist() == rows and not np.asarray(stored.images[rows]).any()
    others = np.setdiff1d(np.arange(len(stored)), rows)
    assert np.array_equal(np.asarray(stored.images[others]), artifacts.dataset.images[others])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["purged_rows"] == rows

    event = client.audit_events(action="dataset.samples_purged")[-1]
    assert event.resource_id == dataset_id
    assert event.data["samples"] == len(rows) and event.data["policy"] == "every_model_erased"
    assert event.data["subject_hashes"] == completed.request.subject_hashes  # keyed hashes, never raw ids
    assert subject not in json.dumps(event.data)
    assert client.verify_audit()["valid"]
    statement = certificate_purge(service, completed.request.id)
    assert (statement["purged_samples"], statement["complete"]) == (len(rows), True)

    def ledger_state(session):
        from ledger.tables import Dataset, DatasetSample

        purged = session.query(DatasetSample).filter(DatasetSample.purged_at.is_not(None)).all()
        return session.get(Dataset, dataset_id).format_version, sorted(s.row for s in purged)

    assert in_ledger(service, ledger_state) == (2, rows)
    assert purge_pixels(service) == []  # nothing left to purge


def test_the_at_once_policy_purges_after_the_first_model(two_models, artifacts):
    from ledger import datasets
    from ledger.tables import Model

    completed, _, second = two_models
    service = completed.service
    in_ledger(
        service,
        lambda s: datasets.set_purge_policy(s, tenant_id=s.get(Model, second.id).tenant_id, at_once=True, actor="test"),
    )
    [purge] = purge_pixels(service)
    assert purge.at_once and sorted(purge.rows) == rows_of(artifacts, artifacts.subject_with_train_samples(0))
    assert completed.client.audit_events(action="dataset.samples_purged")[-1].data["policy"] == "at_once"
    # The price of the policy: the second model can no longer be unlearned from those pixels.
    failed = erase(service, second.id, artifacts.subject_with_train_samples(0))
    assert failed.status == "failed" and failed.error["code"] == "samples_purged"


def test_a_model_registered_after_the_purge_never_reads_the_purged_rows(completed, artifacts, monkeypatch):
    from ltu_core.data.dataset import SampleSet

    service, client = completed.service, completed.client
    [purge] = purge_pixels(service)
    dataset_id = client.get_model(completed.model.id).dataset_id
    later = client.register_model(artifacts.weights, dataset_id=dataset_id, recipe=artifacts.recipe, name="later")

    read: set[int] = set()
    tensors = SampleSet.tensors

    def recording(self):
        read.update(self.indices.tolist())
        return tensors(self)

    monkeypatch.setattr(SampleSet, "tensors", recording)
    for method in ("ltu", "retrain"):
        subject = artifacts.subject_with_train_samples(1 if method == "ltu" else 2)
        options = {} if method == "ltu" else {"method": "retrain", "parameters": {"epochs": 1}}
        done = erase(service, later.id, subject, **options)
        assert done.status == "completed", done.error
    assert read and not read & set(purge.rows)  # unlearning, Retrain and the audit read every other row but those

    refused = erase(service, later.id, artifacts.subject_with_train_samples(0))
    assert refused.status == "failed" and refused.error["code"] == "samples_purged"


def test_a_purge_that_rolls_back_leaves_the_stored_folder_as_it_was(completed, artifacts, monkeypatch):
    from ledger import datasets

    service = completed.service
    dataset_id = completed.client.get_model(completed.model.id).dataset_id
    folder = dataset_folder(service, dataset_id)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(session, **kwargs):
        raise RuntimeError("the database went away before COMMIT")

    with monkeypatch.context() as patch:
        patch.setattr(datasets, "mark_pixels_purged", fail)  # after the staged copy was handed to the transaction
        with pytest.raises(RuntimeError, match="went away"):
            purge_pixels(service)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert list((service.settings.ledger.artifacts_dir / "tmp").iterdir()) == []  # the staged copy is gone too
    assert completed.client.audit_events(action="dataset.samples_purged") == []

    [purge] = purge_pixels(service)  # the next pass does it
    assert sorted(purge.rows) == rows_of(artifacts, artifacts.subject_with_train_samples(0))


def test_reference_models_of_a_later_model_train_and_score_without_the_purged_rows(completed, artifacts, monkeypatch):
    from ledger import references
    from ltu_core.audit import ReferenceScores
    from ltu_core.data.dataset import SampleSet
    from worker.runner import EmbeddedRunner

    service, client = completed.service, completed.client
    [purge] = purge_pixels(service)
    dataset_id = client.get_model(completed.model.id).dataset_id
    recipe = {**artifacts.recipe, "epochs": 1}
    later = client.register_model(artifacts.weights, dataset_id=dataset_id, recipe=recipe, name="later")
    read: set[int] = set()
    tensors = SampleSet.tensors

    def recording(self):
        read.update(self.indices.tolist())
        return tensors(self)

    monkeypatch.setattr(SampleSet, "tensors", recording)
    client.train_audit_references(later.id, count=2)
    assert EmbeddedRunner(service.settings).run_pending_references() == 1
    ready = client.get_audit_references(later.id).in_use
    assert ready is not None and ready["error"] is None
    assert read and not read & set(purge.rows)

    def scores_key(session):
        return references.load(session, set_id=ready["id"]).storage_key

    scores = ReferenceScores.load(service.settings.ledger.artifacts_dir / in_ledger(service, scores_key))
    assert not scores.trained_on[:, list(purge.rows)].any()
    assert np.isnan(scores.phi[:, list(purge.rows)]).all()  # no pixels, no score
    others = np.setdiff1d(np.arange(len(artifacts.dataset)), purge.rows)
    assert np.isfinite(scores.phi[:, others]).all()

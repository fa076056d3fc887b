"""Weights downloads: the current version needs `read`, a superseded one (it still holds the subjects erased
since) `admin` until it is purged; every download is an audit event naming the version, the scope and the key."""

from __future__ import annotations

from tests.support import new_key, problem


def key_ids(service) -> dict[str, str]:
    """Key name → key id, from the admin's listing."""
    listing = service.http.get("/v1/api-keys", headers=service.client.headers).json()
    return {key["name"]: key["id"] for key in listing["items"]}


def test_superseded_weights_need_admin_and_every_download_is_audited(completed):
    service, model = completed.service, completed.model
    reader = {"Authorization": f"Bearer {new_key(service, scopes=['read'])}"}
    weights = f"/v1/models/{model.id}/versions/{{}}/weights"
    assert service.client.get_model(model.id).current_version == 2

    body = problem(service.http.get(weights.format(1), headers=reader), 403)
    assert body["code"] == "insufficient_scope" and "admin" in body["detail"]
    assert service.http.get(weights.format(2), headers=reader).status_code == 200
    superseded = service.http.get(weights.format(1), headers=service.client.headers)
    assert superseded.status_code == 200
    assert superseded.headers["etag"] == f'"{service.client.get_version(model.id, 1).sha256}"'

    ids = key_ids(service)
    events = service.client.audit_events(action="model_version.downloaded")
    assert [(e.data["version"], e.data["current"], e.data["scope"], e.data["key_id"]) for e in events] == [
        (2, True, "read", ids["test"]),
        (1, False, "admin", next(i for name, i in ids.items() if name != "test")),
    ]
    assert all(e.model_id == model.id and e.actor == f"key:{e.data['key_id']}" for e in events)
    assert events[1].resource_id == service.client.get_version(model.id, 1).id
    assert service.client.verify_audit()["valid"]


def test_a_purged_version_is_gone_for_every_scope(completed):
    from datetime import timedelta

    from ledger.artifacts import ArtifactStore
    from ledger.db import Database
    from worker.retention import purge_due

    service, model = completed.service, completed.model
    database = Database(service.settings.ledger.database_url)
    try:
        purge_due(database, ArtifactStore(service.settings.ledger.artifacts_dir), grace=timedelta(0))
    finally:
        database.dispose()
    reader = {"Authorization": f"Bearer {new_key(service, scopes=['read'])}"}
    for headers in (reader, service.client.headers):
        problem(service.http.get(f"/v1/models/{model.id}/versions/1/weights", headers=headers), 410)
    assert service.client.audit_events(action="model_version.downloaded") == []

"""Lists and their cursors, the start-up admin key, readiness, OpenAPI."""

from __future__ import annotations

import pytest


@pytest.fixture()
def five_requests(api, artifacts):
    """A model and five received requests, oldest first."""
    dataset = api.client.register_dataset(artifacts.archive)
    model = api.client.register_model(artifacts.weights, dataset_id=dataset.id)
    ids = [
        api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples(i)]).id for i in range(5)
    ]
    return model, ids


def test_request_list_pages_newest_first_with_filters(api, five_requests, artifacts):
    _model, ids = five_requests
    seen, cursor = [], None
    while True:
        page = api.client.list_requests(limit=2, cursor=cursor)
        assert len(page.items) <= 2
        seen += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ids[::-1]
    api.client.cancel_request(ids[0])
    assert [r.id for r in api.client.list_requests(status="cancelled").items] == [ids[0]]
    assert {r.id for r in api.client.list_requests(status="received").items} == set(ids[1:])
    assert api.client.list_requests(model_id="another-model").items == []
    answer = api.http.get(
        "/v1/deletion-requests", params={"received_after": "2999-01-01T00:00:00"}, headers=api.client.headers
    )
    assert answer.json()["items"] == []


def test_audit_events_page_in_order_and_filter(api, five_requests):
    model, ids = five_requests
    everything = api.client.audit_events()
    assert [e.seq for e in everything] == list(range(1, len(everything) + 1))
    first_page = api.http.get("/v1/audit/events", params={"limit": 3}, headers=api.client.headers).json()
    second_page = api.http.get(
        "/v1/audit/events", params={"limit": 3, "cursor": first_page["next_cursor"]}, headers=api.client.headers
    ).json()
    assert [e["seq"] for e in first_page["items"] + second_page["items"]] == [e.seq for e in everything[:6]]
    received = api.client.audit_events(action="deletion_request.received")
    assert [e.request_id for e in received] == ids and all("subject_hashes" in e.data for e in received)
    assert {e.model_id for e in api.client.audit_events(model_id=model.id)} == {model.id}
    later = everything[-1].occurred_at.isoformat()
    answer = api.http.get("/v1/audit/events", params={"since": later}, headers=api.client.headers).json()
    assert [e["seq"] for e in answer["items"]] == [everything[-1].seq]


def test_the_start_up_admin_key_is_registered_once(make_service):
    from ledger.db import Database
    from ledger.tables import ApiKey

    first = make_service()
    assert first.client.create_api_key("ops", ["read"])["scopes"] == ["read"]
    # A restart with the same LTU_ADMIN_API_KEY on the same ledger neither fails nor duplicates it.
    from fastapi.testclient import TestClient

    from api.app import create_app

    with TestClient(create_app(first.settings)) as http:
        assert http.get("/v1/api-keys", headers=first.client.headers).status_code == 200
    database = Database(first.settings.ledger.database_url)
    with database.session() as session:
        keys = session.query(ApiKey).all()
    database.dispose()
    assert sorted(k.name for k in keys) == ["bootstrap admin", "ops"]
    assert next(k for k in keys if k.name == "bootstrap admin").scopes == ["admin"]


def test_readiness_reports_an_unmigrated_or_missing_database(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from ltu_settings import Settings

    def settings(url: str) -> Settings:
        return Settings.build(home=tmp_path, database_url=url, artifacts_dir=tmp_path / "a", secret_key="s" * 40)

    with TestClient(create_app(settings(f"sqlite:///{tmp_path / 'empty.db'}"))) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        answer = http.get("/readyz")
        assert (
            answer.status_code == 503 and answer.json()["code"] == "schema_outdated" and answer.headers["Retry-After"]
        )
    with TestClient(create_app(settings(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"))) as http:
        answer = http.get("/readyz")
        assert answer.status_code == 503 and answer.json()["code"] == "database_unavailable"
        answer = http.get("/v1/models", headers={"Authorization": "Bearer ltu_whatever-key"})
        assert answer.status_code == 503 and answer.headers["Retry-After"]


def test_openapi_documents_every_route_and_its_problems(api):
    spec = api.http.get("/openapi.json").json()
    paths = spec["paths"]
    assert {
        "/v1/deletion-requests",
        "/v1/deletion-requests/{request_id}",
        "/v1/deletion-requests/{request_id}/cancel",
        "/v1/models/{model_id}/versions/{number}/weights",
        "/v1/audit/events",
        "/v1/datasets",
        "/readyz",
    } <= set(paths)
    create = paths["/v1/deletion-requests"]["post"]
    assert {"202", "401", "403", "404", "422"} <= set(create["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]

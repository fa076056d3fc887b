"""The audit reference-model endpoints: queued at registration, status, train on demand (idempotent), cancel;
scopes, tenants and problem+json errors."""

from __future__ import annotations

from tests.support import new_key, problem

RECIPE = {"epochs": 1, "batch_size": 32, "lr": 0.05}


def register(service, artifacts, *, recipe=RECIPE):
    dataset = service.client.register_dataset(artifacts.archive)
    return service.client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=recipe)


def test_registering_a_model_with_a_recipe_queues_its_reference_models(make_service, artifacts):
    api = make_service(audit_reference_models=4)  # the tests' default is 0
    model = register(api, artifacts)
    assert (model.audit_status, model.audit_tier) == ("queued", "rank")
    status = api.client.get_audit_references(model.id)
    latest = status.latest
    assert (status.audit_status, status.audit_tier, status.in_use) == ("queued", "rank", None)
    assert latest["count"] == api.settings.api.audit_reference_models == 4
    assert (latest["reason"], latest["status"], latest["progress"]) == (
        "registration",
        "queued",
        {"phase": None, "step": 0, "total": 0},
    )
    assert latest["trained_on_version"] is None and latest["sha256"] is None
    [event] = api.client.audit_events(model_id=model.id, action="audit_reference_set.queued")
    assert event.resource_id == latest["id"] and event.actor.startswith("key:")

    without = register(api, artifacts, recipe=None)
    assert (without.audit_status, without.audit_tier) == ("none", "rank")
    assert api.client.get_audit_references(without.id).latest is None
    listed = {m.id: (m.audit_status, m.audit_tier) for m in api.client.list_models()}
    assert listed == {model.id: ("queued", "rank"), without.id: ("none", "rank")}


def test_training_on_demand_is_idempotent_while_one_is_queued(make_service, artifacts):
    service = make_service(audit_reference_models=0)
    model = register(service, artifacts)
    assert service.client.get_model(model.id).audit_status == "none"  # 0: nothing at registration
    answer = service.http.post(f"/v1/models/{model.id}/audit-references", headers=service.client.headers)
    assert answer.status_code == 202 and answer.headers["Location"] == f"/v1/models/{model.id}/audit-references"
    assert answer.headers["Retry-After"] == "1"
    first = answer.json()["latest"]
    assert (first["count"], first["reason"], first["status"]) == (4, "on_demand", "queued")
    again = service.client.train_audit_references(model.id, count=8)  # one queued already: that one
    assert again.latest["id"] == first["id"] and again.latest["count"] == 4

    cancelled = service.client.cancel_audit_references(model.id)
    assert (cancelled.audit_status, cancelled.latest["id"]) == ("cancelled", first["id"])
    assert service.client.cancel_audit_references(model.id).audit_status == "cancelled"  # idempotent
    second = service.client.train_audit_references(model.id, count=6)
    assert second.latest["id"] != first["id"] and second.latest["count"] == 6
    assert service.client.get_model(model.id).audit_status == "queued"


def test_errors_are_problems(api, artifacts):
    model = register(api, artifacts)
    without = register(api, artifacts, recipe=None)
    http, admin = api.http, api.client.headers
    body = problem(http.post(f"/v1/models/{without.id}/audit-references", headers=admin), 409)
    assert body["code"] == "no_recipe" and "recipe" in body["detail"]
    body = problem(http.post(f"/v1/models/{without.id}/audit-references/cancel", headers=admin), 409)
    assert body["code"] == "conflict"
    for bad in ({"count": 3}, {"count": 0}, {"count": 66}, {"count": "four"}, {"count": 4, "extra": 1}, [4]):
        body = problem(http.post(f"/v1/models/{model.id}/audit-references", headers=admin, json=bad), 422)
        assert body["code"] == "validation_error"
    body = problem(
        http.post(
            f"/v1/models/{model.id}/audit-references",
            headers={**admin, "Content-Type": "application/json"},
            content=b"{not json",
        ),
        422,
    )
    for path in ("audit-references", "audit-references/cancel"):
        problem(http.post(f"/v1/models/no-such-model/{path}", headers=admin, json={}), 404)
    problem(http.get("/v1/models/no-such-model/audit-references", headers=admin), 404)


def test_scopes_and_tenants(make_service, artifacts):
    api = make_service(audit_reference_models=4)
    model = register(api, artifacts)
    http = api.http
    reader = {"Authorization": f"Bearer {new_key(api, scopes=['read'])}"}
    submitter = {"Authorization": f"Bearer {new_key(api, scopes=['submit', 'audit'])}"}
    assert http.get(f"/v1/models/{model.id}/audit-references", headers=reader).status_code == 200
    problem(http.get(f"/v1/models/{model.id}/audit-references", headers=submitter), 403)
    for path in ("audit-references", "audit-references/cancel"):
        for headers in (reader, submitter):
            assert problem(http.post(f"/v1/models/{model.id}/{path}", headers=headers), 403)["code"] == (
                "insufficient_scope"
            )
    problem(http.get(f"/v1/models/{model.id}/audit-references"), 401)

    # Another tenant, whatever its scopes, gets the same 404 as for a model that exists nowhere.
    other = {"Authorization": f"Bearer {new_key(api, scopes=['admin'], tenant='acme')}"}
    for method, path in (
        ("GET", "audit-references"),
        ("POST", "audit-references"),
        ("POST", "audit-references/cancel"),
    ):
        theirs = problem(http.request(method, f"/v1/models/{model.id}/{path}", headers=other), 404)
        assert theirs["code"] == "not_found"
    assert api.client.get_audit_references(model.id).audit_status == "queued"  # untouched

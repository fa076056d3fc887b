"""POST /v1/erasures erases a person from every model trained on them with one request; its status, the
combined signed certificate, replays, tenants' isolation; GET /v1/subjects/{id}/locations; the OpenAPI."""

from __future__ import annotations

import json

from tests.support import ltu, new_key, problem, setup_estate


def post(service, body, *, headers=None):
    return service.http.post("/v1/erasures", json=body, headers={**service.client.headers, **(headers or {})})


def get(service, path, **params):
    return service.http.get(path, params=params, headers=service.client.headers)


def test_one_erasure_removes_a_person_from_both_models_with_one_signed_certificate(api, artifacts, tmp_path, capsys):
    from ltu_client import load_public_key, verify_certificate
    from worker.runner import EmbeddedRunner

    estate = setup_estate(api, artifacts, tmp_path)
    subject = artifacts.subject_with_train_samples(0)
    where = f"/v1/subjects/{subject}/locations"
    before = get(api, where).json()
    assert [m["versions_holding"] for m in before["models"]] == [[1], [1]]

    answer = post(api, {"subject_ids": [subject, "nobody-at-all"], "parameters": api.tiny_ltu})
    assert answer.status_code == 202, answer.text
    erasure = answer.json()
    assert answer.headers["Location"] == f"/v1/erasures/{erasure['id']}" and answer.headers["Retry-After"] == "1"
    assert (erasure["status"], erasure["subject_count"], erasure["subjects_not_found"]) == ("received", 2, 1)
    assert sorted(r["model_id"] for r in erasure["requests"]) == sorted(estate.model_ids)
    due = {get(api, f"/v1/deletion-requests/{r['request_id']}").json()["due_at"] for r in erasure["requests"]}
    assert due == {erasure["due_at"]} and erasure["finished_at"] is None
    problem(get(api, f"/v1/erasures/{erasure['id']}/certificate"), 409)

    EmbeddedRunner(api.settings).run_pending()
    done = get(api, f"/v1/erasures/{erasure['id']}")
    assert done.status_code == 200 and "Retry-After" not in done.headers
    done = done.json()
    assert done["status"] == "completed" and done["finished_at"]
    assert [(r["status"], r["result_version"]) for r in done["requests"]] == [("completed", 2)] * 2
    assert [p["dataset_id"] for p in done["dataset_purge"]] == [estate.dataset_id]
    assert done["dataset_purge"][0]["samples"] == len(artifacts.samples_of(subject))
    from ledger.db import Database
    from worker.reconciler import close_erasures

    ended = [e for e in api.client.audit_events(action="erasure.completed") if e.resource_id == erasure["id"]]
    assert [e.data["status"] for e in ended] == ["completed"]  # recorded once, by the job that ended it
    database = Database(api.settings.ledger.database_url)
    try:
        assert close_erasures(database) == []  # the reconciler's pass finds nothing left to close
    finally:
        database.dispose()

    document = get(api, f"/v1/erasures/{erasure['id']}/certificate").content
    content = verify_certificate(document, load_public_key(json.dumps(api.client.certificate_key())))
    assert content["format"] == "ltu-subject-erasure-certificate/1"
    assert content["erasure"]["id"] == erasure["id"] and content["erasure"]["completed_on_time"] is True
    assert sorted(m["model"]["id"] for m in content["models"]) == sorted(estate.model_ids)
    assert all(m["model"]["new_version"]["number"] == 2 for m in content["models"])
    assert content["dataset_purge"][0]["dataset_id"] == estate.dataset_id
    assert subject not in document.decode()  # hashes only
    (tmp_path / "erasure.json").write_bytes(document)
    (tmp_path / "key.jwk").write_text(json.dumps(api.client.certificate_key()))
    assert ltu("certificate", "verify", str(tmp_path / "erasure.json"), "--public-key", str(tmp_path / "key.jwk")) == 0
    printed = capsys.readouterr().out
    assert f"valid: certificate of erasure {erasure['id']}" in printed and printed.count("  request ") == 2

    after = get(api, where).json()
    assert [(m["erased_in_version"], m["versions_holding"], m["current_version"]) for m in after["models"]] == [
        (2, [1], 2)
    ] * 2
    assert after["datasets"][0]["erased_samples"] > 0 and after["subject_hash"] == before["subject_hash"]
    listed = get(api, "/v1/erasures", status="completed").json()
    assert [e["id"] for e in listed["items"]] == [erasure["id"]] and listed["next_cursor"] is None
    assert get(api, "/v1/erasures", status="running").json()["items"] == []


def test_a_subject_found_nowhere_is_a_completed_erasure_with_no_request(api):
    answer = post(api, {"subject_ids": ["nobody"]})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["status"], body["subjects_not_found"], body["requests"]) == ("completed", 1, [])
    assert body["finished_at"] == body["received_at"]
    assert get(api, "/v1/subjects/nobody/locations").json()["models"] == []
    events = get(api, "/v1/audit/events").json()["items"]
    assert [e["data"]["subjects_not_found"] for e in events if e["action"] == "erasure.received"] == [1]


def test_restriction_replay_and_other_tenants(api, artifacts, tmp_path):
    estate = setup_estate(api, artifacts, tmp_path)
    subject = artifacts.subject_with_train_samples(1)
    body = {"subject_ids": [subject], "model_ids": [estate.model_ids[1]]}
    first = post(api, body, headers={"Idempotency-Key": "erase-1"})
    assert [r["model_id"] for r in first.json()["requests"]] == [estate.model_ids[1]]
    replay = post(api, body, headers={"Idempotency-Key": "erase-1"})
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    conflict = problem(post(api, {"subject_ids": [subject]}, headers={"Idempotency-Key": "erase-1"}), 422)
    assert conflict["code"] == "idempotency_key_reused"

    stranger = {"Authorization": f"Bearer {new_key(api, scopes=['admin'], tenant='acme')}"}
    missing = problem(post(api, {"subject_ids": [subject], "model_ids": estate.model_ids[:1]}, headers=stranger), 404)
    assert estate.model_ids[0] in missing["detail"]
    problem(post(api, {"subject_ids": [subject], "dataset_ids": [estate.dataset_id]}, headers=stranger), 404)
    problem(api.http.get(f"/v1/erasures/{first.json()['id']}", headers=stranger), 404)
    theirs = api.http.get(f"/v1/subjects/{subject}/locations", headers=stranger).json()
    assert (theirs["datasets"], theirs["models"]) == ([], [])
    # The POST form answers the same, with the id out of the URL; it validates its body like every route.
    mine = api.http.post("/v1/subjects/locations", json={"subject_id": subject}, headers=api.client.headers)
    assert mine.json() == get(api, f"/v1/subjects/{subject}/locations").json() and mine.json()["datasets"]
    for wrong in ({}, {"subject_id": ""}, {"subject_id": 7}, {"subject_id": "a", "extra": 1}):
        problem(api.http.post("/v1/subjects/locations", json=wrong, headers=api.client.headers), 422)
    # Only the audit scope may ask where a person is.
    reader = {"Authorization": f"Bearer {new_key(api, scopes=['read'])}"}
    problem(api.http.get(f"/v1/subjects/{subject}/locations", headers=reader), 403)
    for wrong in ({"subject_ids": []}, {"subject_ids": ["a", "a"]}, {"subject_ids": ["a"], "model_ids": []}):
        problem(post(api, wrong), 422)


def test_the_openapi_document_types_every_erasure_route(api):
    doc = api.http.get("/openapi.json").json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]

    def ref(answer: dict) -> str:
        return answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]

    assert ref(paths["/v1/erasures"]["post"]["responses"]["202"]) == "ErasureRead"
    assert paths["/v1/erasures"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErasureCreate"
    )
    assert ref(paths["/v1/erasures"]["get"]["responses"]["200"]) == "ErasurePage"
    assert ref(paths["/v1/erasures/{erasure_id}"]["get"]["responses"]["200"]) == "ErasureRead"
    assert ref(paths["/v1/subjects/{subject_id}/locations"]["get"]["responses"]["200"]) == "SubjectLocations"
    assert ref(paths["/v1/subjects/locations"]["post"]["responses"]["200"]) == "SubjectLocations"
    certificate = paths["/v1/erasures/{erasure_id}/certificate"]["get"]["responses"]
    assert {"200", "404", "409", "503"} <= set(certificate)
    erasure = schemas["ErasureRead"]["properties"]
    assert erasure["status"]["enum"] == ["received", "running", "completed", "failed", "cancelled"]
    assert erasure["requests"]["items"]["$ref"].endswith("/ErasureRequestRead")
    assert erasure["dataset_purge"]["items"]["$ref"].endswith("/DatasetPurgeRead")
    assert schemas["SubjectLocations"]["properties"]["models"]["items"]["$ref"].endswith("/ModelLocationRead")

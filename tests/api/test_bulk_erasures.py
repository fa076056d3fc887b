"""POST /v1/erasures/bulk: JSON or NDJSON, one coalesced request per model carrying all its subjects, replays,
limits and the edge's rules; GET /v1/erasures/{id}/subjects exports each subject's outcome; the OpenAPI."""

from __future__ import annotations

import csv
import io
import json

from tests.support import problem, setup_estate

NDJSON = {"Content-Type": "application/x-ndjson"}


def post_json(service, body, *, headers=None):
    return service.http.post("/v1/erasures/bulk", json=body, headers={**service.client.headers, **(headers or {})})


def post_ndjson(service, lines, *, headers=None, params=None):
    body = "".join(line + "\n" for line in lines).encode()
    return service.http.post(
        "/v1/erasures/bulk",
        content=body,
        params=params,
        headers={**service.client.headers, **NDJSON, **(headers or {})},
    )


def get(service, path, **params):
    return service.http.get(path, params=params, headers=service.client.headers)


def export(service, erasure_id, fmt="ndjson"):
    answer = get(service, f"/v1/erasures/{erasure_id}/subjects", format=fmt)
    assert answer.status_code == 200, answer.text
    return answer


def test_a_bulk_erasure_makes_one_request_per_model_and_exports_every_subject(api, artifacts, tmp_path):
    from worker.runner import EmbeddedRunner

    estate = setup_estate(api, artifacts, tmp_path)
    subjects = [artifacts.subject_with_train_samples(i) for i in range(3)]
    body = {"subject_ids": [*subjects, "nobody-1", subjects[0], "nobody-2"], "parameters": api.tiny_ltu}
    answer = post_json(api, body)
    assert answer.status_code == 202, answer.text
    erasure = answer.json()
    assert answer.headers["Location"] == f"/v1/erasures/{erasure['id']}"
    assert (erasure["status"], erasure["subject_count"], erasure["subjects_not_found"]) == ("received", 5, 2)
    assert sorted(r["model_id"] for r in erasure["requests"]) == sorted(estate.model_ids)  # not the third model
    for r in erasure["requests"]:
        request = get(api, f"/v1/deletion-requests/{r['request_id']}").json()
        assert request["num_targets"] == 3  # every subject of the model in one request: one coalesced run
        named = get(api, f"/v1/deletion-requests/{r['request_id']}/samples", limit=200).json()["items"]
        assert {s["sample_id"] for s in named} == set().union(*(artifacts.samples_of(s) for s in subjects))
    received = [e for e in api.client.audit_events(action="erasure.received") if e.resource_id == erasure["id"]]
    assert received[0].data["subject_count"] == 5 and "subject_hashes" not in received[0].data

    lines = [json.loads(line) for line in export(api, erasure["id"]).text.splitlines()]
    assert [line["found"] for line in lines] == [True, True, True, False, False]
    assert all(line["models"] == [] for line in lines[3:])
    assert {m["model_id"] for m in lines[0]["models"]} == set(estate.model_ids)
    assert {m["status"] for line in lines for m in line["models"]} == {"received"}

    EmbeddedRunner(api.settings).run_pending()
    done = get(api, f"/v1/erasures/{erasure['id']}").json()
    assert done["status"] == "completed"
    assert [(r["status"], r["result_version"]) for r in done["requests"]] == [("completed", 2)] * 2  # one version each
    lines = [json.loads(line) for line in export(api, erasure["id"]).text.splitlines()]
    assert {(m["status"], m["erased_in_version"]) for line in lines[:3] for m in line["models"]} == {("completed", 2)}
    rows = list(csv.DictReader(io.StringIO(export(api, erasure["id"], "csv").text)))
    assert len(rows) == 3 * 2 + 2  # a row per subject and model; one per subject found nowhere
    assert [r["subject_hash"] for r in rows[-2:]] == [lines[3]["subject_hash"], lines[4]["subject_hash"]]
    assert {(r["found"], r["model_id"], r["erased_in_version"]) for r in rows[-2:]} == {("false", "", "")}
    assert {r["erased_in_version"] for r in rows[:6]} == {"2"}


def test_ndjson_is_the_same_erasure_and_replays_with_its_key(api, artifacts, tmp_path):
    estate = setup_estate(api, artifacts, tmp_path)
    subject = artifacts.subject_with_train_samples(0)
    key = {"Idempotency-Key": "bulk-1"}
    first = post_ndjson(
        api,
        [json.dumps(subject), json.dumps({"subject_id": "nobody"}), ""],
        headers=key,
        params={"model_ids": estate.model_ids[0]},
    )
    assert first.status_code == 202, first.text
    assert [r["model_id"] for r in first.json()["requests"]] == [estate.model_ids[0]]
    again = post_json(
        api, {"subject_ids": [subject, "nobody", subject], "model_ids": [estate.model_ids[0]]}, headers=key
    )
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert problem(post_json(api, {"subject_ids": [subject]}, headers=key), 422)["code"] == "idempotency_key_reused"


def test_bulk_limits_and_the_edges_rules(api, make_service):
    small = make_service(max_bulk_bytes=4096)
    too_big = post_ndjson(small, [json.dumps(f"subject-{i}") for i in range(1000)])
    assert problem(too_big, 413)["code"] == "payload_too_large"
    assert post_ndjson(small, ['"nobody"']).status_code == 202  # the default body limit is not the bulk one
    too_many = post_json(api, {"subject_ids": [f"s{i}" for i in range(100_001)]})
    assert problem(too_many, 422)["code"] == "validation_error"
    assert problem(post_ndjson(api, ['"ok"', '"a\\u0000b"']), 422)["code"] == "nul_character"
    assert problem(post_ndjson(api, ['"\\ud800"']), 422)["code"] == "lone_surrogate"
    assert problem(post_ndjson(api, ["[1]"]), 422)["code"] == "validation_error"
    assert problem(post_ndjson(api, ["{not json"]), 422)["code"] == "validation_error"
    assert problem(post_json(api, {"subject_ids": ["a\u0000"]}), 422)["code"] == "nul_character"
    assert problem(post_ndjson(api, []), 422)["code"] == "validation_error"  # no subject at all
    wrong = api.http.post(
        "/v1/erasures/bulk", content=b"a", headers={**api.client.headers, "Content-Type": "text/plain"}
    )
    assert problem(wrong, 415)["code"] == "unsupported_media_type"


def test_the_export_of_another_tenants_erasure_is_404(api):
    problem(get(api, "/v1/erasures/nope/subjects"), 404)


def test_openapi_types_the_bulk_body_and_the_export(api):
    document = api.http.get("/openapi.json").json()
    bulk = document["paths"]["/v1/erasures/bulk"]["post"]
    content = bulk["requestBody"]["content"]
    assert content["application/json"]["schema"]["properties"]["subject_ids"]["maxItems"] == 100_000
    assert "oneOf" in content["application/x-ndjson"]["schema"]
    assert bulk["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErasureRead")
    subjects = document["paths"]["/v1/erasures/{erasure_id}/subjects"]["get"]["responses"]["200"]["content"]
    assert subjects["application/x-ndjson"]["schema"]["$ref"].endswith("/ErasureSubjectRead")
    assert "text/csv" in subjects
    line = document["components"]["schemas"]["ErasureSubjectRead"]
    assert set(line["properties"]) == {"subject_hash", "found", "models"}


def test_a_bulk_erasure_on_postgres_names_the_same_samples(make_service, fresh_postgres_url, artifacts, tmp_path):
    import secrets

    service = make_service(database_url=fresh_postgres_url, secret_key=secrets.token_urlsafe(48))
    estate = setup_estate(service, artifacts, tmp_path)
    subjects = [artifacts.subject_with_train_samples(i) for i in range(2)]
    answer = post_ndjson(service, [json.dumps(s) for s in [*subjects, "nobody"]])
    assert answer.status_code == 202, answer.text
    erasure = answer.json()
    assert sorted(r["model_id"] for r in erasure["requests"]) == sorted(estate.model_ids)
    assert erasure["dataset_purge"][0]["samples"] == sum(len(artifacts.samples_of(s)) for s in subjects)
    for r in erasure["requests"]:
        named = get(service, f"/v1/deletion-requests/{r['request_id']}/samples", limit=200).json()["items"]
        assert {s["sample_id"] for s in named} == set().union(*(artifacts.samples_of(s) for s in subjects))
    lines = [json.loads(line) for line in export(service, erasure["id"]).text.splitlines()]
    assert [(line["found"], len(line["models"])) for line in lines] == [(True, 2), (True, 2), (False, 0)]

"""Bad input never gives a 500: each case answers the documented status as problem+json."""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import uuid

import pytest

from ltu_client import ApiError
from tests.support import new_key, problem


@pytest.fixture()
def registered(api, artifacts):
    """(dataset, model) registered in the API-only service."""
    dataset = api.client.register_dataset(artifacts.archive)
    model = api.client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=artifacts.recipe)
    return dataset, model


def post_request(api, body, key=None, **headers):
    auth = {"Authorization": f"Bearer {key or api.client.headers['Authorization'].split()[1]}"}
    return api.http.post("/v1/deletion-requests", json=body, headers={**auth, **headers})


# --- deletion requests --------------------------------------------------------------------------


def test_unknown_model_is_404(api, registered):
    body = problem(post_request(api, {"model_id": str(uuid.uuid4()), "subject_ids": ["someone"]}), 404)
    assert "model" in body["detail"]


def test_unknown_subject_is_404_without_echoing_it(api, registered, artifacts):
    _, model = registered
    known = artifacts.subject_with_train_samples()
    body = problem(post_request(api, {"model_id": model.id, "subject_ids": [known, "no-such-person@example.com"]}), 404)
    assert "subject_ids[1]" in body["detail"] and "example.com" not in json.dumps(body)


def test_empty_subject_list_is_422(api, registered):
    _, model = registered
    body = problem(post_request(api, {"model_id": model.id, "subject_ids": []}), 422)
    assert body["errors"] and body["errors"][0]["loc"][-1] == "subject_ids"


def test_subject_without_training_samples_is_a_clear_422(api, registered, artifacts):
    _, model = registered
    body = problem(
        post_request(api, {"model_id": model.id, "subject_ids": [artifacts.subject_without_train_samples()]}), 422
    )
    assert "no training samples" in body["detail"]


def test_malformed_json_is_422(api, registered):
    auth = api.client.headers
    response = api.http.post(
        "/v1/deletion-requests",
        content=b'{"model_id": "x", "subject_ids": [',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert "not valid JSON" in problem(response, 422)["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"subject_ids": ["a"]},  # no model
        {"model_id": "m", "subject_ids": ["a"], "sample_ids": ["b"]},  # both targets
        {"model_id": "m"},  # no target
        {"model_id": "m", "subject_ids": ["a", "a"]},  # duplicates
        {"model_id": "m", "subject_ids": [""]},  # empty id
        {"model_id": "m", "subject_ids": ["a"], "colour": "red"},  # unknown field
        {"model_id": "m", "subject_ids": ["a"], "method": "Not A Name"},
        {"model_id": "m", "subject_ids": "a"},  # not a list
        [1, 2, 3],  # not an object
    ],
)
def test_invalid_bodies_are_422(api, body):
    problem(post_request(api, body), 422)


def test_sample_targets_unknown_404_and_non_train_422(api, registered, artifacts):
    _, model = registered
    ds = artifacts.dataset
    problem(post_request(api, {"model_id": model.id, "sample_ids": ["nope"]}), 404)
    test_sample = str(ds.sample_ids[ds.split_indices("test")[0]])
    assert (
        "training samples"
        in problem(post_request(api, {"model_id": model.id, "sample_ids": [test_sample]}), 422)["detail"]
    )
    train_sample = str(ds.sample_ids[ds.split_indices("train")[0]])
    assert post_request(api, {"model_id": model.id, "sample_ids": [train_sample]}).status_code == 202


def test_invalid_cursor_and_limit_are_422(api):
    auth = api.client.headers
    problem(api.http.get("/v1/deletion-requests", params={"cursor": "garbage!"}, headers=auth), 422)
    problem(api.http.get("/v1/deletion-requests", params={"limit": 0}, headers=auth), 422)
    problem(api.http.get("/v1/audit/events", params={"cursor": "WzFd"[:-1] + "x"}, headers=auth), 422)


def test_unknown_route_is_problem_404(api):
    problem(api.http.get("/v1/nothing-here"), 404)


# --- authentication, scopes, tenants ------------------------------------------------------------


def test_missing_or_wrong_api_key_is_401(api, registered):
    response = api.http.get("/v1/models")
    assert problem(response, 401)["code"] == "missing_api_key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = api.http.get("/v1/models", headers={"Authorization": "Bearer ltu_not-a-key"})
    assert problem(response, 401)["code"] == "invalid_api_key"
    assert problem(api.http.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)


def test_revoked_key_is_401(api):
    created = api.client.create_api_key("temp", ["read"])
    assert api.client_for(created["key"]).list_models() == []
    api.http.delete(f"/v1/api-keys/{created['id']}", headers=api.client.headers).raise_for_status()
    with pytest.raises(ApiError) as err:
        api.client_for(created["key"]).list_models()
    assert err.value.status == 401


def test_no_part_of_a_key_secret_is_kept_in_listings_or_the_audit_chain(api):
    created = api.client.create_api_key("fingerprinted", ["read"])
    secret = created["key"].removeprefix("ltu_")
    listed = api.http.get("/v1/api-keys", headers=api.client.headers).text
    exported = api.http.get("/v1/audit/events", params={"format": "ndjson"}, headers=api.client.headers).text
    for text in (listed, exported):
        assert not any(secret[i : i + 6] in text for i in range(len(secret) - 5))


def test_wrong_scope_is_403(api, registered, artifacts):
    _, model = registered
    reader = api.client_for(api.client.create_api_key("reader", ["read"])["key"])
    submitter = api.client_for(api.client.create_api_key("submitter", ["submit"])["key"])
    subject = artifacts.subject_with_train_samples()
    with pytest.raises(ApiError) as err:
        reader.submit_deletion(model.id, subject_ids=[subject])
    assert err.value.status == 403 and err.value.code == "insufficient_scope"
    for call in (
        lambda: submitter.audit_events(),
        lambda: submitter.list_models(),
        lambda: reader.create_api_key("x", ["admin"]),
        lambda: reader.register_dataset(artifacts.archive),
    ):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == 403
    # A submitter may poll what it submitted.
    request = submitter.submit_deletion(model.id, subject_ids=[subject])
    assert submitter.get_request(request.id).status in ("received", "queued")


def test_other_tenants_resources_are_404(api, registered, artifacts):
    dataset, model = registered
    request = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples()])
    other = api.client_for(new_key(api, scopes=["admin"], tenant="acme"))
    for call in (
        lambda: other.get_model(model.id),
        lambda: other.get_dataset(dataset.id),
        lambda: other.list_versions(model.id),
        lambda: other.get_version(model.id, 1),
        lambda: other.get_request(request.id),
        lambda: other.cancel_request(request.id),
        lambda: other.request_samples(request.id),
        lambda: other.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples()]),
        lambda: other.register_model(artifacts.weights, dataset_id=dataset.id),
    ):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == 404
    weights = api.http.get(f"/v1/models/{model.id}/versions/1/weights", headers=other.headers)
    problem(weights, 404)
    assert other.list_models() == [] and other.list_requests().items == []
    assert other.audit_events(request_id=request.id) == []
    assert all(e.action in ("tenant.created", "api_key.created") for e in other.audit_events())


# --- uploads ------------------------------------------------------------------------------------


def upload_model(api, dataset_id: str, payload: bytes, key=None, **fields: str):
    headers = {"Authorization": f"Bearer {key}"} if key else api.client.headers
    return api.http.post(
        "/v1/models",
        data={"dataset_id": dataset_id, **fields},
        headers=headers,
        files={"weights": ("w.safetensors", payload, "application/octet-stream")},
    )


def test_pickled_or_random_weights_are_415(api, registered):
    dataset, _ = registered
    assert (
        problem(upload_model(api, dataset.id, pickle.dumps({"weight": [1.0, 2.0]})), 415)["code"]
        == "unsupported_media_type"
    )
    problem(upload_model(api, dataset.id, b"\x00" * 64), 415)
    problem(upload_model(api, dataset.id, struct.pack("<Q", 10) + b'{"a":1}   '), 415)


def test_foreign_safetensors_and_wrong_architecture_are_422(api, registered, tmp_path, tiny_arch, trained):
    import torch
    from safetensors.torch import save_file

    from ltu_core.models import ArchConfig, build_model, save_model

    dataset, _ = registered
    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    body = problem(upload_model(api, dataset.id, (tmp_path / "plain.safetensors").read_bytes()), 422)
    assert "architecture header" in body["detail"]
    wrong = ArchConfig("resnet18", num_classes=7, in_chans=1, img_size=8, width=0.125)
    save_model(build_model(wrong), wrong, tmp_path / "wrong.safetensors")
    body = problem(upload_model(api, dataset.id, (tmp_path / "wrong.safetensors").read_bytes()), 422)
    assert "num_classes 7" in body["detail"]


def test_uploads_over_the_limit_are_413(make_service, artifacts):
    small = make_service(max_weights_bytes=4096, max_dataset_bytes=4096)
    dataset = small.client.register_dataset(artifacts.archive) if artifacts.archive.stat().st_size <= 4096 else None
    assert dataset is None  # the archive itself is over the limit
    response = small.http.post(
        "/v1/datasets",
        headers=small.client.headers,
        files={"archive": ("d.tar", artifacts.archive.read_bytes(), "application/x-tar")},
    )
    assert problem(response, 413)["code"] == "payload_too_large"

    # Bodies within the declared slack but over the file limit are measured while saved.
    roomy = make_service(max_weights_bytes=4096)
    dataset = roomy.client.register_dataset(artifacts.archive)
    problem(upload_model(roomy, dataset.id, b"\x00" * 8192), 413)

    # A streamed body without Content-Length is counted as it arrives.
    def chunks():
        for _ in range(4096):
            yield b"x" * 1024

    response = small.http.post(
        "/v1/datasets",
        content=chunks(),
        headers={**small.client.headers, "Content-Type": "multipart/form-data; boundary=zz"},
    )
    problem(response, 413)


def test_unknown_dataset_for_model_is_404(api):
    problem(upload_model(api, str(uuid.uuid4()), b"x"), 404)


def test_bad_dataset_archives(api, artifacts, tmp_path):
    def upload(payload: bytes):
        return api.http.post(
            "/v1/datasets", headers=api.client.headers, files={"archive": ("d.tar", payload, "application/x-tar")}
        )

    problem(upload(b"this is not a tar archive" * 40), 415)
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w") as tar, tarfile.open(artifacts.archive) as src:
        for member in src.getmembers():
            tar.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo("../evil.sh")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"boom"))
    assert problem(upload(extra.getvalue()), 422)["code"] == "unsafe_archive_member"
    assert not (api.settings.ledger.artifacts_dir.parent / "evil.sh").exists()
    truncated = io.BytesIO()
    with tarfile.open(fileobj=truncated, mode="w") as tar, tarfile.open(artifacts.archive) as src:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "images.u8":
                data = data[:-10]
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    assert "images.u8" in problem(upload(truncated.getvalue()), 422)["detail"]
    assert api.client.list_models() == []


# --- the edge (api/edge.py): the same 422 whatever the ledger ---------------------------------------


def post_raw(api, path: str, text: str):
    return api.http.post(
        path, content=text.encode(), headers={**api.client.headers, "Content-Type": "application/json"}
    )


def nested(depth: int) -> str:
    """JSON `parameters` that make the body `depth` levels deep (the body itself is level 1)."""
    return '{"a": ' + "[" * (depth - 2) + "]" * (depth - 2) + "}"


@pytest.mark.parametrize(
    ("parameters", "code", "loc"),
    [
        ('{"lr": 1e400}', "non_finite_number", ["body", "parameters", "lr"]),
        ('{"lr": NaN}', "non_finite_number", ["body", "parameters", "lr"]),
        ('{"lr": [Infinity]}', "non_finite_number", ["body", "parameters", "lr", 0]),
        ('{"seed": 9007199254740993}', "integer_out_of_range", ["body", "parameters", "seed"]),
        ('{"x": "\\udfff"}', "lone_surrogate", ["body", "parameters", "x"]),
        ('{"\\ud800": 1}', "lone_surrogate", ["body", "parameters"]),
        ('{"x": "a\\u0000"}', "nul_character", ["body", "parameters", "x"]),
        (nested(33), "nesting_too_deep", ["body", "parameters", "a", *[0] * 30]),
        (nested(5000), "nesting_too_deep", ["body"]),
    ],
)
def test_the_edge_refuses_what_a_ledger_could_not_store_or_sign(api, registered, parameters, code, loc):
    _, model = registered
    text = f'{{"model_id": "{model.id}", "subject_ids": ["someone"], "parameters": {parameters}}}'
    body = problem(post_raw(api, "/v1/deletion-requests", text), 422)
    assert body["code"] == code and body["errors"][0]["loc"] == loc


def test_the_edge_admits_its_limits_and_real_text(api, registered):
    _, model = registered
    # 32 levels, ±2^53, a surrogate pair (one character, not a lone half): all pass the edge, to the ledger's 404.
    for parameters in (nested(32), '{"seed": -9007199254740992}', '{"x": "\\ud83d\\ude00"}'):
        text = f'{{"model_id": "{model.id}", "subject_ids": ["someone"], "parameters": {parameters}}}'
        assert problem(post_raw(api, "/v1/deletion-requests", text), 404)["code"] == "not_found"


def test_nul_in_a_query_path_or_form_field_is_refused(api, registered, artifacts):
    dataset, _ = registered
    auth = api.client.headers
    for path in ("/v1/deletion-requests?model_id=%00", "/v1/models/a%00b", "/v1/audit/summary?model_id=%00"):
        assert problem(api.http.get(path, headers=auth), 422)["code"] == "nul_character", path
    response = upload_model(api, dataset.id, artifacts.weights.read_bytes(), name="a\x00b")
    body = problem(response, 422)
    assert body["code"] == "nul_character" and body["errors"][0]["loc"] == ["body", "name"]


def test_types_are_strict_and_an_empty_model_name_is_refused(api, registered, artifacts):
    dataset, model = registered
    request = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples()])
    for months in ("true", '"1"', "1.0"):
        response = post_raw(
            api, f"/v1/deletion-requests/{request.id}/deadline-extension", f'{{"months": {months}, "reason": "r"}}'
        )
        assert problem(response, 422)["errors"][0]["loc"] == ["body", "months"]
    assert problem(post_raw(api, f"/v1/models/{model.id}/audit-references", '{"count": "4"}'), 422)
    assert (
        problem(upload_model(api, dataset.id, artifacts.weights.read_bytes(), name=""), 422)["code"]
        == "validation_error"
    )
    response = api.http.post(
        "/v1/models",
        data={"dataset_id": dataset.id, "recipe": '{"lr": 1e400}'},
        headers=api.client.headers,
        files={"weights": ("w.safetensors", artifacts.weights.read_bytes(), "application/octet-stream")},
    )
    assert problem(response, 422)["code"] == "non_finite_number"


def test_weights_range_errors_are_problems(api, registered):
    _, model = registered
    url = f"/v1/models/{model.id}/versions/1/weights"
    size = len(api.http.get(url, headers=api.client.headers).content)
    response = api.http.get(url, headers={**api.client.headers, "Range": "bytes=999999999-"})
    assert problem(response, 416)["code"] == "range_not_satisfiable"
    assert response.headers["Content-Range"] == f"bytes */{size}"
    assert (
        problem(api.http.get(url, headers={**api.client.headers, "Range": "bytes=abc"}), 400)["code"] == "invalid_range"
    )
    partial = api.http.get(url, headers={**api.client.headers, "Range": "bytes=0-7"})
    assert partial.status_code == 206 and len(partial.content) == 8


def test_an_erased_subject_or_sample_again_is_already_erased(completed, artifacts):
    api, model = completed.service, completed.model
    sample = next(s.sample_id for s in api.client.request_samples(completed.request.id) if s.split == "train")
    for target in ({"subject_ids": [artifacts.subject_with_train_samples()]}, {"sample_ids": [sample]}):
        assert problem(post_request(api, {"model_id": model.id, **target}), 422)["code"] == "already_erased"


def test_the_summary_of_an_unknown_or_foreign_model_is_404(api, registered):
    _, model = registered
    assert problem(api.http.get("/v1/audit/summary", params={"model_id": "nope"}, headers=api.client.headers), 404)
    foreign = {"Authorization": f"Bearer {new_key(api, scopes=['audit'], tenant='acme')}"}
    assert problem(api.http.get("/v1/audit/summary", params={"model_id": model.id}, headers=foreign), 404)
    assert (
        api.http.get("/v1/audit/summary", params={"model_id": model.id}, headers=api.client.headers).status_code == 200
    )

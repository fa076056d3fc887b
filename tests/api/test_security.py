"""Security checks: every route needs a live key (but the few public ones), tenants see only their own
resources (404, never 403 or data), scopes are enforced on every route (403), request bodies are
size-limited before they are read, submissions are rate-limited per key through the ledger, and no
secret, API key or raw subject id reaches any log record."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts

from ledger import ratelimit
from ledger.tables import utcnow
from tests.support import new_key, problem

REPO = Path(__file__).resolve().parents[2]
PROBLEM = "application/problem+json"
SOMEONE = str(uuid.uuid4())  # an id that exists nowhere

# Routes anyone may call, and why.
PUBLIC = {
    # Probes for load balancers and orchestrators, which carry no key; they say up/ready and at most the
    # database dialect, schema revision and runner kind, no tenant data.
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    # The public key that verifies certificates offline: public by design (a JWK, RFC 8037).
    ("GET", "/.well-known/ltu-certificate-key"),
    # The API's own description, which clients and fuzzers read (SERVICE.md); it holds no data.
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    # The dashboard's sign-in form, its check of the key typed in, and sign-out (which only clears the cookie).
    ("GET", "/dashboard/login"),
    ("POST", "/dashboard/login"),
    ("POST", "/dashboard/logout"),
}
# Browser pages: without any credentials they send the browser to the sign-in form (303); a Bearer key
# that is wrong is a 401 like everywhere else.
PAGES = {
    ("GET", "/dashboard"),
    ("GET", "/dashboard/requests/{request_id}"),
    ("GET", "/dashboard/requests/{request_id}/certificate"),
}
# The scopes each protected route admits besides admin (admin keys are admitted everywhere).
SCOPES = {
    ("POST", "/v1/datasets"): set(),
    ("GET", "/v1/datasets"): {"read"},
    ("GET", "/v1/datasets/{dataset_id}"): {"read"},
    ("POST", "/v1/models"): set(),
    ("GET", "/v1/models"): {"read"},
    ("GET", "/v1/models/{model_id}"): {"read"},
    ("GET", "/v1/models/{model_id}/audit-references"): {"read"},
    ("POST", "/v1/models/{model_id}/audit-references"): set(),
    ("POST", "/v1/models/{model_id}/audit-references/cancel"): set(),
    ("GET", "/v1/models/{model_id}/versions"): {"read"},
    ("GET", "/v1/models/{model_id}/versions/{number}"): {"read"},
    ("GET", "/v1/models/{model_id}/versions/{number}/weights"): {"read"},
    ("POST", "/v1/deletion-requests"): {"submit"},
    ("GET", "/v1/deletion-requests"): {"read", "submit"},
    ("GET", "/v1/deletion-requests/{request_id}"): {"read", "submit"},
    ("POST", "/v1/deletion-requests/{request_id}/cancel"): {"submit"},
    ("GET", "/v1/deletion-requests/{request_id}/samples"): {"read", "submit"},
    ("POST", "/v1/deletion-requests/{request_id}/deadline-extension"): {"submit"},
    ("GET", "/v1/deletion-requests/{request_id}/certificate"): {"read", "submit", "audit"},
    ("POST", "/v1/erasures"): {"submit"},
    ("GET", "/v1/erasures"): {"read", "submit"},
    ("GET", "/v1/erasures/{erasure_id}"): {"read", "submit"},
    ("POST", "/v1/erasures/bulk"): {"submit"},
    ("GET", "/v1/erasures/{erasure_id}/certificate"): {"read", "submit", "audit"},
    ("GET", "/v1/erasures/{erasure_id}/subjects"): {"read", "submit"},
    ("POST", "/v1/subjects/locations"): {"audit"},
    ("GET", "/v1/subjects/{subject_id}/locations"): {"audit"},
    ("GET", "/v1/audit/events"): {"audit"},
    ("GET", "/v1/audit/verify"): {"audit"},
    ("GET", "/v1/audit/summary"): {"audit"},
    ("GET", "/v1/tenant"): set(),
    ("PATCH", "/v1/tenant"): set(),
    ("POST", "/v1/api-keys"): set(),
    ("GET", "/v1/api-keys"): set(),
    ("DELETE", "/v1/api-keys/{key_id}"): set(),
    ("POST", "/v1/webhooks"): set(),
    ("GET", "/v1/webhooks"): set(),
    ("GET", "/v1/webhooks/{webhook_id}"): set(),
    ("DELETE", "/v1/webhooks/{webhook_id}"): set(),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"): set(),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"): set(),
    ("GET", "/dashboard"): {"audit"},
    ("GET", "/dashboard/requests/{request_id}"): {"audit"},
    ("GET", "/dashboard/requests/{request_id}/certificate"): {"audit"},
    ("GET", "/metrics"): {"audit"},  # and only keys of the operator tenant
}


def app_routes(app) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves, HEAD aside.

    FastAPI no longer copies included routers' routes into app.routes; iter_route_contexts walks them.
    """
    return {
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        for method in route.methods or ()
        if method != "HEAD"
    }


def concrete(path: str, **ids: str) -> str:
    """A path template with its parameters filled (unknown ids by default)."""
    values = {
        "dataset_id": SOMEONE,
        "model_id": SOMEONE,
        "request_id": SOMEONE,
        "erasure_id": SOMEONE,
        "subject_id": SOMEONE,
        "key_id": SOMEONE,
        "webhook_id": SOMEONE,
        "delivery_id": SOMEONE,
        "number": "1",
        **ids,
    }
    return path.format(**values)


def masked(problem_body: dict, *ids: str) -> tuple[str, str, str]:
    """A problem's code, title and detail with the given ids masked (the detail names the id asked for)."""
    detail = problem_body["detail"]
    for value in ids:
        detail = detail.replace(value, "<id>")
    return problem_body["code"], problem_body["title"], detail


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_route_tables_cover_every_route(api):
    served = app_routes(api.app)
    documented = {(m.upper(), p) for p, ops in api.http.get("/openapi.json").json()["paths"].items() for m in ops}
    assert documented <= served and len(served) >= 30  # the enumeration sees what the OpenAPI document lists
    assert served == PUBLIC | set(SCOPES), "a route was added or removed: classify it in PUBLIC or SCOPES"
    assert set(SCOPES) >= PAGES


def test_the_openapi_document_defines_what_it_refers_to_and_lists_the_dashboard(api):
    doc = api.http.get("/openapi.json").json()
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(schemas), sorted(refs - set(schemas))
    # A schema named in prose (a JSON form field's description) is defined: a component, or a schema's title.
    named = set(
        re.findall(r"\b[A-Z][A-Za-z]*(?:Create|Read|Page)\b", " ".join(re.findall(r'"description": "([^"]*)"', text)))
    )
    titles = set(re.findall(r'"title": "([^"]+)"', text))
    assert "TrainRecipeCreate" in named and named <= set(schemas) | titles, sorted(named - set(schemas) - titles)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    dashboard = {(m, p) for m, p in PUBLIC | set(SCOPES) if p.startswith("/dashboard")}
    assert len(dashboard) == 6 and dashboard <= documented
    for method, path in PAGES:
        answers = doc["paths"][path][method.lower()]["responses"]
        assert {"200", "303", "401", "403", "404"} <= set(answers), path


def test_the_upload_operations_and_the_readme_state_the_upload_limits(api):
    from ltu_settings import ApiSettings

    doc = api.http.get("/openapi.json").json()
    readme = (REPO / "README.md").read_text()
    for path, field in (("/v1/datasets", "max_dataset_bytes"), ("/v1/models", "max_weights_bytes")):
        statement = f"LTU_{field.upper()}` (default {ApiSettings.model_fields[field].default >> 30} GiB)"
        assert statement.replace("`", "") in doc["paths"][path]["post"]["description"], path
        assert f"`POST {path}`" in readme and f"`{statement}" in readme, path


def test_every_non_public_route_answers_401_without_a_live_key(api):
    revoked = api.client.create_api_key("soon revoked", ["admin"])
    api.http.delete(f"/v1/api-keys/{revoked['id']}", headers=api.client.headers).raise_for_status()
    for method, path in sorted(set(SCOPES)):
        url = concrete(path)
        for headers in (
            {},
            bearer("ltu_garbage-key-0123456789abcdef"),
            bearer(revoked["key"]),
            {"Authorization": "Basic dXNlcjpwYXNz"},
            bearer(""),
        ):
            answer = api.http.request(method, url, headers=headers, follow_redirects=False)
            if (method, path) in PAGES and not headers.get("Authorization", "").startswith("Bearer ltu_"):
                assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login", (method, path)
                continue
            body = problem(answer, 401)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
            assert body["code"] in ("missing_api_key", "invalid_api_key"), (method, path, headers)


def test_public_routes_answer_without_a_key(api):
    for method, path in sorted(PUBLIC):
        answer = api.http.request(method, path, follow_redirects=False)
        assert answer.status_code in (200, 303, 422), (
            method,
            path,
            answer.status_code,
        )  # 422: the login form's empty POST


@pytest.fixture()
def tenant_a(completed, artifacts):
    """The default tenant's completed request and everything around it (a completed erasure, a subject), plus a
    non-admin key id of its own."""
    service = completed.service
    client = service.client
    request = completed.request
    dataset_id = completed.model.dataset_id
    key = client.create_api_key("a reader", ["read"])
    erasure = service.http.post("/v1/erasures", json={"subject_ids": ["nobody"]}, headers=client.headers).json()
    hook = {"url": "https://hooks.example.com/ltu", "event_types": ["deletion_request.cancelled"]}
    webhook = service.http.post("/v1/webhooks", json=hook, headers=client.headers).json()
    cancelled = client.submit_deletion(completed.model.id, subject_ids=[artifacts.subject_with_train_samples(1)])
    client.cancel_request(cancelled.id)  # an event, so the webhook has a delivery
    deliveries = service.http.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=client.headers).json()
    return service, {
        "dataset_id": dataset_id,
        "model_id": completed.model.id,
        "request_id": request.id,
        "erasure_id": erasure["id"],
        "subject_id": artifacts.subject_with_train_samples(),
        "key_id": key["id"],
        "webhook_id": webhook["id"],
        "delivery_id": deliveries["items"][0]["id"],
        "number": "2",
    }


def test_another_tenant_gets_404_for_every_resource_of_a_tenant(tenant_a, artifacts):
    service, ids = tenant_a
    http = service.http
    b_admin = bearer(new_key(service, scopes=["admin"], tenant="acme"))
    a_admin = service.client.headers
    for method, path in sorted(set(SCOPES)):
        if "{" not in path:
            continue
        url = concrete(path, **ids)
        body = {"months": 1, "reason": "complex request"} if path.endswith("deadline-extension") else None
        # Tenant A itself reaches each of these (the ids are real) ...
        own = http.request(method, url, headers=a_admin, json=body, follow_redirects=False)
        assert own.status_code != 404, (method, url, own.text)
        # ... tenant B, whatever its scopes, learns nothing: 404, the same answer as for an id that exists nowhere.
        if method == "DELETE":
            continue  # A's DELETE above revoked the key; B's attempt is checked below on a live key
        if path.startswith("/v1/subjects/"):
            continue  # a question, not a resource: B's answer is checked below
        theirs = problem(http.request(method, url, headers=b_admin, json=body), 404)
        nowhere = problem(http.request(method, concrete(path), headers=b_admin, json=body), 404)
        real = [ids[name] for name in ("dataset_id", "model_id", "request_id", "erasure_id", "key_id", "webhook_id")]
        assert masked(theirs, *real) == masked(nowhere, SOMEONE), (method, path)
    # Where is A's data subject? Nowhere B can see: the answer for a subject found nowhere.
    theirs = http.get(concrete("/v1/subjects/{subject_id}/locations", **ids), headers=b_admin).json()
    assert (theirs["datasets"], theirs["models"]) == ([], [])
    live_key = service.client.create_api_key("another reader", ["read"])
    problem(http.delete(f"/v1/api-keys/{live_key['id']}", headers=b_admin), 404)
    assert http.get("/v1/models", headers=bearer(live_key["key"])).status_code == 200  # B's attempt revoked nothing

    # Creating resources on top of A's: B can neither submit for A's model nor register a model on A's dataset.
    problem(
        http.post(
            "/v1/deletion-requests",
            headers=b_admin,
            json={"model_id": ids["model_id"], "subject_ids": [artifacts.subject_with_train_samples(1)]},
        ),
        404,
    )
    with open(artifacts.weights, "rb") as weights:
        problem(
            http.post(
                "/v1/models",
                headers=b_admin,
                data={"dataset_id": ids["dataset_id"]},
                files={"weights": ("w.safetensors", weights, "application/octet-stream")},
            ),
            404,
        )

    # Lists, exports, figures and pages of B show none of A's resources.
    leaks = [ids["dataset_id"], ids["model_id"], ids["request_id"], ids["erasure_id"], ids["key_id"]]
    for url, params in (
        ("/v1/datasets", {}),
        ("/v1/models", {}),
        ("/v1/deletion-requests", {}),
        ("/v1/erasures", {}),
        ("/v1/api-keys", {}),
        ("/v1/audit/events", {}),
        ("/v1/audit/events", {"request_id": ids["request_id"]}),
        ("/v1/audit/events", {"model_id": ids["model_id"], "format": "ndjson"}),
        ("/v1/audit/events", {"format": "csv"}),
        ("/v1/audit/summary", {}),
        ("/v1/audit/verify", {}),
        ("/dashboard", {}),
    ):
        answer = http.get(url, params=params, headers=b_admin)
        assert answer.status_code == 200, (url, answer.text)
        assert not [leak for leak in leaks if leak in answer.text], (url, params)
    assert http.get("/v1/audit/summary", headers=b_admin).json()["overall"]["total"] == 0
    # Figures filtered by A's model: 404, as for a model that exists nowhere.
    problem(http.get("/v1/audit/summary", params={"model_id": ids["model_id"]}, headers=b_admin), 404)
    # The operator's figures span all tenants: B's keys get 403 there, not A's numbers.
    problem(http.get("/metrics", headers=b_admin), 403)


def test_a_key_without_the_scope_gets_403_on_every_route(tenant_a):
    service, ids = tenant_a
    keys = {scope: new_key(service, scopes=[scope]) for scope in ("read", "submit", "audit")}
    for (method, path), allowed in sorted(SCOPES.items()):
        url = concrete(path, **ids)
        for scope, key in keys.items():
            if scope in allowed:
                continue
            body = problem(service.http.request(method, url, headers=bearer(key), follow_redirects=False), 403)
            assert body["code"] == "insufficient_scope", (method, path, scope)
    # The operator tenant's audit key reads the metrics; its read key, as above, may not.
    assert service.http.get("/metrics", headers=bearer(keys["audit"])).status_code == 200


# --- body limits ---------------------------------------------------------------------------------


def test_json_bodies_over_the_limit_are_413_declared_or_streamed(make_service, artifacts):
    service = make_service(max_body_bytes=2048)
    padding = {"model_id": SOMEONE, "subject_ids": ["x" * 100 + str(i) for i in range(30)]}  # ~3 kB of valid JSON
    body = problem(service.http.post("/v1/deletion-requests", json=padding, headers=service.client.headers), 413)
    assert body["code"] == "payload_too_large" and "2048" in body["detail"]

    def chunks():
        for _ in range(64):
            yield b" " * 512

    streamed = service.http.post(
        "/v1/deletion-requests",
        content=chunks(),
        headers={**service.client.headers, "Content-Type": "application/json"},
    )
    problem(streamed, 413)
    problem(service.http.post("/v1/api-keys", content=b"{" + b" " * 4096 + b"}", headers=service.client.headers), 413)
    # Uploads keep their own, larger limits.
    assert service.client.register_dataset(artifacts.archive).id


def test_a_declared_length_of_any_size_is_compared_not_crashed_on(api):
    def post(length: str):
        headers = {**api.client.headers, "Content-Type": "application/json", "Content-Length": length}
        return api.http.post("/v1/api-keys", content=b"{}", headers=headers)

    body = problem(post("9" * 5000), 413)  # past int()'s digit limit: still just a number over the limit
    assert body["code"] == "payload_too_large"
    problem(post(str(api.settings.api.max_body_bytes + 1)), 413)
    problem(post("0" * 30 + "2"), 422)  # leading zeros: two bytes, under the limit; the empty-ish body is read


def test_a_cursor_nested_past_the_stack_is_invalid_input_on_lists_and_the_dashboard(api):
    cursor = base64.urlsafe_b64encode(b"[" * 9000).decode().rstrip("=")  # 12 kB: fits a real request line
    for path in ("/v1/models", "/v1/deletion-requests", "/v1/audit/events", "/dashboard"):
        body = problem(api.http.get(path, params={"cursor": cursor}, headers=api.client.headers), 422)
        assert "invalid cursor" in body["detail"], path


def test_a_streamed_body_is_refused_after_at_most_one_chunk_past_the_limit(make_service):
    """Driven at the ASGI level, so the count of chunks the app pulled is exact: an endless body stops at the limit."""
    service = make_service(max_body_bytes=4096)
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * 1024, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/deletion-requests",
        "raw_path": b"/v1/deletion-requests",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"authorization", service.client.headers["Authorization"].encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(service.app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    assert pulled <= 4096 // 1024 + 1


# --- rate limits ---------------------------------------------------------------------------------


@pytest.fixture()
def key_in(request):
    """Factory: `key_in(database)` → the id of a fresh API key row in that ledger."""
    from ledger import tenants

    def make(database) -> str:
        with database.transaction() as session:
            tenant = tenants.ensure_tenant(session, name=f"rate-{uuid.uuid4().hex[:8]}")
            key, _ = tenants.create_key(session, tenant_id=tenant.id, name="rate", scopes=["submit"], actor="test")
            return key.id

    return make


@pytest.fixture()
def sqlite_ledger(tmp_path):
    from ledger import migrate
    from ledger.db import Database

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def take(database, key_id: str, now, *, per_minute: int = 60, burst: int = 3) -> ratelimit.Decision:
    with database.transaction() as session:
        return ratelimit.take(session, api_key_id=key_id, per_minute=per_minute, burst=burst, now=now)


def test_the_bucket_allows_a_burst_then_the_rate(sqlite_ledger, key_in):
    key, other = key_in(sqlite_ledger), key_in(sqlite_ledger)
    start = utcnow()
    assert [take(sqlite_ledger, key, start).allowed for _ in range(4)] == [True, True, True, False]
    denied = take(sqlite_ledger, key, start + timedelta(seconds=0.5))
    assert not denied.allowed and denied.retry_after == 1  # half a token is there; the other half takes 0.5 s → 1
    assert take(sqlite_ledger, other, start).allowed  # every key has a bucket of its own
    assert take(sqlite_ledger, key, start + timedelta(seconds=1)).allowed  # one token a second at 60 a minute
    assert not take(sqlite_ledger, key, start + timedelta(seconds=1)).allowed
    # A long pause refills up to the burst, never beyond it.
    later = start + timedelta(hours=1)
    assert [take(sqlite_ledger, key, later).allowed for _ in range(4)] == [True, True, True, False]
    # A clock behind the bucket's (another host's) adds nothing and takes nothing away.
    assert not take(sqlite_ledger, key, later - timedelta(minutes=5)).allowed
    assert take(sqlite_ledger, key, later + timedelta(seconds=1)).allowed


def test_retry_after_counts_whole_seconds_until_one_token(sqlite_ledger, key_in):
    key = key_in(sqlite_ledger)
    now = utcnow()
    assert take(sqlite_ledger, key, now, per_minute=1, burst=1).allowed
    denied = take(sqlite_ledger, key, now + timedelta(seconds=10), per_minute=1, burst=1)
    assert not denied.allowed and denied.retry_after == 50
    with pytest.raises(ValueError):
        take(sqlite_ledger, key, now, per_minute=0, burst=1)


def test_concurrent_processes_share_one_bucket_on_postgres(postgres_url, key_in):
    """Eight connections race for a bucket that does not exist yet: exactly the burst is granted."""
    from ledger.db import Database

    database = Database(postgres_url)
    try:
        key = key_in(database)
        now, start = utcnow(), threading.Barrier(8)
        outcomes: list[bool] = []

        def worker() -> None:
            start.wait()
            outcomes.append(take(database, key, now, per_minute=1, burst=5).allowed)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(outcomes) == [False] * 3 + [True] * 5
    finally:
        database.dispose()


@pytest.fixture()
def limited(make_service, artifacts):
    """A service allowing bursts of 2 submissions and then one a minute, with a registered model."""
    service = make_service(rate_limit_burst=2, rate_limit_per_minute=1)
    dataset = service.client.register_dataset(artifacts.archive)
    model = service.client.register_model(artifacts.weights, dataset_id=dataset.id)
    return service, model


def test_submissions_over_the_limit_are_429_with_retry_after(limited, artifacts):
    service, model = limited

    def submit(index: int, **headers: str):
        return service.http.post(
            "/v1/deletion-requests",
            headers={**service.client.headers, **headers},
            json={"model_id": model.id, "subject_ids": [artifacts.subject_with_train_samples(index)]},
        )

    # A refused submission (unknown model) costs no token: the token and the request share a transaction.
    problem(
        service.http.post(
            "/v1/deletion-requests", headers=service.client.headers, json={"model_id": SOMEONE, "subject_ids": ["x"]}
        ),
        404,
    )
    assert submit(0, **{"Idempotency-Key": "ticket-1"}).status_code == 202
    assert submit(1).status_code == 202
    answer = submit(2)
    body = problem(answer, 429)
    assert body["code"] == "rate_limited" and answer.headers["Retry-After"].isdigit()
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    # A replay of an earlier submission is answered from the ledger and costs nothing.
    replay = submit(0, **{"Idempotency-Key": "ticket-1"})
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    # Another key has a bucket of its own.
    other = bearer(new_key(service, scopes=["submit"]))
    assert (
        service.http.post(
            "/v1/deletion-requests",
            headers=other,
            json={"model_id": model.id, "subject_ids": [artifacts.subject_with_train_samples(2)]},
        ).status_code
        == 202
    )
    create = service.http.get("/openapi.json").json()["paths"]["/v1/deletion-requests"]["post"]["responses"]
    assert {"413", "429"} <= set(create)


# --- logs ----------------------------------------------------------------------------------------


class Capture(logging.Handler):
    """Keeps every record, unformatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture()
def every_log_record():
    """Every logger at DEBUG for the test, every record kept (and the levels restored afterwards)."""
    manager = logging.root.manager
    loggers = [logging.root, *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    levels = {lg: lg.level for lg in loggers}
    disabled = {lg: lg.disabled for lg in loggers}
    capture = Capture()
    logging.root.addHandler(capture)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
    try:
        yield capture.records
    finally:
        logging.root.removeHandler(capture)
        for lg in loggers:
            lg.setLevel(levels[lg])
            lg.disabled = disabled[lg]


def test_no_secret_key_or_subject_id_reaches_any_log_record(make_service, artifacts, every_log_record):
    from ledger.observability import JsonFormatter, record_fields
    from worker.runner import EmbeddedRunner

    service = make_service(max_body_bytes=4096)
    client, http = service.client, service.http
    subject = artifacts.subject_with_train_samples(0)
    created = client.create_api_key("auditor", ["audit", "read"])
    dataset = client.register_dataset(artifacts.archive)
    model = client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=artifacts.recipe)
    request = client.submit_deletion(
        model.id, subject_ids=[subject], parameters=service.tiny_ltu, idempotency_key="ticket-9"
    )
    EmbeddedRunner(service.settings).run_pending()
    assert client.get_request(request.id).status == "completed"
    auditor = service.client_for(created["key"])
    auditor.get_request(request.id)
    http.get(f"/v1/deletion-requests/{request.id}/certificate", headers=auditor.headers).raise_for_status()
    auditor.audit_events(request_id=request.id)
    http.get("/v1/audit/events", params={"format": "csv"}, headers=auditor.headers).raise_for_status()
    http.get(f"/dashboard/requests/{request.id}", headers=auditor.headers).raise_for_status()
    http.get("/metrics", headers=client.headers).raise_for_status()
    # Error paths that see the subject id or a key: replay conflict, unknown subject, bad keys, a body too large.
    for body in (
        {"model_id": model.id, "subject_ids": [subject, subject]},
        {"model_id": model.id, "subject_ids": [subject + "-unknown"]},
        {"model_id": model.id, "subject_ids": [subject] * 400},
    ):
        assert http.post("/v1/deletion-requests", json=body, headers=client.headers).status_code in (404, 413, 422)
    submitted = {"model_id": model.id, "subject_ids": [subject], "parameters": service.tiny_ltu}
    replay = {**client.headers, "Idempotency-Key": "ticket-9"}
    assert http.post("/v1/deletion-requests", json=submitted, headers=replay).status_code == 202
    assert http.post("/v1/deletion-requests", json={**submitted, "method": "scrub"}, headers=replay).status_code == 422
    assert http.get("/v1/models", headers=bearer(created["key"] + "x")).status_code == 401
    assert http.post("/dashboard/login", data={"api_key": created["key"]}, follow_redirects=False).status_code == 303

    secrets = {
        "admin key": client.headers["Authorization"].split()[1],
        "created key": created["key"],
        "server secret": service.settings.ledger.secret_key,
        "subject id": subject,
    }
    # The capture saw the flow: the API's access lines, the job's lines naming the request, the SQL.
    assert {"ltu.access", "sqlalchemy.engine.Engine"} <= {r.name for r in every_log_record}
    assert any(request.id in r.getMessage() for r in every_log_record if r.name.startswith("ltu.worker"))
    formatter = JsonFormatter()
    for record in every_log_record:
        texts = [record.getMessage(), repr(record.args), repr(record_fields(record)), formatter.format(record)]
        if record.exc_info:
            texts.append(logging.Formatter().formatException(record.exc_info))
        for what, secret in secrets.items():
            assert not any(secret in text for text in texts), (
                f"{what} in a log record of {record.name}: {texts[0][:300]}"
            )

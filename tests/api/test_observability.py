"""Observability: /metrics in the Prometheus text format with the ledger's figures (checked against a
completed request, and against hand-made rows on SQLite and Postgres), request ids echoed and bound to
every log line, JSON log lines."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.telemetry import LedgerCollector
from ledger import observability
from ledger.errors import ConfigError
from ledger.tables import utcnow
from tests.support import new_key, problem

FAMILIES = {
    "ltu_http_requests",
    "ltu_http_request_duration_seconds",
    "ltu_deletion_requests",
    "ltu_queue_depth",
    "ltu_job_phase_seconds",
    "ltu_verifications",
    "ltu_failed_requests",
    "ltu_ledger_up",
}


def scrape(http, headers) -> dict[str, dict]:
    """{family name: {(sample name, sorted label items): value}} of one scrape."""
    answer = http.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(answer.text)
    }


def test_metrics_after_a_completed_request(completed):
    service, request = completed.service, completed.request
    headers = service.client.headers
    service.http.get(f"/v1/deletion-requests/{request.id}", headers=headers).raise_for_status()
    metrics = scrape(service.http, headers)
    assert set(metrics) >= FAMILIES

    http = metrics["ltu_http_requests"]
    assert (
        http[
            (
                "ltu_http_requests_total",
                (("method", "GET"), ("route", "/v1/deletion-requests/{request_id}"), ("status", "200")),
            )
        ]
        >= 1
    )
    assert (
        http[("ltu_http_requests_total", (("method", "POST"), ("route", "/v1/deletion-requests"), ("status", "202")))]
        == 1
    )
    assert not [key for key in http if request.id in str(key)]  # route templates, never concrete paths
    latency = metrics["ltu_http_request_duration_seconds"]
    assert (
        latency[("ltu_http_request_duration_seconds_count", (("method", "POST"), ("route", "/v1/deletion-requests")))]
        == 1
    )

    statuses = metrics["ltu_deletion_requests"]
    assert statuses[("ltu_deletion_requests", (("status", "completed"),))] == 1
    assert sum(statuses.values()) == 1
    depth = metrics["ltu_queue_depth"]
    assert depth[("ltu_queue_depth", (("queue", "requests"),))] == 0
    assert depth[("ltu_queue_depth", (("queue", "outbox"),))] == 0

    phases = request.details["phase_seconds"]
    assert phases  # the worker records where the time went
    summary = metrics["ltu_job_phase_seconds"]
    for phase, seconds in phases.items():
        assert summary[("ltu_job_phase_seconds_count", (("phase", phase),))] == 1
        assert summary[("ltu_job_phase_seconds_sum", (("phase", phase),))] == pytest.approx(seconds)
        assert summary[("ltu_job_phase_seconds", (("phase", phase), ("quantile", "0.5")))] == pytest.approx(seconds)

    verdict = {
        "passed": str(request.verification["passed"]).lower(),
        "fallback": str(request.verification["fallback"] is not None).lower(),
    }
    verifications = metrics["ltu_verifications"]
    assert verifications[("ltu_verifications", tuple(sorted(verdict.items())))] == 1
    assert sum(verifications.values()) == 1
    assert metrics["ltu_failed_requests"] == {("ltu_failed_requests", (("error_code", "verification_failed"),)): 0}
    assert metrics["ltu_ledger_up"] == {("ltu_ledger_up", ()): 1}


def test_metrics_need_an_operator_key(api):
    problem(api.http.get("/metrics"), 401)
    problem(api.http.get("/metrics", headers={"Authorization": f"Bearer {new_key(api, scopes=['read'])}"}), 403)
    acme_admin = {"Authorization": f"Bearer {new_key(api, scopes=['admin'], tenant='acme')}"}
    assert "operator" in problem(api.http.get("/metrics", headers=acme_admin), 403)["detail"]
    auditor = {"Authorization": f"Bearer {new_key(api, scopes=['audit'])}"}
    assert FAMILIES - {"ltu_job_phase_seconds"} <= set(scrape(api.http, auditor))  # no completed request: no phases
    openmetrics = api.http.get("/metrics", headers={**auditor, "Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


# --- the ledger collector on hand-made rows, on both databases ----------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    """A migrated, empty ledger of either kind."""
    if request.param == "postgres":
        return request.getfixturevalue("fresh_postgres_url")
    from ledger import migrate

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    return url


def add_requests(database, rows: list[dict]) -> None:
    """A tenant, a dataset, a model, and one deletion request per row (its columns overridden by the row).

    Record columns are written as raw JSON, as an older (or broken) worker might have left them.
    """
    from sqlalchemy import type_coerce

    from ledger.tables import Dataset, DeletionRequest, JSONType, Model, OutboxMessage, Tenant

    now = utcnow()
    with database.transaction() as session:
        tenant = Tenant(name="metrics")
        session.add(tenant)
        session.flush()
        dataset = Dataset(
            tenant_id=tenant.id,
            name="d",
            format_version=1,
            num_classes=2,
            image_shape=[1, 2, 2],
            num_samples=4,
            archive_sha256="0" * 64,
            storage_key="d",
        )
        session.add(dataset)
        session.flush()
        model = Model(
            tenant_id=tenant.id, name="m", dataset_id=dataset.id, architecture={"name": "resnet18"}, recipe=None
        )
        session.add(model)
        session.flush()
        for i, row in enumerate(rows):
            session.add(
                DeletionRequest(
                    **{
                        "tenant_id": tenant.id,
                        "model_id": model.id,
                        "body_hash": f"{i:064x}",
                        "target_kind": "subjects",
                        "subject_hashes": [],
                        "num_targets": 1,
                        "method": "ltu",
                        "parameters": {},
                        "received_at": now,
                        "due_at": now + timedelta(days=30),
                        "updated_at": now,
                        **{k: type_coerce(v, JSONType) if isinstance(v, dict) else v for k, v in row.items()},
                    }
                )
            )
        session.add_all(
            [
                OutboxMessage(task_name="ltu.erasure.run", payload={}, dispatched_at=None),
                OutboxMessage(task_name="ltu.erasure.run", payload={}, dispatched_at=now),
            ]
        )


def collect(database) -> dict[str, dict]:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(LedgerCollector(database))
    text = generate_latest(registry).decode()
    return {
        family.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def test_the_ledger_collector_aggregates_statuses_phases_and_verdicts(ledger_url):
    from ledger.db import Database

    now = utcnow()

    def done(minutes_ago: int, verification, phases) -> dict:
        return {
            "status": "completed",
            "finished_at": now - timedelta(minutes=minutes_ago),
            "verification": verification,
            "details": None if phases is None else {"phase_seconds": phases, "scores": {"before": [0.1] * 50}},
        }

    rows = [
        done(1, {"passed": True, "fallback": None}, {"unlearning": 2.0, "verifying": 1.0}),
        done(2, {"passed": True, "fallback": {"reason": "failed"}}, {"unlearning": 4.0, "retraining": 10.0}),
        done(3, {"passed": False, "fallback": None}, {"unlearning": 6.0, "Bad Phase!": 1.0, "verifying": "slow"}),
        done(4, {"passed": True}, None),  # a record without phases (an older worker)
        done(5, None, {"unlearning": -1.0, "verifying": True}),  # no verdict; nonsense durations are skipped
        {"status": "failed", "error_code": "verification_failed"},
        {"status": "failed", "error_code": "verification_failed"},
        {"status": "failed", "error_code": "dataset_missing"},
        {"status": "received"},
        {"status": "queued"},
        {"status": "queued"},
        {"status": "running"},
    ]
    database = Database(ledger_url)
    try:
        add_requests(database, rows)
        metrics = collect(database)
    finally:
        database.dispose()

    statuses = {labels[0][1]: value for (_, labels), value in metrics["ltu_deletion_requests"].items()}
    assert statuses == {"received": 1, "queued": 2, "running": 1, "completed": 5, "failed": 3, "cancelled": 0}
    depth = {labels[0][1]: value for (_, labels), value in metrics["ltu_queue_depth"].items()}
    assert depth == {"requests": 3, "outbox": 1}

    phases = metrics["ltu_job_phase_seconds"]
    assert phases[("ltu_job_phase_seconds_count", (("phase", "unlearning"),))] == 3
    assert phases[("ltu_job_phase_seconds_sum", (("phase", "unlearning"),))] == 12.0
    assert phases[("ltu_job_phase_seconds", (("phase", "unlearning"), ("quantile", "0.5")))] == 4.0
    assert phases[("ltu_job_phase_seconds", (("phase", "unlearning"), ("quantile", "0.9")))] == pytest.approx(5.6)
    assert phases[("ltu_job_phase_seconds_count", (("phase", "verifying"),))] == 1
    assert phases[("ltu_job_phase_seconds_sum", (("phase", "retraining"),))] == 10.0
    assert not [key for key in phases if "Bad Phase!" in str(key)]

    verdicts = {tuple(v for _, v in labels): value for (_, labels), value in metrics["ltu_verifications"].items()}
    # labels sort as (fallback, passed)
    assert verdicts == {("false", "true"): 2, ("true", "true"): 1, ("false", "false"): 1, ("true", "false"): 0}
    failures = {labels[0][1]: value for (_, labels), value in metrics["ltu_failed_requests"].items()}
    assert failures == {"verification_failed": 2, "dataset_missing": 1}


def test_an_unreachable_ledger_is_reported_not_raised(tmp_path):
    from ledger.db import Database

    database = Database(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    try:
        assert collect(database) == {"ltu_ledger_up": {("ltu_ledger_up", ()): 0.0}}
    finally:
        database.dispose()


# --- request ids and logs ------------------------------------------------------------------------


@pytest.fixture()
def json_logs():
    """configure_logging into a buffer for the test (the root logger restored afterwards); yields a reader."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    buffer = io.StringIO()
    observability.configure_logging("INFO", json=True, stream=buffer)

    def lines() -> list[dict]:
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    yield lines
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_request_ids_are_echoed_and_carried_by_every_log_line(api, json_logs):
    def inside() -> dict:
        logging.getLogger("ltu.test").info("inside the route")  # a sync route: runs in the thread pool
        return {}

    api.app.add_api_route("/test-log", inside)
    headers = {**api.client.headers, "X-Request-ID": "ticket-42.retry:1"}
    answer = api.http.get("/test-log", headers=headers)
    assert answer.headers["X-Request-ID"] == "ticket-42.retry:1"
    for unsafe in ("x" * 200, "two words", "-leading-dash", "line\\nbreak"):
        generated = api.http.get("/healthz", headers={"X-Request-ID": unsafe}).headers["X-Request-ID"]
        assert generated != unsafe and len(generated) == 32
    # Every answer has one, errors included (the 413 comes from a middleware, before any route).
    assert api.http.get("/v1/models").headers["X-Request-ID"]  # a 401
    assert api.http.post("/v1/api-keys", content=b" " * (2 << 20), headers=api.client.headers).headers["X-Request-ID"]

    lines = json_logs()
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    mine = [line for line in lines if line.get("request_id") == "ticket-42.retry:1"]
    assert {line["logger"] for line in mine} >= {"ltu.test", "ltu.access"}
    access = next(line for line in mine if line["logger"] == "ltu.access")
    assert access["route"] == "/test-log" and access["status"] == 200 and access["http_method"] == "GET"
    assert access["duration_ms"] >= 0
    assert not [line for line in lines if api.client.headers["Authorization"].split()[1] in json.dumps(line)]


def test_an_unexpected_error_is_a_500_problem_naming_its_request_id(api, json_logs, monkeypatch):
    from api.routes import models

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(models.registry, "list_models", broken)
    with TestClient(api.app, raise_server_exceptions=False) as http:
        answer = http.get("/v1/models", headers={**api.client.headers, "X-Request-ID": "req-500"})
    assert problem(answer, 500)["code"] == "internal_error"
    assert answer.headers["X-Request-ID"] == "req-500"
    errors = [line for line in json_logs() if line["level"] == "ERROR"]
    assert errors and errors[0]["request_id"] == "req-500" and "RuntimeError: boom" in errors[0]["exc"]
    access = [line for line in json_logs() if line["logger"] == "ltu.access" and line.get("request_id") == "req-500"]
    assert access and access[0]["status"] == 500


def test_bound_fields_nest_and_bearer_tokens_are_masked():
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(observability.ContextFilter())
    handler.setFormatter(observability.JsonFormatter())
    log = logging.getLogger("ltu.test.format")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        with observability.bind(request_id="r1"):
            with observability.bind(deletion_request_id="d1", request_id="r2", skipped=None):
                log.info(
                    "sent %s", "Authorization: Bearer ltu_abcdefghijklmnopqrstuvwxyz", extra={"phase": "unlearning"}
                )
                assert observability.bound_fields() == {"request_id": "r2", "deletion_request_id": "d1"}
            log.warning("outer")
        log.error("outside")
        try:
            raise ValueError("key ltu_0123456789abcdefghijkl leaked")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    first, outer, outside, failed = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["request_id"] == "r2" and first["deletion_request_id"] == "d1" and first["phase"] == "unlearning"
    assert "ltu_abc" not in first["msg"] and "[redacted]" in first["msg"]
    assert outer["request_id"] == "r1" and "deletion_request_id" not in outer
    assert "request_id" not in outside and outside["level"] == "ERROR"
    assert "ltu_0123" not in failed["exc"] and "ValueError" in failed["exc"]


def test_logging_is_configured_from_the_environment():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        observability.configure_logging_from_env({"LTU_LOG_LEVEL": "warning", "LTU_LOG_FORMAT": "text"})
        observability.configure_logging_from_env({})  # replaces the first handler rather than adding a second
        added = [h for h in root.handlers if h not in handlers]
        assert len(added) == 1 and isinstance(added[0].formatter, observability.JsonFormatter)
        assert root.level == logging.INFO
        for bad in ({"LTU_LOG_LEVEL": "chatty"}, {"LTU_LOG_FORMAT": "xml"}):
            with pytest.raises(ConfigError, match=next(iter(bad))):
                observability.configure_logging_from_env(bad)
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)

"""The audit API for dashboards: filters, tenants, streamed exports (constant memory), summary figures."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tracemalloc

import pytest

from tests.support import new_key, problem


def test_filters_time_range_and_cursor(completed):
    client, request = completed.client, completed.request
    events = client.audit_events()
    mine = client.audit_events(request_id=request.id)
    assert {e.request_id for e in mine} == {request.id}
    assert [e.action for e in client.audit_events(action="samples.erased")] == ["samples.erased"]
    assert {e.model_id for e in client.audit_events(model_id=completed.model.id)} == {completed.model.id}
    # [since, until): the window of the request's own lifecycle, to the microsecond.
    start, end = mine[0].occurred_at, mine[-1].occurred_at
    window = client.audit_events(since=start.isoformat(), until=end.isoformat())
    assert window and all(start <= e.occurred_at < end for e in window)
    assert [e.seq for e in window] == sorted(e.seq for e in window)
    # Pages follow the chain.
    http, auth = completed.service.http, client.headers
    first = http.get("/v1/audit/events", params={"limit": 4}, headers=auth).json()
    second = http.get("/v1/audit/events", params={"limit": 4, "cursor": first["next_cursor"]}, headers=auth).json()
    assert [e["seq"] for e in first["items"] + second["items"]] == [e.seq for e in events[:8]]


def test_tenants_see_their_own_events_and_only_the_operator_sees_others(api, artifacts):
    auditor = api.client_for(new_key(api, scopes=["audit"], tenant="acme"))
    acme_admin = api.client_for(new_key(api, scopes=["admin"], tenant="acme"))
    acme_events = auditor.audit_events()
    assert {e.action for e in acme_events} == {"tenant.created", "api_key.created"}
    acme = acme_events[0].tenant_id
    default = api.client.audit_events()[0].tenant_id
    assert {e.tenant_id for e in acme_events} == {acme} != {default}
    # The operator (an admin key of the default tenant) may look into acme; acme may not look out.
    assert [e.seq for e in api.client.audit_events(tenant_id=acme)] == [e.seq for e in acme_events]
    assert api.client.audit_summary(tenant_id=acme)["tenant_id"] == acme
    for client in (auditor, acme_admin):
        for path in ("/v1/audit/events", "/v1/audit/summary"):
            body = problem(api.http.get(path, params={"tenant_id": default}, headers=client.headers), 403)
            assert "operator" in body["detail"]
    assert [e.seq for e in auditor.audit_events(tenant_id=acme)] == [e.seq for e in acme_events]  # its own id is fine
    problem(api.http.get("/v1/audit/events", params={"tenant_id": "no-such-tenant"}, headers=api.client.headers), 404)
    reader = new_key(api, scopes=["read", "submit"])
    problem(api.http.get("/v1/audit/summary", headers={"Authorization": f"Bearer {reader}"}), 403)


def test_exports_stream_every_matching_event_and_verify_offline(completed):
    from ledger.canonical import canonical_json

    service, client = completed.service, completed.client
    events = client.audit_events()
    ndjson = service.http.get("/v1/audit/events", params={"format": "ndjson"}, headers=client.headers)
    assert ndjson.status_code == 200 and ndjson.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in ndjson.text.splitlines()]
    assert [line["seq"] for line in lines] == [e.seq for e in events]
    for line in lines:  # each line without its hash is the chained body
        digest = line.pop("hash")
        assert hashlib.sha256(canonical_json(line).encode()).hexdigest() == digest

    path = client.export_audit(service.settings.ledger.home / "request.csv", request_id=completed.request.id)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [int(r["seq"]) for r in rows] == [e.seq for e in client.audit_events(request_id=completed.request.id)]
    assert rows[-1]["action"] == "deletion_request.completed" and json.loads(rows[-1]["data"])["version"] == 2
    assert set(rows[0]) == {
        "seq",
        "occurred_at",
        "tenant_id",
        "actor",
        "action",
        "resource_type",
        "resource_id",
        "model_id",
        "request_id",
        "data",
        "prev_hash",
        "hash",
    }
    # The cursor of a page continues an export after it.
    page = service.http.get("/v1/audit/events", params={"limit": 3}, headers=client.headers).json()
    rest = service.http.get(
        "/v1/audit/events", params={"format": "ndjson", "cursor": page["next_cursor"]}, headers=client.headers
    ).text.splitlines()
    assert [json.loads(line)["seq"] for line in rest] == [e.seq for e in events[3:]]


@pytest.mark.parametrize(
    "params",
    [
        {"format": "xml"},
        {"format": "csv", "cursor": "nonsense!"},
        {"since": "yesterday"},
        {"limit": 201},
        {"format": "csv", "cursor": "WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwXQ"},  # [10^22]: a cursor we never made
        {"format": "csv", "action": "a\x00b"},
        {"format": "ndjson", "model_id": "line\nbreak"},
        {"request_id": ""},
        {"format": "csv", "since": "0001-01-01T00:00:00+01:00"},
        {"until": "9999-12-31T23:59:59-01:00"},
    ],
)
def test_bad_filters_are_422_before_anything_streams(api, params):
    problem(api.http.get("/v1/audit/events", params=params, headers=api.client.headers), 422)


def test_openapi_documents_the_compliance_routes(api):
    paths = api.http.get("/openapi.json").json()["paths"]
    assert {
        "/v1/audit/events",
        "/v1/audit/verify",
        "/v1/audit/summary",
        "/v1/deletion-requests/{request_id}/certificate",
        "/v1/deletion-requests/{request_id}/deadline-extension",
        "/.well-known/ltu-certificate-key",
    } <= set(paths)
    assert {p["name"] for p in paths["/v1/audit/events"]["get"]["parameters"]} >= {
        "tenant_id",
        "model_id",
        "request_id",
        "action",
        "since",
        "until",
        "cursor",
        "limit",
        "format",
    }
    assert all(
        op["tags"] == ["dashboard"] for path in paths if path.startswith("/dashboard") for op in paths[path].values()
    )


def test_summary_counts_statuses_deadlines_durations_and_verdicts(completed, submit_backdated, artifacts):
    service, client, model = completed.service, completed.client, completed.model
    overdue = submit_backdated(service, model.id, artifacts.subject_with_train_samples(1), days_ago=40)
    due_soon = submit_backdated(service, model.id, artifacts.subject_with_train_samples(2), days_ago=27)
    client.cancel_request(submit_backdated(service, model.id, artifacts.subject_with_train_samples(3), days_ago=1))

    summary = client.audit_summary()
    overall = summary["overall"]
    assert overall["total"] == 4 and overall["by_status"] == {
        "received": 2,
        "queued": 0,
        "running": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 1,
    }
    assert (overall["overdue"], overall["due_soon"], overall["completed_late"]) == (1, 1, 0)
    done = completed.request
    took = (done.finished_at - done.received_at).total_seconds()
    assert overall["completion_seconds"] == {"p50": pytest.approx(took), "p95": pytest.approx(took)}
    passed = done.verification["passed"]
    assert overall["verified"] == 1 and overall["verification_pass_rate"] == (1.0 if passed else 0.0)
    assert [m["model_id"] for m in summary["models"]] == [model.id]
    assert summary["models"][0]["overdue"] == 1 and summary["due_soon_days"] == 7
    unknown = service.http.get("/v1/audit/summary", params={"model_id": "another-model"}, headers=client.headers)
    assert problem(unknown, 404)["code"] == "not_found"  # as an unknown tenant_id is, not a row of zeros
    assert {r.id for r in client.list_requests(deadline="overdue").items} == {overdue}
    assert {r.id for r in client.list_requests(deadline="due_soon").items} == {due_soon}


def test_percentiles_interpolate_between_completions():
    from ledger.reports import Figures

    figures = Figures(completion_seconds=[10.0, 20.0, 30.0, 40.0, 50.0])
    assert figures.completion_percentile(50) == 30.0
    assert figures.completion_percentile(95) == pytest.approx(48.0)
    assert Figures().completion_percentile(50) is None and Figures().pass_rate is None


def _bulk_events(database, tenant_id: str, count: int) -> None:
    from ledger import audit

    for start in range(0, count, 10_000):
        with database.transaction() as session:
            for i in range(start, min(start + 10_000, count)):
                audit.record(
                    session,
                    tenant_id=tenant_id,
                    actor="bulk",
                    action="bulk.event",
                    resource_type="test",
                    resource_id=str(i),
                    data={"i": i, "note": "an event of the 100,000-event export test"},
                )


def _streamed_peak(service, auth) -> tuple[int, int]:
    """(rows, peak bytes allocated by Python) while streaming the CSV export of the bulk events."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        rows = 0
        with service.http.stream(
            "GET", "/v1/audit/events", params={"format": "csv", "action": "bulk.event"}, headers=auth
        ) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                rows += chunk.count(b"\n")
        return rows - 1, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_100000_event_csv_export_streams_in_memory_independent_of_its_size(api):
    from ledger.db import Database

    tenant_id = api.client.audit_events()[0].tenant_id
    database = Database(api.settings.ledger.database_url)
    _bulk_events(database, tenant_id, 10_000)
    rows_small, peak_small = _streamed_peak(api, api.client.headers)
    _bulk_events(database, tenant_id, 90_000)
    rows_large, peak_large = _streamed_peak(api, api.client.headers)
    database.dispose()
    assert (rows_small, rows_large) == (10_000, 100_000)
    print(
        f"CSV export peak Python memory: {peak_small / 1e6:.2f} MB for 10k events, {peak_large / 1e6:.2f} MB for 100k"
    )
    # Ten times the events, not ten times the memory: one chunk of rows at a time.
    assert peak_large < 1.5 * peak_small + 1_000_000


# --- verifying the chains -------------------------------------------------------------------------


def _tenant_clients(api):
    """acme (an audit key and three more keys: 5 events) and globex (an audit key: 2 events)."""
    acme = api.client_for(new_key(api, scopes=["audit"], tenant="acme"))
    acme_admin = api.client_for(new_key(api, scopes=["admin"], tenant="acme"))
    for i in range(2):
        acme_admin.create_api_key(f"extra-{i}", ["read"])
    globex = api.client_for(new_key(api, scopes=["audit"], tenant="globex"))
    return acme, acme_admin, globex


def test_a_tenant_verifies_its_own_chain_and_learns_nothing_of_other_tenants(api):
    acme, acme_admin, globex = _tenant_clients(api)
    deployment = api.client.verify_audit()  # the operator's default: every event
    assert (deployment["chain"], deployment["valid"]) == ("deployment", True)
    assert deployment["checked"] == len(api.client.audit_events()) + len(acme.audit_events()) + len(
        globex.audit_events()
    )
    for client, count in ((acme, 5), (acme_admin, 5), (globex, 2)):
        events = client.audit_events()
        assert len(events) == count
        report = client.verify_audit()
        assert report == {
            "chain": "tenant",
            "tenant_id": events[0].tenant_id,
            "valid": True,
            "checked": count,  # its own events: not the deployment's count
            "first_seq": 1,
            "last_seq": count,
            "last_hash": events[-1].hash,  # its own head: not the deployment's
            "broken": None,
            "next_from_seq": None,
        }
        assert client.verify_audit(chain="tenant") == report
        body = problem(api.http.get("/v1/audit/verify", params={"chain": "deployment"}, headers=client.headers), 403)
        assert "operator" in body["detail"]
    # The operator's audit keys walk the deployment's chain too, and their own tenant's on request.
    operator_auditor = api.client_for(new_key(api, scopes=["audit"]))
    assert operator_auditor.verify_audit()["checked"] == deployment["checked"] + 1  # + that key's creation
    own = operator_auditor.verify_audit(chain="tenant")
    assert own["chain"] == "tenant" and own["checked"] == len(api.client.audit_events())


def test_a_tampered_tenant_event_is_found_by_the_tenants_walk_and_the_operators(api):
    import sqlite3

    acme, _, globex = _tenant_clients(api)
    target = acme.audit_events()[2]  # acme's third event
    conn = sqlite3.connect(api.settings.ledger.home / "ledger.db")
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("UPDATE audit_events SET actor = 'key:forged' WHERE seq = ?", (target.seq,))
    conn.commit()
    conn.close()
    mine = acme.verify_audit()
    assert (mine["valid"], mine["broken"]["seq"], mine["checked"], mine["last_seq"]) == (False, 3, 2, 2)
    assert "actor" in mine["broken"]["reason"]
    operator = api.client.verify_audit()
    assert (operator["valid"], operator["broken"]["seq"]) == (False, target.seq)
    assert globex.verify_audit()["valid"]  # another tenant's chain does not pass through acme's events


def test_verify_pages_are_bounded_and_their_cursor_covers_every_event_once(api):
    acme, _, _ = _tenant_clients(api)
    for client, chain in ((api.client, "deployment"), (acme, "tenant")):
        whole = client.verify_audit()
        covered, start = [], 1
        while start is not None:
            page = client.http.get(
                "/v1/audit/verify", params={"limit": 2, "from_seq": start}, headers=client.headers
            ).json()
            assert page["valid"] and page["chain"] == chain and page["checked"] <= 2
            covered += range(page["first_seq"], page["last_seq"] + 1)
            start = page["next_from_seq"]
        assert covered == list(range(1, whole["checked"] + 1))
        assert client.verify_audit(page_size=2) == whole  # the client follows the cursor to the end
    for limit in (0, 10_001):
        problem(api.http.get("/v1/audit/verify", params={"limit": limit}, headers=api.client.headers), 422)


def test_openapi_documents_the_verify_answer(api):
    spec = api.http.get("/openapi.json").json()
    answer = spec["components"]["schemas"]["ChainVerification"]
    assert {"chain", "tenant_id", "valid", "checked", "last_seq", "last_hash", "broken", "next_from_seq"} <= set(
        answer["properties"]
    )
    parameters = {p["name"] for p in spec["paths"]["/v1/audit/verify"]["get"]["parameters"]}
    assert parameters == {"chain", "from_seq", "to_seq", "limit"}


def test_listed_events_carry_their_tenant_link(completed):
    events = completed.client.audit_events()
    assert [e.tenant_seq for e in events] == list(range(1, len(events) + 1))  # one tenant: its chain is whole
    assert [e.tenant_prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]

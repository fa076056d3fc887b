"""Legal deadlines: one calendar month after receipt, one extension of one or two months with a
recorded reason (audited as a keyed hash), and the overdue / due-soon filters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support import new_key, problem


@pytest.fixture()
def model(api, artifacts):
    dataset = api.client.register_dataset(artifacts.archive)
    return api.client.register_model(artifacts.weights, dataset_id=dataset.id)


def test_an_extension_moves_the_deadline_and_records_why(api, model, artifacts):
    from ledger.requests import add_calendar_month

    request = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples()])
    reason = "Subject 4711 asked about three further datasets; tracing them takes longer"
    extended = api.client.extend_deadline(request.id, months=2, reason=f"  {reason} ")
    assert extended.due_at == add_calendar_month(request.received_at, 3)
    assert extended.extension["months"] == 2 and extended.extension["reason"] == reason
    assert datetime.fromisoformat(extended.extension["previous_due_at"]) == request.due_at
    event = api.client.audit_events(action="deletion_request.deadline_extended")[-1]
    assert event.request_id == request.id and event.data["months"] == 2
    assert len(event.data["reason_hash"]) == 64 and "4711" not in str(event.data)  # the chain keeps a keyed hash only
    assert datetime.fromisoformat(event.data["due_at"].replace("Z", "+00:00")) == extended.due_at
    body = problem(
        api.http.post(
            f"/v1/deletion-requests/{request.id}/deadline-extension",
            json={"months": 1, "reason": "again"},
            headers=api.client.headers,
        ),
        409,
    )
    assert "already extended" in body["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"months": 3, "reason": "too long"},
        {"months": 0, "reason": "none"},
        {"months": 1, "reason": "   "},
        {"months": 1},
        {"reason": "no months"},
        {"months": 1, "reason": "x", "extra": True},
        {"months": "two", "reason": "x"},
        {"months": 1, "reason": "x" * 2001},
        {"months": 1, "reason": "a\x00b"},
    ],
)
def test_invalid_extensions_are_422(api, model, artifacts, body):
    request = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples()])
    problem(
        api.http.post(f"/v1/deletion-requests/{request.id}/deadline-extension", json=body, headers=api.client.headers),
        422,
    )


def test_extensions_only_for_open_requests_within_the_first_month(api, model, artifacts, submit_backdated):
    path = "/v1/deletion-requests/{}/deadline-extension"
    late = submit_backdated(api, model.id, artifacts.subject_with_train_samples(0), days_ago=35)
    body = problem(
        api.http.post(path.format(late), json={"months": 1, "reason": "late"}, headers=api.client.headers), 409
    )
    assert "within one month of receipt" in body["detail"]
    cancelled = api.client.cancel_request(
        api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples(1)]).id
    )
    body = problem(
        api.http.post(path.format(cancelled.id), json={"months": 1, "reason": "x"}, headers=api.client.headers), 409
    )
    assert "cancelled" in body["detail"]
    problem(
        api.http.post(path.format("no-such-request"), json={"months": 1, "reason": "x"}, headers=api.client.headers),
        404,
    )
    fresh = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples(2)])
    for scopes, status in ((["read"], 403), (["audit"], 403)):
        key = new_key(api, scopes=scopes)
        problem(
            api.http.post(
                path.format(fresh.id), json={"months": 1, "reason": "x"}, headers={"Authorization": f"Bearer {key}"}
            ),
            status,
        )
    other = new_key(api, scopes=["admin"], tenant="acme")
    problem(
        api.http.post(
            path.format(fresh.id), json={"months": 1, "reason": "x"}, headers={"Authorization": f"Bearer {other}"}
        ),
        404,
    )


def test_lists_filter_overdue_and_due_soon(api, model, artifacts, submit_backdated):
    overdue = submit_backdated(api, model.id, artifacts.subject_with_train_samples(0), days_ago=45)
    soon = submit_backdated(api, model.id, artifacts.subject_with_train_samples(1), days_ago=26)
    fresh = api.client.submit_deletion(model.id, subject_ids=[artifacts.subject_with_train_samples(2)]).id
    late_but_cancelled = submit_backdated(api, model.id, artifacts.subject_with_train_samples(3), days_ago=50)
    api.client.cancel_request(late_but_cancelled)
    assert [r.id for r in api.client.list_requests(deadline="overdue").items] == [overdue]
    assert [r.id for r in api.client.list_requests(deadline="due_soon").items] == [soon]
    read = {r.id: r for r in api.client.list_requests().items}
    assert read[overdue].overdue and not read[soon].overdue and not read[fresh].overdue
    assert not read[late_but_cancelled].overdue  # closed requests are never overdue
    assert read[overdue].due_at < datetime.now(UTC) < read[soon].due_at
    problem(api.http.get("/v1/deletion-requests", params={"deadline": "late"}, headers=api.client.headers), 422)

"""Retries and idempotency keys, for Client and AsyncClient alike (the `service` fixture runs each test
with both): 429 and 503 are retried as Retry-After says, within the bounds; a lost connection only
where sending twice is harmless; every submission carries one key, the same on every try."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from ltu_client import ApiError
from ltu_client.protocol import retry_after

REQUEST = {"id": "r-1", "model_id": "m-1", "status": "received"}


def test_a_429_is_retried_after_the_seconds_retry_after_asks(service):
    service.script(service.problem(429, "rate_limited", Retry_After="7"), service.answer(200, REQUEST))
    assert service.call("get_request", "r-1").id == "r-1"
    assert service.sleeps == [7.0] and len(service.requests) == 2


def test_retry_after_as_an_http_date_is_waited_until(service):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    service.script(service.problem(429, "rate_limited", Retry_After=when), service.answer(200, REQUEST))
    service.call("get_request", "r-1")
    [slept] = service.sleeps
    assert 27.0 < slept <= 30.0


def test_retry_after_reads_seconds_and_dates_and_ignores_nonsense():
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after("120", now) == 120.0
    assert retry_after("Tue, 01 Dec 2026 12:00:45 GMT", now) == 45.0
    assert retry_after("Tue, 01 Dec 2026 11:00:00 GMT", now) == 0.0  # already past: at once
    for unreadable in (None, "", "-5", "1.5e3", "soon"):
        assert retry_after(unreadable, now) is None


def test_a_503_without_retry_after_backs_off_exponentially_with_jitter(service):
    unavailable = service.problem(503, "database_unavailable")
    service.script(unavailable, unavailable, unavailable, service.answer(200, REQUEST))
    assert service.call("get_request", "r-1").status == "received"
    assert len(service.sleeps) == 3
    for retry, slept in enumerate(service.sleeps):
        assert 0.0 <= slept <= 0.5 * 2**retry


def test_it_gives_up_after_max_attempts_with_the_last_answer(service):
    service.script(service.problem(503, "database_unavailable", Retry_After="1"))
    with pytest.raises(ApiError) as err:
        service.call("get_request", "r-1", max_attempts=3)
    assert err.value.status == 503 and err.value.code == "database_unavailable"
    assert len(service.requests) == 3 and service.sleeps == [1.0, 1.0]


def test_a_wait_past_max_wait_is_not_started(service):
    service.script(service.problem(429, "rate_limited", Retry_After="40"), service.answer(200, REQUEST))
    with pytest.raises(ApiError) as err:
        service.call("get_request", "r-1", max_wait=30.0)
    assert err.value.status == 429 and service.sleeps == [] and len(service.requests) == 1
    service.script(service.problem(429, "rate_limited", Retry_After="40"))
    with pytest.raises(ApiError):
        service.call("get_request", "r-1", max_wait=60.0)  # 40 s waited; 40 more would pass 60
    assert service.sleeps == [40.0]


@pytest.mark.parametrize("status", [400, 404, 409, 422, 500])
def test_other_errors_are_final_at_once(service, status):
    service.script(service.problem(status, "nope", Retry_After="1"), service.answer(200, REQUEST))
    with pytest.raises(ApiError) as err:
        service.call("get_request", "r-1")
    assert err.value.status == status and len(service.requests) == 1 and service.sleeps == []


def test_a_lost_connection_is_retried_for_reads_only(service):
    service.script(httpx.ConnectError("refused"), httpx.ReadError("reset"), service.answer(200, REQUEST))
    assert service.call("get_request", "r-1").id == "r-1"
    assert len(service.requests) == 3

    # A cancel that may have been done: asking again could answer 409 for the caller's own success.
    service.script(httpx.ReadError("reset"), service.answer(200, REQUEST))
    with pytest.raises(ApiError) as err:
        service.call("cancel_request", "r-1")
    assert err.value.status == 0 and "unreachable" in str(err.value)
    assert len(service.requests) == 4


def test_readiness_is_reported_at_once_not_waited_for(service):
    service.script(service.problem(503, "not_ready", Retry_After="5"), service.answer(200, {"status": "ok"}))
    with pytest.raises(ApiError) as err:
        service.call("ready")
    assert err.value.status == 503 and service.sleeps == []


def test_a_submission_gets_one_key_for_all_its_tries(service):
    service.script(
        service.problem(429, "rate_limited", Retry_After="1"),
        httpx.ReadError("the answer was lost"),  # keyed, so asked again: the service replays, never duplicates
        service.problem(503, "database_unavailable"),
        service.answer(202, REQUEST),
    )
    request = service.call("submit_deletion", "m-1", subject_ids=["alice"])
    keys = {r.headers["Idempotency-Key"] for r in service.requests}
    assert len(service.requests) == 4 and len(keys) == 1
    [key] = keys
    assert uuid.UUID(key).version == 4 and request.idempotency_key == key
    assert all(service.sent_json(i) == {"model_id": "m-1", "subject_ids": ["alice"]} for i in range(4))

    service.script(service.answer(202, REQUEST))
    assert service.call("submit_deletion", "m-1", subject_ids=["alice"]).idempotency_key != key  # one per submission


def test_the_callers_key_is_kept(service):
    service.script(service.problem(429, "rate_limited", Retry_After="1"), service.answer(202, REQUEST))
    request = service.call("submit_deletion", "m-1", subject_ids=["alice"], idempotency_key="ticket-42")
    assert [r.headers["Idempotency-Key"] for r in service.requests] == ["ticket-42", "ticket-42"]
    assert request.idempotency_key == "ticket-42"


def test_an_upload_is_sent_whole_again_on_a_retry(service, tmp_path):
    archive = tmp_path / "data.tar"
    archive.write_bytes(b"tar-bytes " * 1000)
    dataset = {
        "id": "d-1",
        "name": "data",
        "num_classes": 2,
        "image_shape": [1, 8, 8],
        "num_samples": 4,
        "archive_sha256": "0" * 64,
    }
    service.script(service.problem(503, "database_unavailable", Retry_After="2"), service.answer(201, dataset))
    assert service.call("register_dataset", archive, name="data").id == "d-1"
    assert len(service.bodies) == 2 and all(archive.read_bytes() in body for body in service.bodies)
    assert all(r.headers["Authorization"] == "Bearer ltu_test-key" for r in service.requests)

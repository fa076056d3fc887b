"""The erasure methods of Client and AsyncClient against the issue-14 contract, on a scripted service:
what each sends (path, body, query) and how it reads the answer. The same calls against the real
routes belong in tests/api (see the report of issue 14)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ltu_client import Erasure, verify_certificate
from ltu_client.certificates import key_id, signed_document


def erasure_read(status: str = "running", **fields) -> dict:
    return {
        "id": "e-1",
        "status": status,
        "subject_count": 2,
        "subjects_not_found": 1,
        "received_at": "2026-12-01T10:00:00Z",
        "due_at": "2027-01-01T10:00:00Z",
        "finished_at": None,
        "requests": [
            {
                "request_id": "r-1",
                "model_id": "m-1",
                "status": "running" if status == "running" else status,
                "progress": {"phase": "unlearning", "step": 3, "total": 10},
                "result_version": None,
            }
        ],
        "dataset_purge": [{"dataset_id": "d-1", "samples": 12, "purged_samples": 0}],
        "a_field_of_a_newer_server": True,
        **fields,
    }


def test_submit_sends_the_subjects_and_only_the_scopes_given(service):
    service.script(service.answer(202, erasure_read("received"), Location="/v1/erasures/e-1", Retry_After="2"))
    erasure = service.call("submit_erasure", ["alice", "bob"], model_ids=["m-1"])
    request = service.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/erasures")
    assert service.sent_json() == {"subject_ids": ["alice", "bob"], "model_ids": ["m-1"]}
    assert erasure.idempotency_key == request.headers["Idempotency-Key"]

    service.script(service.answer(202, erasure_read("received")))
    service.call(
        "submit_erasure",
        ["alice"],
        dataset_ids=["d-1"],
        method="ltu",
        parameters={"max_passes": 1.0},
        idempotency_key="dsar-7",
    )
    assert service.sent_json() == {
        "subject_ids": ["alice"],
        "dataset_ids": ["d-1"],
        "method": "ltu",
        "parameters": {"max_passes": 1.0},
    }
    assert service.requests[-1].headers["Idempotency-Key"] == "dsar-7"


def test_an_erasure_reads_into_the_dataclass(service):
    service.script(service.answer(200, erasure_read("completed", finished_at="2026-12-01T10:05:00+00:00")))
    erasure = service.call("get_erasure", "e-1")
    assert service.requests[0].url.path == "/v1/erasures/e-1"
    assert isinstance(erasure, Erasure) and erasure.done and erasure.status == "completed"
    assert (erasure.subject_count, erasure.subjects_not_found) == (2, 1)
    assert erasure.received_at == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert erasure.finished_at == datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
    assert erasure.requests[0]["model_id"] == "m-1" and erasure.dataset_purge[0]["samples"] == 12
    assert erasure.idempotency_key is None  # known only to whoever submitted it


def test_list_pages_with_the_filters_given(service):
    service.script(
        service.answer(200, {"items": [erasure_read(), erasure_read("failed", id="e-0")], "next_cursor": "c2"})
    )
    page = service.call("list_erasures", status="running", limit=2)
    assert [e.id for e in page.items] == ["e-1", "e-0"] and page.next_cursor == "c2"
    assert dict(service.requests[0].url.params) == {"status": "running", "limit": "2"}
    service.call("list_erasures", cursor="c2")
    assert dict(service.requests[1].url.params) == {"cursor": "c2", "limit": "50"}


def test_wait_polls_until_done_as_retry_after_says(service):
    service.script(
        service.answer(200, erasure_read("received"), Retry_After="1"),
        service.answer(200, erasure_read("running"), Retry_After="30"),  # capped: a waiting caller polls often
        service.answer(200, erasure_read("completed")),
    )
    seen = []
    erasure = service.call("wait_erasure", "e-1", on_update=lambda e: seen.append(e.status))
    assert erasure.status == "completed" and seen == ["received", "running", "completed"]
    assert service.sleeps == [1.0, 2.0]


def test_wait_gives_up_after_its_timeout(service):
    service.script(service.answer(200, erasure_read("running")))
    with pytest.raises(TimeoutError, match="erasure e-1 is still running"):
        service.call("wait_erasure", "e-1", timeout=0)


def test_the_certificate_comes_byte_for_byte_and_verifies(service):
    private = Ed25519PrivateKey.generate()
    payload = json.dumps({"erasure": {"id": "e-1"}, "format": "test"}, sort_keys=True, separators=(",", ":"))
    document = signed_document(payload, kid=key_id(private.public_key()), signature=private.sign(payload.encode()))
    service.script(httpx.Response(200, content=document.encode(), headers={"content-type": "application/json"}))
    certificate = service.call("erasure_certificate", "e-1")
    assert service.requests[0].url.path == "/v1/erasures/e-1/certificate"
    assert certificate == document.encode()
    assert verify_certificate(certificate, private.public_key())["erasure"] == {"id": "e-1"}


def test_subject_locations(service):
    locations = {
        "subject_hash": "h" * 64,
        "datasets": [{"dataset_id": "d-1", "samples": 3, "erased_samples": 3, "purged_samples": 0}],
        "models": [
            {
                "model_id": "m-1",
                "dataset_id": "d-1",
                "current_version": 2,
                "erased_in_version": 2,
                "versions_holding": [1],
            }
        ],
    }
    service.script(service.answer(200, locations))
    assert service.call("subject_locations", "alice") == locations
    sent = service.requests[0]
    # The id travels in the body, never in the URL that proxies log.
    assert (sent.method, sent.url.path) == ("POST", "/v1/subjects/locations")
    assert json.loads(sent.content) == {"subject_id": "alice"} and b"alice" not in sent.url.raw_path

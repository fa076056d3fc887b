"""Webhooks end to end: the embedded service (API and runner threads) posts signed events to a real HTTP receiver
on this machine, once each; a replay sends the same webhook-id again; a receiver that is down, then failing,
then up gets the event delivered once, with backoff between the attempts; one that never comes back gets it
marked failed after the last attempt."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ledger.webhooks import EVENT_TYPES
from tests.support import free_port, problem, wait_until

FAST_RETRIES = {
    "webhook_allow_private_addresses": True,  # the receiver is on loopback
    "webhook_backoff_seconds": 0.3,
    "webhook_backoff_cap_seconds": 1.0,
    "webhook_timeout_seconds": 5.0,
}


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1:`port`: it records every POST and answers `status`; not listening until
    `start`."""

    port: int
    status: int = 204
    received: list[tuple[dict[str, str], str, float]] = field(default_factory=list)  # headers, body, when
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/ltu"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                status = receiver.status  # read first: once a POST is recorded, its answer is decided
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture()
def receiver():
    listening = Receiver(free_port())
    yield listening
    listening.stop()


@pytest.fixture()
def delivering(make_service):
    """Factory: an embedded service whose runner runs only its webhook lane (erasures stay received, so a
    cancellation is a cancellation at once)."""
    from worker.runner import EmbeddedRunner

    lanes = []

    def make(**overrides):
        service = make_service(**FAST_RETRIES, **overrides)
        lanes.append(EmbeddedRunner(service.settings).webhooks)
        lanes[-1].start()
        return service

    yield make
    for lane in lanes:
        lane.stop()


def cancelled_request(service, artifacts) -> None:
    """Submit a request and cancel it: a deletion_request.cancelled event."""
    subject = artifacts.subject_with_train_samples()
    service.client.cancel_request(
        service.client.submit_deletion(model_of(service, artifacts), subject_ids=[subject]).id
    )


def verify(secret: str, headers: dict[str, str], body: str) -> dict:
    """The README's verification: HMAC-SHA256 of "id.timestamp.body" under the decoded secret, base64, `v1,`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 300
    return json.loads(body)


def register(service, receiver: Receiver, *types: str) -> dict:
    answer = service.http.post(
        "/v1/webhooks", json={"url": receiver.url, "event_types": list(types)}, headers=service.client.headers
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"] == f"/v1/webhooks/{answer.json()['id']}"
    return answer.json()


def deliveries(service, webhook: dict) -> list[dict]:
    answer = service.http.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=service.client.headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def model_of(service, artifacts) -> str:
    dataset = service.client.register_dataset(artifacts.archive)
    return service.client.register_model(artifacts.weights, dataset_id=dataset.id).id


def test_a_completed_request_is_delivered_signed_once_and_a_replay_sends_the_same_id(make_service, artifacts, receiver):
    service = make_service(runner=True, **FAST_RETRIES)
    receiver.start()
    webhook = register(service, receiver, "deletion_request.completed", "deletion_request.failed")
    assert webhook["secret"].startswith("whsec_")
    assert "secret" not in service.http.get("/v1/webhooks", headers=service.client.headers).json()["items"][0]

    model_id = model_of(service, artifacts)
    subject = artifacts.subject_with_train_samples()
    request = service.client.submit_deletion(model_id, subject_ids=[subject], parameters=service.tiny_ltu)
    assert service.client.wait(request.id, timeout=300).status == "completed"
    wait_until(lambda: receiver.received, timeout=30, what="the completed event")
    time.sleep(1.0)  # time for a duplicate to arrive, were there one
    ((headers, body, _),) = receiver.received
    event = verify(webhook["secret"], headers, body)
    assert event["type"] == "deletion_request.completed"
    assert (event["data"]["request_id"], event["data"]["status"]) == (request.id, "completed")
    assert subject not in body  # events name requests, never data subjects
    (delivery,) = deliveries(service, webhook)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("delivered", 1, 204)
    assert (delivery["event_id"], delivery["payload"]) == (headers["webhook-id"], event)

    replay = service.http.post(
        f"/v1/webhooks/{webhook['id']}/deliveries/{delivery['id']}/replay", headers=service.client.headers
    )
    assert replay.status_code == 202, replay.text
    assert (replay.json()["event_id"], replay.json()["replay_of"]) == (delivery["event_id"], delivery["id"])
    wait_until(lambda: len(receiver.received) == 2, timeout=30, what="the replayed event")
    headers_again, body_again, _ = receiver.received[1]
    assert verify(webhook["secret"], headers_again, body_again) == event
    assert headers_again["webhook-id"] == headers["webhook-id"]  # the receiver deduplicates by it
    assert [d["status"] for d in deliveries(service, webhook)] == ["delivered", "delivered"]


def test_the_celery_worker_delivers_from_its_own_lane(celery_service, artifacts, receiver):
    service = celery_service
    receiver.start()
    webhook = register(service, receiver, "deletion_request.completed")
    try:
        model_id = model_of(service, artifacts)
        subject = artifacts.subject_with_train_samples()
        request = service.client.submit_deletion(model_id, subject_ids=[subject], parameters=service.tiny_ltu)
        assert service.client.wait(request.id, timeout=300).status == "completed"
        wait_until(lambda: receiver.received, timeout=30, what="the completed event from the worker")
        ((headers, body, _),) = receiver.received
        assert verify(webhook["secret"], headers, body)["data"]["request_id"] == request.id
        wait_until(lambda: deliveries(service, webhook)[0]["status"] == "delivered", timeout=10, what="the log")
    finally:  # the stack is shared: later tests' events must not go to a receiver that is gone
        service.http.delete(f"/v1/webhooks/{webhook['id']}", headers=service.client.headers)


def test_a_receiver_that_is_down_then_failing_then_up_gets_the_event_once(delivering, artifacts, receiver):
    service = delivering()
    webhook = register(service, receiver, "deletion_request.cancelled")  # nothing listens on its port yet
    cancelled_request(service, artifacts)

    def retried() -> bool:
        (delivery,) = deliveries(service, webhook)
        return delivery["attempts"] >= 2 and delivery["status"] == "pending" and delivery["last_error"]

    wait_until(retried, timeout=30, what="failed attempts while the receiver is down")
    receiver.status = 500
    receiver.start()
    wait_until(lambda: receiver.received, timeout=30, what="an attempt reaching the failing receiver")
    receiver.status = 204
    wait_until(lambda: deliveries(service, webhook)[0]["status"] == "delivered", timeout=30, what="the delivery")
    arrived = len(receiver.received)
    time.sleep(2.0)  # longer than the capped backoff: an attempt after the success would have come by now
    assert len(receiver.received) == arrived >= 2  # the 500s, then the 204, nothing after
    (delivery,) = deliveries(service, webhook)
    assert (delivery["status"], delivery["last_status_code"]) == ("delivered", 204)
    assert delivery["attempts"] >= arrived + 2  # the attempts that found the port closed, and those that arrived
    for headers, body, _ in receiver.received:
        assert headers["webhook-id"] == delivery["event_id"]
        assert verify(webhook["secret"], headers, body)["type"] == "deletion_request.cancelled"
    gaps = [later - earlier for (_, _, earlier), (_, _, later) in zip(receiver.received, receiver.received[1:])]
    assert all(gap >= 0.25 for gap in gaps)  # the backoff, not a tight loop


def test_a_receiver_that_never_answers_well_gets_the_delivery_failed_after_the_last_attempt(
    delivering, artifacts, receiver
):
    service = delivering(webhook_max_attempts=3)
    receiver.status = 500
    receiver.start()
    webhook = register(service, receiver, "deletion_request.cancelled")
    cancelled_request(service, artifacts)
    wait_until(lambda: deliveries(service, webhook)[0]["status"] == "failed", timeout=30, what="the failed delivery")
    time.sleep(1.5)
    assert len(receiver.received) == 3
    (delivery,) = deliveries(service, webhook)
    assert (delivery["attempts"], delivery["last_status_code"], delivery["next_attempt_at"]) == (3, 500, None)


def test_registration_refuses_private_addresses_by_default_and_deletion_stops_deliveries(api):
    refused = api.http.post(
        "/v1/webhooks",
        json={"url": "http://127.0.0.1:9/x", "event_types": ["deletion_request.completed"]},
        headers=api.client.headers,
    )
    assert "LTU_WEBHOOK_ALLOW_PRIVATE_ADDRESSES" in problem(refused, 422)["detail"]
    unknown = api.http.post(
        "/v1/webhooks", json={"url": "https://hooks.example.com/x", "event_types": ["nope"]}, headers=api.client.headers
    )
    problem(unknown, 422)
    webhook = api.http.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/x", "event_types": ["erasure.completed"]},
        headers=api.client.headers,
    ).json()
    deleted = api.http.delete(f"/v1/webhooks/{webhook['id']}", headers=api.client.headers).json()
    assert deleted["deleted_at"] is not None
    assert api.http.get("/v1/webhooks", headers=api.client.headers).json()["items"] == []


def test_the_openapi_document_types_every_webhook_route(api):
    doc = api.http.get("/openapi.json").json()
    paths = {path: ops for path, ops in doc["paths"].items() if path.startswith("/v1/webhooks")}
    assert set(paths) == {
        "/v1/webhooks",
        "/v1/webhooks/{webhook_id}",
        "/v1/webhooks/{webhook_id}/deliveries",
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay",
    }
    for ops in paths.values():
        for op in ops.values():
            success = next(body for status, body in op["responses"].items() if status.startswith("2"))
            assert "$ref" in json.dumps(success["content"]["application/json"]["schema"])
    assert doc["components"]["schemas"]["WebhookCreate"]["properties"]["event_types"]["items"]["enum"] == list(
        EVENT_TYPES
    )

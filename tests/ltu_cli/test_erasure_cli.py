"""`ltu erasure`, `ltu subject locations` and the idempotency key of `ltu request submit`, against a
scripted service (httpx.MockTransport behind the commands' client): what each command sends, prints
and exits with. The routes themselves are tested in tests/api."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ltu_cli import erasure, request
from ltu_client import Client, verify_certificate
from ltu_client.certificates import key_id, signed_document
from tests.support import ltu

SIGNER = Ed25519PrivateKey.generate()


class FakeService:
    """The erasure routes of the contract over a dict; an erasure advances one status per poll."""

    def __init__(self) -> None:
        self.erasures: dict[str, dict] = {}
        self.received: list[httpx.Request] = []
        payload = json.dumps({"erasure": {"id": "e-1"}}, separators=(",", ":"))
        self.certificate = signed_document(
            payload, kid=key_id(SIGNER.public_key()), signature=SIGNER.sign(payload.encode())
        ).encode()

    def __call__(self, http_request: httpx.Request) -> httpx.Response:
        self.received.append(http_request)
        method, path = http_request.method, http_request.url.path
        if (method, path) == ("POST", "/v1/erasures"):
            return self._submit(json.loads(http_request.content))
        if (method, path) == ("POST", "/v1/deletion-requests"):
            return httpx.Response(202, json={"id": "r-9", "model_id": "m-1", "status": "received"})
        if (method, path) == ("GET", "/v1/erasures"):
            return httpx.Response(200, json={"items": list(self.erasures.values())[::-1], "next_cursor": None})
        if match := re.fullmatch(r"/v1/erasures/([^/]+)(/certificate)?", path):
            found = self.erasures.get(match[1])
            if found is None:
                return httpx.Response(404, json={"title": "Not Found", "detail": "no such erasure", "status": 404})
            if match[2]:
                return httpx.Response(200, content=self.certificate)
            return httpx.Response(200, json=self._advance(found), headers={"Retry-After": "2"})
        if (method, path) == ("POST", "/v1/subjects/locations"):
            return httpx.Response(200, json=self._locations(json.loads(http_request.content)["subject_id"]))
        return httpx.Response(404, json={"title": "Not Found", "status": 404})

    def _submit(self, body: dict) -> httpx.Response:
        erasure_id = f"e-{len(self.erasures) + 1}"
        self.erasures[erasure_id] = {
            "id": erasure_id,
            "status": "received",
            "subject_count": len(body["subject_ids"]),
            "subjects_not_found": 0,
            "received_at": "2026-12-01T10:00:00Z",
            "due_at": "2027-01-01T10:00:00Z",
            "finished_at": None,
            "requests": [
                {"request_id": f"r-{m}", "model_id": m, "status": "received", "progress": {}, "result_version": None}
                for m in body.get("model_ids") or ["m-1"]
            ],
            "dataset_purge": [{"dataset_id": "d-1", "samples": 3, "purged_samples": 0}],
        }
        return httpx.Response(202, json=self.erasures[erasure_id], headers={"Location": f"/v1/erasures/{erasure_id}"})

    @staticmethod
    def _advance(found: dict) -> dict:
        if found["status"] == "received":
            found["status"] = "running"
            for r in found["requests"]:
                r.update(status="running", progress={"phase": "unlearning", "step": 1, "total": 4})
        elif found["status"] == "running":
            found.update(status="completed", finished_at="2026-12-01T10:03:00Z")
            found["dataset_purge"][0]["purged_samples"] = 3
            for r in found["requests"]:
                r.update(status="completed", result_version=2)
        return found

    @staticmethod
    def _locations(subject: str) -> dict:
        return {
            "subject_hash": f"hash-of-{subject}",
            "datasets": [{"dataset_id": "d-1", "samples": 3, "erased_samples": 3, "purged_samples": 3}],
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


@pytest.fixture()
def fake(monkeypatch) -> FakeService:
    """The commands' client talks to a FakeService and never sleeps."""
    service = FakeService()

    def build_client(_args):
        http = httpx.Client(transport=httpx.MockTransport(service), base_url="http://ltu.test")
        return Client(api_key="ltu_cli-test", http=http, sleep=lambda _seconds: None)

    monkeypatch.setattr(erasure, "build_client", build_client)
    monkeypatch.setattr(request, "build_client", build_client)
    return service


def printed_key(err: str) -> str:
    return re.search(r"with Idempotency-Key (\S+)", err)[1]


def test_submit_sends_the_scopes_and_prints_its_key(fake, capsys):
    argv = ["erasure", "submit", "--subject", "alice", "--subject", "bob", "--model", "m-1", "--model", "m-2"]
    assert ltu(*argv, "--dataset", "d-1", "--param", "max_passes=1.0", "--json") == 0
    out, err = capsys.readouterr()
    sent = fake.received[0]
    assert json.loads(sent.content) == {
        "subject_ids": ["alice", "bob"],
        "model_ids": ["m-1", "m-2"],
        "dataset_ids": ["d-1"],
        "parameters": {"max_passes": 1.0},
    }
    key = sent.headers["Idempotency-Key"]
    assert printed_key(err) == key and json.loads(out)["idempotency_key"] == key
    assert json.loads(out)["status"] == "received"

    assert ltu("erasure", "submit", "--subject", "carol", "--idempotency-key", "dsar-7") == 0
    out, err = capsys.readouterr()
    assert fake.received[-1].headers["Idempotency-Key"] == "dsar-7" and printed_key(err) == "dsar-7"
    assert out.startswith("e-2  received  1 subjects (0 found nowhere)  due 2027-01-01")


def test_submit_and_wait_reports_each_change_and_the_outcome(fake, capsys):
    assert ltu("erasure", "submit", "--subject", "alice", "--wait") == 0
    out, err = capsys.readouterr()
    assert "e-1  running  running: unlearning 1/4" in err and "e-1  completed  completed → version 2" in err
    assert out.splitlines() == [
        "e-1  completed  1 subjects (0 found nowhere)  due 2027-01-01",
        "  model m-1  request r-m-1  completed → version 2",
        "  dataset d-1  purged 3/3 samples",
    ]


def test_status_wait_and_list(fake, capsys):
    assert ltu("erasure", "submit", "--subject", "alice") == 0
    capsys.readouterr()
    assert ltu("erasure", "status", "e-1") == 0
    assert "e-1  running" in capsys.readouterr().out
    assert ltu("erasure", "wait", "e-1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    assert ltu("erasure", "list", "--status", "completed", "--limit", "5") == 0
    assert re.match(r"e-1  2026-12-01 10:00:00  completed  1 subjects  1 models", capsys.readouterr().out)
    assert dict(fake.received[-1].url.params) == {"status": "completed", "limit": "5"}

    assert ltu("erasure", "status", "e-404") == 2  # a service error: one line, exit 2
    assert "404 Not Found: no such erasure" in capsys.readouterr().err


def test_certificate_is_written_byte_for_byte(fake, tmp_path, capsys):
    assert ltu("erasure", "submit", "--subject", "alice") == 0
    out_file = tmp_path / "certificate.json"
    assert ltu("erasure", "certificate", "e-1", "--out", str(out_file)) == 0
    assert verify_certificate(out_file.read_bytes(), SIGNER.public_key()) == {"erasure": {"id": "e-1"}}
    assert f"check it with: ltu certificate verify {out_file}" in capsys.readouterr().err
    assert ltu("erasure", "certificate", "e-1") == 0  # to stdout
    assert capsys.readouterr().out.encode() == fake.certificate


def test_subject_locations(fake, capsys):
    assert ltu("subject", "locations", "alice") == 0
    assert capsys.readouterr().out.splitlines() == [
        "subject hash-of-alice",
        "  dataset d-1  3 samples, 3 erased, 3 purged",
        "  model m-1 (dataset d-1)  current version 2; erased in version 2; versions holding the subject: 1",
    ]
    assert ltu("subject", "locations", "alice", "--json") == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["erased_in_version"] == 2


def test_request_submit_sends_and_prints_an_automatic_key(fake, capsys):
    assert ltu("request", "submit", "--model", "m-1", "--subject", "alice", "--json") == 0
    out, err = capsys.readouterr()
    key = fake.received[0].headers["Idempotency-Key"]
    assert printed_key(err) == key and json.loads(out)["idempotency_key"] == key

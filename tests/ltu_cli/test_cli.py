"""The service commands: request {submit,status,wait,list} against a live server, keys, migrate,
serve and the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import ltu

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def live(make_service, artifacts, monkeypatch):
    """A real HTTP server (uvicorn in a thread) over an embedded service, with LTU_URL/LTU_API_KEY set."""
    from ltu_cli.demo import start_server
    from ltu_cli.serve import build_app

    svc = make_service()
    app = build_app(svc.settings, embedded_runner=True)
    server, thread, url = start_server(app, 0)
    monkeypatch.setenv("LTU_URL", url)
    monkeypatch.setenv("LTU_API_KEY", svc.settings.api.admin_api_key)
    dataset = svc.client.register_dataset(artifacts.archive)
    model = svc.client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=artifacts.recipe)
    yield svc, url, model
    server.should_exit = True
    thread.join(timeout=30)


def test_request_commands_against_a_live_server(live, artifacts, capsys):
    svc, _, model = live
    subject = artifacts.subject_with_train_samples()
    params = [f"--param={k}={json.dumps(v)}" for k, v in svc.tiny_ltu.items()]
    assert (
        ltu(
            "request",
            "submit",
            "--model",
            model.id,
            "--subject",
            subject,
            *params,
            "--idempotency-key",
            "cli-1",
            "--wait",
            "--json",
        )
        == 0
    )
    submitted = json.loads(capsys.readouterr().out)
    assert submitted["status"] == "completed" and submitted["result_version"] == 2
    request_id = submitted["id"]

    assert ltu("request", "status", request_id) == 0
    assert f"{request_id}  completed  → version 2 sha256 {submitted['result_sha256']}" in capsys.readouterr().out
    assert ltu("request", "wait", request_id) == 0
    capsys.readouterr()
    assert ltu("request", "list", "--status", "completed") == 0
    assert request_id in capsys.readouterr().out
    assert ltu("request", "list", "--json", "--model", model.id) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["items"]] == [request_id]

    # User errors: one line on stderr, exit status 2.
    assert ltu("request", "status", "no-such-request") == 2
    assert "404" in capsys.readouterr().err
    assert ltu("request", "submit", "--model", model.id, "--subject", subject, "--param", "oops") == 2
    assert ltu("request", "status", request_id, "--api-key", "wrong-key-123456") == 2
    assert "401" in capsys.readouterr().err
    assert ltu("request", "status", request_id, "--url", "http://127.0.0.1:9") == 2
    assert "unreachable" in capsys.readouterr().err


def test_keys_and_migrate_commands(tmp_path, monkeypatch, capsys):
    from ltu_client import Client

    monkeypatch.setenv("LTU_HOME", str(tmp_path / "home"))
    for name in ("LTU_DATABASE_URL", "LTU_BROKER_URL", "LTU_ADMIN_API_KEY", "LTU_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert ltu("migrate") == 0
    assert (tmp_path / "home" / "ledger.db").is_file()
    assert ltu("keys", "create", "--tenant", "acme", "--scopes", "read,audit") == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("ltu_")
    assert ltu("keys", "create", "--scopes", "read,superpower") == 2
    assert "scopes" in capsys.readouterr().err

    from fastapi.testclient import TestClient

    from ltu_cli.common import load_settings
    from ltu_cli.serve import build_app

    app = build_app(load_settings(), embedded_runner=False)
    with TestClient(app) as http:
        client = Client(http=http, api_key=key)
        assert client.list_models() == []
        assert [e.action for e in client.audit_events()] == ["tenant.created", "api_key.created"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_the_embedded_service_under_ltu_home(tmp_path):
    port = _free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTU_")}
    env.update(LTU_HOME=str(home), PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "ltu_cli.main", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
            time.sleep(0.2)
        key = (home / "admin.key").read_text().strip()
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 200 and answer.json()["items"] == []
        assert (home / "ledger.db").is_file() and (home / "artifacts" / "models").is_dir()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_serve_says_where_its_admin_key_comes_from(tmp_path, monkeypatch, caplog, capsys):
    import uvicorn
    from fastapi.testclient import TestClient

    from ltu_cli import serve

    def start_and_stop(app, **_options):
        with TestClient(app):
            pass

    for name in [n for n in os.environ if n.startswith("LTU_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LTU_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(serve, "configure_logging", lambda: None)  # keep the records in caplog, not stderr
    monkeypatch.setattr(uvicorn, "run", start_and_stop)
    caplog.set_level("INFO")

    def admin_records() -> list[str]:
        return [r.getMessage() for r in caplog.records if "admin API key" in r.getMessage()]

    # Embedded, no LTU_ADMIN_API_KEY: the key is the generated admin.key, and nothing names the variable.
    assert ltu("serve") == 0
    assert admin_records() == ["admin API key registered for tenant 'default'"]
    assert f"admin API key in {tmp_path / 'home' / 'admin.key'}" in capsys.readouterr().err
    caplog.clear()
    key_file = tmp_path / "admin-key"
    key_file.write_text("ltu_" + "k3y-0f-th3-0p3rat0r-" * 2 + "\n")
    monkeypatch.setenv("LTU_ADMIN_API_KEY_FILE", str(key_file))
    assert ltu("serve") == 0
    assert admin_records() == ["admin API key registered for tenant 'default'"]
    assert "admin.key" not in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTU_HOME", str(tmp_path / "home"))
    for name in ("LTU_DATABASE_URL", "LTU_BROKER_URL", "LTU_ADMIN_API_KEY", "LTU_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    params = ["--param=max_passes=1.0", "--param=batch_size=4", "--param=attacker_steps=20"]
    assert ltu("demo", "--epochs", "1", "--width", "0.125", *params) == 0
    out = capsys.readouterr().out
    for expected in (
        "[1/5] dataset",
        "[5/5] result   completed",
        "status timeline",
        "TA  test accuracy",
        "reference models ready in",
        "audit after",
        "likelihood-ratio tier",
        "new version     2 (parent 1), sha256",
        "sha256 checked",
        "audit trail",
        "deletion_request.completed",
        "POST /v1/erasures",
        "2 models trained on the subject, one deletion request each",
        "signature valid (Ed25519",
        "dataset purge   dataset ",
    ):
        assert expected in out, out
    # One erasure reached both models: each published version 2 and the certificate names both.
    assert out.count("new version     2 (parent 1), sha256") == 2, out
    assert out.count("version 1 → 2 (sha256") == 2, out
    assert "versions [1] hold them, erased in version 2" in out.split("where is", 2)[-1], out
    # Both models erased the person, so the purge pass tombstoned their pixels in the stored dataset.
    assert re.search(r"purge pass .*: (\d+) erased sample\(s\) tombstoned in 1 stored dataset", out), out
    assert re.search(r"dataset purge   dataset \S+: (\d+) of the subject's \1 samples removed", out), out
    # The state stays in LTU_HOME for `ltu serve`.
    assert (tmp_path / "home" / "ledger.db").is_file() and (tmp_path / "home" / "admin.key").is_file()

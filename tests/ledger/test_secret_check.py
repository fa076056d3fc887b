"""A process started with another server secret than the ledger's refuses to start (it could open no tenant key);
rotation is an explicit command (what it keeps working: tests/ledger/test_tenant_keys.py)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time

import pytest

from ledger.errors import ConfigError
from tests.support import ADMIN_KEY, REPO, ltu

FIRST, SECOND = secrets.token_urlsafe(48), secrets.token_urlsafe(48)


def _serve(home, secret: str, *extra: str, port: int | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "LTU_HOME": str(home),
        "LTU_SECRET_KEY": secret,
        "LTU_ADMIN_API_KEY": ADMIN_KEY,
        "LTU_AUDIT_REFERENCE_MODELS": "0",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "ltu_cli.main", "serve", "--port", str(port or 9), *extra]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, process: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"ltu serve did not become ready:\n{process.communicate()[0][-3000:]}")


def test_a_second_ltu_serve_with_another_secret_refuses_to_start(tmp_path):
    port = _free_port()
    first = _serve(tmp_path, FIRST, port=port)  # the first start records the secret's check value
    try:
        _wait_ready(port, first)
        second = _serve(tmp_path, SECOND)
        output = second.communicate(timeout=60)[0]
        assert second.returncode == 2, output
        assert "LTU_SECRET_KEY is not the secret this ledger's tenant keys are wrapped by" in output
        assert "ltu secret rotate" in output and SECOND not in output and FIRST not in output
    finally:
        first.terminate()
        first.communicate(timeout=30)


def test_the_app_refuses_another_secret_at_start_and_records_the_first(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from ledger import migrate
    from ltu_settings import Settings

    settings = Settings.build(home=tmp_path, secret_key=FIRST, admin_api_key=ADMIN_KEY)
    migrate.upgrade(settings.ledger.database_url)
    with TestClient(create_app(settings)):
        assert _actions(settings) == ["server_secret.recorded"]
    with (
        pytest.raises(ConfigError, match="not the secret this ledger"),
        TestClient(create_app(settings.replace(secret_key=SECOND))),
    ):
        pass
    with TestClient(create_app(settings)) as http:  # the right secret still starts
        assert http.get("/readyz").status_code == 200


def test_a_ledger_unreadable_at_start_keeps_readiness_false_until_the_secret_is_checked(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from ledger import migrate
    from ledger.secret_check import check_secret_at
    from ltu_settings import Settings

    settings = Settings.build(home=tmp_path, secret_key=SECOND)
    with TestClient(create_app(settings)) as http:  # not migrated yet: the check cannot run
        migrate.upgrade(settings.ledger.database_url)
        assert check_secret_at(settings.ledger.database_url, FIRST, actor="test")
        answer = http.get("/readyz")
        assert answer.status_code == 503 and answer.json()["code"] == "secret_mismatch"


def test_a_celery_worker_with_another_secret_refuses_to_start(fresh_postgres_url, redis_url, tmp_path):
    from ledger.secret_check import check_secret_at

    assert check_secret_at(fresh_postgres_url, FIRST, actor="test")
    env = {
        **os.environ,
        "LTU_HOME": str(tmp_path),
        "LTU_DATABASE_URL": fresh_postgres_url,
        "LTU_BROKER_URL": redis_url,
        "LTU_SECRET_KEY": SECOND,
        "LTU_QUEUE": f"never-{secrets.token_hex(4)}",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "solo", "--without-mingle"]
    command += ["--without-gossip", "--without-heartbeat"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "not the secret this ledger's tenant keys are wrapped by" in output
    assert SECOND not in output


def _use(monkeypatch, home, secret: str) -> None:
    monkeypatch.setenv("LTU_HOME", str(home))
    monkeypatch.setenv("LTU_SECRET_KEY", secret)


def test_rotation_replaces_the_check_value_of_an_empty_ledger(tmp_path, monkeypatch, capsys):
    from ltu_settings import Settings

    new_key = tmp_path / "new.key"
    new_key.write_text(SECOND + "\n")
    _use(monkeypatch, tmp_path / "home", FIRST)
    assert ltu("migrate") == 0  # the first migrate records the check value
    _use(monkeypatch, tmp_path / "home", secrets.token_urlsafe(48))
    assert ltu("secret", "rotate", "--new-key-file", str(new_key)) == 2, "rotation needs the current secret"
    assert "not the secret this ledger" in capsys.readouterr().err
    _use(monkeypatch, tmp_path / "home", FIRST)
    assert ltu("secret", "rotate", "--new-key-file", str(new_key)) == 0
    capsys.readouterr()
    assert ltu("migrate") == 2 and "not the secret this ledger" in capsys.readouterr().err
    _use(monkeypatch, tmp_path / "home", SECOND)
    assert ltu("migrate") == 0
    settings = Settings.from_env()
    assert _actions(settings) == ["server_secret.recorded", "server_secret.rotated"]


def test_rotation_refuses_a_weak_new_secret_on_postgres(fresh_postgres_url, tmp_path, monkeypatch, capsys):
    _use(monkeypatch, tmp_path, FIRST)
    monkeypatch.setenv("LTU_DATABASE_URL", fresh_postgres_url)
    weak = tmp_path / "weak.key"
    weak.write_text("a" * 40 + "\n")
    assert ltu("secret", "rotate", "--new-key-file", str(weak)) == 2
    assert "--new-key-file: LTU_SECRET_KEY must be a random string" in capsys.readouterr().err


def _actions(settings) -> list[str]:
    from sqlalchemy import select

    from ledger.db import Database
    from ledger.tables import AuditEvent

    database = Database(settings.ledger.database_url)
    try:
        with database.session() as session:
            query = (
                select(AuditEvent.action).where(AuditEvent.resource_type == "server_secret").order_by(AuditEvent.seq)
            )
            return list(session.scalars(query))
    finally:
        database.dispose()

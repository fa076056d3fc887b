"""The compose deployment's two Postgres roles, on a real Postgres: the init script of the compose file
creates them, `ltu migrate --app-role` (as the owner) grants, and the application role runs the service
but cannot rewrite, delete or unprotect audit rows."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger.roles import TABLE_PRIVILEGES, app_role_grants
from ledger.tables import Base
from tests.support import ADMIN_KEY, POSTGRES_ADMIN_URL, REPO, TINY_LTU, ltu, unavailable

INIT_SCRIPT = REPO / "deploy" / "postgres-init" / "10-ltu-roles.sh"
COMPOSE_APP_ROLE = "ltu_app"
SECRET = secrets.token_urlsafe(48)


def test_every_table_has_its_privileges_and_the_readme_quotes_them_exactly():
    assert set(TABLE_PRIVILEGES) == set(Base.metadata.tables) | {"alembic_version"}
    assert set(TABLE_PRIVILEGES["audit_events"]) == {"SELECT", "INSERT"}
    readme = (REPO / "README.md").read_text()
    block = "\n".join(f"{statement};" for statement in app_role_grants(COMPOSE_APP_ROLE))
    assert f"```sql\n{block}\n```" in readme
    compose = (REPO / "docker-compose.yml").read_text()
    assert f'"--app-role", "{COMPOSE_APP_ROLE}"' in compose
    with pytest.raises(ValueError, match="role name"):
        app_role_grants('app"; DROP TABLE audit_events; --')


@pytest.fixture()
def roles(tmp_path, monkeypatch):
    """A database set up as the compose file does: owner and app roles of this test alone, dropped afterwards."""
    import psycopg

    if shutil.which("psql") is None:
        unavailable("psql is not installed (apt-get install -y postgresql-client)")
    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    suffix = secrets.token_hex(4)
    database, owner, app = f"ltu_roles_{suffix}", f"ltu_owner_{suffix}", f"ltu_app_{suffix}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
    except psycopg.Error as exc:
        unavailable(f"Postgres is not reachable at {admin} ({type(exc).__name__}: {exc})")
    server = POSTGRES_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]  # host:port
    urls = {role: f"postgresql+psycopg://{role}:{secrets.token_hex(16)}@{server}/{database}" for role in (owner, app)}
    (tmp_path / "ltu_owner_database_url").write_text(urls[owner] + "\n")
    (tmp_path / "ltu_app_database_url").write_text(urls[app] + "\n")
    try:
        _run_init_script(tmp_path, database, admin)
        monkeypatch.setenv("LTU_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("LTU_DATABASE_URL_FILE", str(tmp_path / "ltu_owner_database_url"))
        monkeypatch.setenv("LTU_SECRET_KEY", SECRET)
        assert ltu("migrate", "--app-role", app) == 0
        yield urls[owner], urls[app]
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{app}"')
            conn.execute(f'DROP ROLE IF EXISTS "{owner}"')


def _run_init_script(secrets_dir: Path, database: str, admin_url: str) -> None:
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    env = {
        "PATH": "/usr/bin:/bin",
        "LTU_SECRETS_DIR": str(secrets_dir),
        "POSTGRES_DB": database,
        "POSTGRES_USER": info.get("user", "postgres"),
        "PGHOST": info.get("host", "127.0.0.1"),
        "PGPORT": str(info.get("port", 5432)),
    }
    done = subprocess.run(["sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_app_role_runs_the_service_but_cannot_touch_audit_rows(roles, tmp_path, artifacts):
    from datetime import timedelta

    from fastapi.testclient import TestClient

    from api.app import create_app
    from ledger.artifacts import ArtifactStore
    from ledger.db import Database
    from ltu_client import Client
    from ltu_settings import Settings
    from worker import reconciler, retention
    from worker.runner import EmbeddedRunner

    _, app_url = roles
    settings = Settings.build(
        home=tmp_path / "home",
        database_url=app_url,
        secret_key=SECRET,
        admin_api_key=ADMIN_KEY,
        torch_threads=1,
        audit_reference_models=0,
        coalesce_window_seconds=0.0,
    )
    # Start-up (secret check, admin key), registrations, a submission and its whole job, as the app role.
    with TestClient(create_app(settings)) as http:
        assert http.get("/readyz").status_code == 200
        client = Client(http=http, api_key=ADMIN_KEY)
        dataset = client.register_dataset(artifacts.archive)
        model = client.register_model(artifacts.weights, dataset_id=dataset.id, recipe=artifacts.recipe)
        request = client.submit_deletion(
            model.id, subject_ids=[artifacts.subject_with_train_samples()], parameters=TINY_LTU
        )
        EmbeddedRunner(settings).run_pending()
        assert client.get_request(request.id).status == "completed"
        assert client.verify_audit()["valid"]
    # The loops of every worker: reconciler, outbox clean-up, purge of superseded weights.
    database = Database(app_url)
    try:
        reconciler.reconcile_once(database, settings)
        reconciler.reconcile_references_once(database, settings)
        reconciler.delete_old_dispatches(database, settings)
        store = ArtifactStore(settings.ledger.artifacts_dir)
        assert len(retention.purge_due(database, store, grace=timedelta(0))) == 1
    finally:
        database.dispose()
    _assert_refused_to(app_url)


FORBIDDEN = (
    "UPDATE audit_events SET actor = 'forged'",
    "DELETE FROM audit_events",
    "TRUNCATE audit_events",
    "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
    "ALTER TABLE audit_events DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_events_append_only ON audit_events",
    "DROP TABLE audit_events",
    "UPDATE server_secret_check SET check_value = 'x'",
    "DELETE FROM deletion_requests",
    "CREATE TABLE shadow (id int)",
    "SET session_replication_role = replica",
)


def _assert_refused_to(app_url: str) -> None:
    import psycopg

    with psycopg.connect(app_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM audit_events").fetchone()[0] > 0
        for statement in FORBIDDEN:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        owned = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)"
        ).fetchone()[0]
        assert owned == 0, "the application role must own nothing"

"""Helpers the tests share: constants, the CI rule for missing services, problem+json checks, keys, the CLI.

A plain module, not a test module: test files import it (never each other).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ADMIN_KEY = "ltu_test-admin-key-0123456789abcdef"
TINY_LTU = {"max_passes": 1.0, "batch_size": 4, "attacker_steps": 20}
POSTGRES_ADMIN_URL = os.environ.get("LTU_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_HOST_URL = os.environ.get("LTU_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = 11  # away from the default 0; every session also gets its own queue name


def unavailable(reason: str) -> None:
    """Fail under CI (the stack must be there), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


PROBLEM = "application/problem+json"


def new_key(service, *, scopes, tenant="default") -> str:
    """A key straight from the ledger (another tenant's, or with narrow scopes)."""
    from ledger import tenants
    from ledger.db import Database

    database = Database(service.settings.ledger.database_url)
    try:
        with database.transaction() as session:
            owner = tenants.ensure_tenant(session, name=tenant)
            _, secret = tenants.create_key(session, tenant_id=owner.id, name="test", scopes=scopes, actor="test")
    finally:
        database.dispose()
    return secret


def problem(response, status: int) -> dict:
    """Check a problem+json answer and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["code"]
    return body


def ltu(*argv: str) -> int:
    """Run `ltu ARGV` in-process with the console script's error handling (exit 2 on user errors)."""
    from ltu_cli.main import main

    return main(list(argv))


def load_bench_script(name: str):
    """A script of bench/ (`bench/<name>.py`) imported as module `bench_<name>`."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

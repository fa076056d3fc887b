"""Helpers the tests share: constants, the CI rule for missing services, problem+json checks, keys, the CLI.

A plain module, not a test module: test files import it (never each other).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def tenant_key(database, tenant_id: str, secret: str):
    """The tenant's live key (ledger.tenant_keys), created on first use: what the API hashes subject ids with."""
    from ledger import tenant_keys

    with database.transaction() as session:
        return tenant_keys.current(session, tenant_id=tenant_id, secret=secret)


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


# --- real processes (the e2e tests) ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    context: Callable[[], str] = str,
):
    """Poll `condition` until it returns something truthy; fail saying `what` (and `context()`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}", pytrace=False)
        time.sleep(interval)


class Process:
    """A child process with its output in a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no acknowledgement, no graceful shutdown."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


# --- the job on a registered model (the worker tests) ----------------------------------------------


def setup_model(service, artifacts, *, recipe=True):
    """Register the tiny dataset and model; `recipe`: True for the tiny trained recipe, a dict, or False for none."""
    dataset = service.client.register_dataset(artifacts.archive)
    return service.client.register_model(
        artifacts.weights, dataset_id=dataset.id, recipe=artifacts.recipe if recipe is True else (recipe or None)
    )


def job_context(service, **overrides):
    """A worker's JobContext over the service's settings (with `overrides`)."""
    from worker.context import JobContext

    return JobContext.from_settings(service.settings.replace(**overrides))


# --- erasures of a person (tests/ledger/test_ledger_erasures.py, tests/api/test_erasures.py) ---


@dataclass(frozen=True)
class Estate:
    """Two models trained on one dataset, and a third on a dataset of other people."""

    dataset_id: str
    model_ids: tuple[str, str]
    other_dataset_id: str
    other_model_id: str


def setup_estate(service, artifacts, root: Path) -> Estate:
    """Register the tiny dataset with two models, and a copy whose subjects are all renamed with a third."""
    from dataclasses import replace

    import numpy as np

    from ltu_core.data import pack_dataset, write_dataset

    client = service.client
    dataset = client.register_dataset(artifacts.archive)
    first, second = (
        client.register_model(artifacts.weights, dataset_id=dataset.id, name=name, recipe=artifacts.recipe)
        for name in ("first", "second")
    )
    strangers = replace(artifacts.dataset, subject_ids=np.char.add("stranger-", artifacts.dataset.subject_ids))
    write_dataset(strangers, root / "strangers")
    other = client.register_dataset(pack_dataset(root / "strangers", root / "strangers.tar"))
    third = client.register_model(artifacts.weights, dataset_id=other.id, name="third", recipe=artifacts.recipe)
    return Estate(dataset.id, (first.id, second.id), other.id, third.id)

"""Fault tests against real processes: the API (`ltu serve`), a Celery worker, Postgres and a Redis
server of each test's own, each fault injected for real (SIGKILL, a stopped Redis, a severed
Postgres connection). Each test is bounded in time; under CI=true a missing service fails.

What must hold every time: an accepted request (202) is never lost, never executed twice and
publishes exactly one version; a client mistake or an outage is never a 500.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ADMIN_KEY, REPO, TINY_LTU, Process, free_port, unavailable, wait_until

LEASE_SECONDS = 6  # a killed worker's request is presumed lost this long after its last heartbeat
# Unlearning parameters that keep a run in its unlearning phase for a few seconds on the tiny model.
SLOW_LTU = {**TINY_LTU, "max_passes": 60.0, "stop_rule": "none"}


class PostgresProxy:
    """A TCP proxy in front of Postgres that can sever every connection and refuse new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the port can be taken again
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # severed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def sever(self) -> None:
        """Postgres becomes unreachable: open connections are cut, new ones refused."""
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() and stops listening
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()


class Stack:
    """One test's service: Postgres (optionally behind a proxy), its own Redis, the API and a worker."""

    def __init__(self, root: Path, database_url: str, artifacts) -> None:
        self.root, self.artifacts = root, artifacts
        self.redis_port = free_port()
        self.api_port = free_port()
        self.processes: list[Process] = []
        self.redis: Process | None = None
        self.api: Process | None = None
        self.worker: Process | None = None
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = root / "certificate-key.pem"
        key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.database_url = database_url
        self.env = {
            **os.environ,
            "LTU_HOME": str(root),
            "LTU_DATABASE_URL": database_url,
            "LTU_BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "LTU_ARTIFACTS_DIR": str(root / "artifacts"),
            "LTU_SECRET_KEY": secrets.token_urlsafe(48),
            "LTU_ADMIN_API_KEY": ADMIN_KEY,
            "LTU_CERTIFICATE_KEY_FILE": str(key),
            "LTU_QUEUE": "gpu",
            "LTU_AUDIT_REFERENCE_MODELS": "0",
            "LTU_DEVICE": "cpu",
            "LTU_TORCH_THREADS": "1",
            "LTU_LEASE_SECONDS": str(LEASE_SECONDS),
            "LTU_RECONCILE_INTERVAL": "1",
            "LTU_MAX_ATTEMPTS": "3",
            "LTU_COALESCE_WINDOW_SECONDS": "0",
            "LTU_LOG_FORMAT": "text",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Process:
        process = Process(name, command, env or self.env, self.root / f"{name}.log")
        self.processes.append(process)
        return process

    def start(self) -> None:
        """Redis, the API and one worker."""
        self.start_redis()
        self.start_api()
        self.start_worker()

    def start_redis(self) -> None:
        """A Redis of this test alone, keeping nothing on disk (a restart loses every message)."""
        self.redis = self._spawn(
            "redis",
            [
                shutil.which("redis-server"),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        wait_until(lambda: _connects(self.redis_port), timeout=20, what="redis-server to listen")

    def start_api(self, database_url: str | None = None) -> None:
        env = {**self.env, "LTU_DATABASE_URL": database_url} if database_url else None
        self.api = self._spawn(
            "api", [sys.executable, "-m", "ltu_cli.main", "serve", "--port", str(self.api_port)], env
        )

        def healthy() -> bool:
            assert self.api.alive(), f"the API exited:\n{self.api.output()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, what="the API to answer")

    def start_worker(self) -> None:
        self.worker = self._spawn(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-P",
                "solo",
                "-c",
                "1",
                "-Q",
                "gpu",
                "-n",
                f"w{len(self.processes)}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
        )
        worker = self.worker

        def ready() -> bool:
            assert worker.alive(), f"the worker exited:\n{worker.output()}"
            return " ready." in worker.output()

        wait_until(ready, timeout=90, what="the Celery worker to start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def client(self):
        from ltu_client import Client

        return Client(self.url, ADMIN_KEY, timeout=30)

    def register_model(self):
        client = self.client()
        dataset = client.register_dataset(self.artifacts.archive)
        return client.register_model(self.artifacts.weights, dataset_id=dataset.id, recipe=self.artifacts.recipe)

    def wait_finished(self, request_ids: list[str], *, timeout: float) -> list:
        client = self.client()

        def finished():
            current = [client.get_request(r) for r in request_ids]
            return current if all(r.status in ("completed", "failed", "cancelled") for r in current) else None

        return wait_until(
            finished, timeout=timeout, what=f"requests {request_ids} to finish", interval=0.5, context=self.logs
        )

    def ledger(self):
        """Direct read access to the ledger (the checks do not trust the API)."""
        from ledger.db import Database

        return Database(self.database_url)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log.name}) ---\n{p.output()}" for p in self.processes)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture()
def stack(tmp_path, fresh_postgres_url, artifacts) -> Iterator[Stack]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not installed (the fault tests start a Redis of their own)")
    stack = Stack(tmp_path, fresh_postgres_url, artifacts)
    try:
        yield stack
    finally:
        stack.close()


def versions_of(stack: Stack, model_id: str) -> list[int]:
    return [v.number for v in stack.client().list_versions(model_id)]


def test_a_worker_killed_while_unlearning_is_replaced_and_the_request_completes_once(stack):
    stack.start()
    model = stack.register_model()
    client = stack.client()
    request = client.submit_deletion(
        model.id, subject_ids=[stack.artifacts.subject_with_train_samples()], parameters=SLOW_LTU
    )
    wait_until(
        lambda: client.get_request(request.id).progress.get("phase") == "unlearning",
        timeout=120,
        what="the job to reach its unlearning phase",
        context=stack.logs,
    )
    stack.worker.kill9()

    stack.start_worker()  # its reconciler finds the silent request once the lease has run out
    done = stack.wait_finished([request.id], timeout=150)[0]
    assert done.status == "completed", (done.error, stack.logs())
    assert done.attempts == 2
    assert versions_of(stack, model.id) == [2, 1]  # exactly one new version
    actions = [e.action for e in client.audit_events(request_id=request.id)]
    # The reconciler requeues once per lease (6 s) while the replacement worker starts (torch imports take
    # about that long on 2 cores), so the count of requeues is timing; exactly one completion is not.
    assert actions.count("deletion_request.requeued") >= 1 and actions.count("deletion_request.completed") == 1
    requeued = next(e for e in client.audit_events(request_id=request.id) if e.action == "deletion_request.requeued")
    assert requeued.data["reason"] == "worker_lost"


def test_requests_accepted_while_redis_is_down_run_once_it_is_back(stack):
    stack.start()
    model = stack.register_model()
    client = stack.client()
    stack.redis.kill9()

    submitted = [
        client.submit_deletion(
            model.id, subject_ids=[stack.artifacts.subject_with_train_samples(i)], parameters=TINY_LTU
        )
        for i in range(3)
    ]
    assert all(r.status in ("received", "queued") for r in submitted)  # 202: accepted into the ledger
    time.sleep(2)  # the relay tries, fails, and keeps the rows
    assert all(client.get_request(r.id).status == "received" for r in submitted)

    stack.start_redis()  # same port, empty: nothing was ever enqueued
    done = stack.wait_finished([r.id for r in submitted], timeout=150)
    assert all(r.status == "completed" for r in done), [(r.status, r.error) for r in done if r.status != "completed"]
    assert all(r.attempts == 1 for r in done)
    produced = {r.result_version for r in done}
    assert versions_of(stack, model.id) == sorted(produced | {1}, reverse=True)  # no version without a request


def test_postgres_unreachable_is_a_503_with_retry_after_and_nothing_is_half_written(stack):
    from sqlalchemy import func, select

    from ledger.tables import AuditEvent, DeletionRequest, OutboxMessage

    proxy = PostgresProxy(("127.0.0.1", 5432))
    proxy.start()
    stack.start_redis()
    stack.start_api(database_url=stack.database_url.replace(":5432/", f":{proxy.port}/"))
    model = stack.register_model()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": "outage-1"}
    body = {"model_id": model.id, "subject_ids": [stack.artifacts.subject_with_train_samples()]}

    def counts():
        database = stack.ledger()
        try:
            with database.session() as session:
                return tuple(
                    session.scalar(select(func.count()).select_from(t))
                    for t in (DeletionRequest, OutboxMessage, AuditEvent)
                )
        finally:
            database.dispose()

    before = counts()
    proxy.sever()
    for method, path, payload in (
        ("POST", "/v1/deletion-requests", body),
        ("GET", f"/v1/models/{model.id}", None),
        ("GET", "/readyz", None),
    ):
        answer = httpx.request(method, stack.url + path, json=payload, headers=headers, timeout=30)
        assert answer.status_code == 503, (path, answer.status_code, answer.text)
        assert int(answer.headers["Retry-After"]) > 0
        assert answer.headers["content-type"].startswith("application/problem+json")
    assert counts() == before  # nothing of the refused submission reached the ledger

    proxy.start()  # back: the same submission is accepted once
    first = httpx.post(stack.url + "/v1/deletion-requests", json=body, headers=headers, timeout=30)
    again = httpx.post(stack.url + "/v1/deletion-requests", json=body, headers=headers, timeout=30)
    assert first.status_code == 202 and again.status_code in (200, 202)
    assert first.json()["id"] == again.json()["id"]
    assert counts()[0] == before[0] + 1
    proxy.sever()


def test_an_api_killed_mid_burst_loses_no_accepted_request_and_duplicates_none(stack):
    """The API commits the request and its dispatch row together and enqueues nothing itself: killed
    at any point after the commit, the request still runs; a client retrying with its
    Idempotency-Key after a lost answer gets the same request, never a second one."""
    from sqlalchemy import select

    from ledger.tables import DeletionRequest

    stack.start_redis()
    stack.start_api()
    model = stack.register_model()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys = [f"burst-{i}" for i in range(24)]  # one subject each: none is erased twice
    accepted: dict[str, str] = {}

    def submit(key: str, index: int) -> None:
        body = {
            "model_id": model.id,
            "subject_ids": [stack.artifacts.subject_with_train_samples(index)],
            "parameters": TINY_LTU,
        }
        try:
            answer = httpx.post(
                stack.url + "/v1/deletion-requests", json=body, headers={**headers, "Idempotency-Key": key}, timeout=10
            )
        except httpx.HTTPError:
            return  # the answer was lost: the client does not know whether it was accepted
        if answer.status_code in (200, 202):
            accepted[key] = answer.json()["id"]

    # Four clients submit at once; the API is killed while their requests are in flight.
    pending = list(enumerate(keys))
    lock = threading.Lock()

    def client_loop() -> None:
        while True:
            with lock:
                if not pending:
                    return
                index, key = pending.pop(0)
            submit(key, index)

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(accepted) >= 4, timeout=60, what="the first submissions")
    stack.api.kill9()  # no worker runs yet: the API never enqueues anything itself
    for thread in threads:
        thread.join(timeout=60)
    assert 0 < len(accepted) < len(keys)

    stack.start_api()
    stack.start_worker()
    for i, key in enumerate(keys):  # clients retry what they did not get an answer for
        if key not in accepted:
            submit(key, i)
    assert set(accepted) == set(keys)
    done = stack.wait_finished(list(accepted.values()), timeout=150)
    assert all(r.status == "completed" for r in done), [(r.status, r.error) for r in done if r.status != "completed"]
    database = stack.ledger()
    try:
        with database.session() as session:
            rows = session.scalars(select(DeletionRequest).where(DeletionRequest.model_id == model.id)).all()
    finally:
        database.dispose()
    assert sorted(r.id for r in rows) == sorted(accepted.values())  # one request per key, none lost
    assert len({r.result_version for r in rows}) == len(versions_of(stack, model.id)) - 1

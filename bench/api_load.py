"""Load benchmark of the erasure API: Postgres, several uvicorn workers, erasure submissions and
status reads on loopback, then a check that every accepted (202) request is in the ledger; the same
load then drives a bare floor (bench/floor_app.py) and the two are compared, phase by phase.

    python bench/api_load.py --quick     # smoke: 200 submissions then 400 reads each, about a minute
    python bench/api_load.py             # 2000 submissions then 4000 reads, 2 workers, 16 in flight
    python bench/api_load.py --workers 4 --concurrency 32 --json /tmp/api_load-4w.json
    python bench/api_load.py --no-floor  # the service alone, no ratios
    python bench/api_load.py --interleaved  # submissions and reads mixed under one clock, no goals

(with the project's virtualenv, e.g. `.venv/bin/python bench/api_load.py`, from any directory;
it needs Postgres with trust auth on 127.0.0.1:5432, or a URL in --postgres). Where one
submission's and one read's time goes, statement by statement: bench/api_profile.py.

What it does, in order:

1. creates a throw-away database `ltu_bench_<random>` and migrates it (ledger.migrate.upgrade);
2. starts the API as a real server, `ltu serve --workers N`, on a free loopback port, configured
   through LTU_* variables like a deployment (Postgres ledger, a broker URL so no job runs
   in-process, a random LTU_SECRET_KEY and admin key);
3. registers a small synthetic dataset and an untrained tiny model through ltu_client, and creates
   a submit+read API key for the load (what an integration would hold);
4. warms up, then drives the load from this process (asyncio, --concurrency keep-alive HTTP/1.1
   connections, one request in flight on each) in two phases, each on its own clock: first every
   POST /v1/deletion-requests (a distinct Idempotency-Key each, naming a random subject that has
   training samples; bodies encoded before the clock starts), then every
   GET /v1/deletion-requests/{id} of a random id among those accepted. Every latency and status
   code is recorded; every non-2xx is reported; the CPU of the server's processes, of this client
   and of the whole machine during each phase is read from /proc (`--interleaved`: one seeded
   mix of both under one clock instead, where submissions/s and reads/s are fixed shares of the
   same total and their ratios to the floor cannot differ);
5. stops it and starts the bare floor the same way (uvicorn, as many workers, same database, its
   own table): FastAPI + pydantic + SQLAlchemy Core, one INSERT + COMMIT per POST, one SELECT by
   primary key per GET, no authentication, idempotency, rate limit, audit or outbox. The same
   client drives it with the same seed (same phases, operation order and subjects), warm-up
   included; `--floor-first` swaps the order, `--no-floor` skips it;
6. reads the database directly: each id the service answered with 202 must have its
   deletion_requests row, its request_samples, its outbox row and its `deletion_request.received`
   audit event ("lost: 0"), and the audit hash chain must verify (GET /v1/audit/verify); each id
   the floor answered with 202 must be in its table;
7. prints each server's table (operation | count | errors | ops/s | p50 | p95 | p99), then per
   phase the service's and the floor's ops/s, p99 and server CPU per request with their ratios,
   the client's CPU per request and share beside each, and whether issue 15's goals are met
   (reads ≥ 0.8 and submissions ≥ 0.5 of the floor's throughput, p99 under 2× the floor's, nothing
   lost: computed, never part of the exit status); writes --json; stops the servers and drops the
   database, also on Ctrl-C or failure.

What it measures and what it does not: the API and the ledger only. No Celery worker runs and the
outbox is not relayed (Redis is never touched), so every request stays `received`; reads see small
rows. Rate limiting is raised out of the way (LTU_RATE_LIMIT_*), so this is the service's raw
capacity, not the admission policy. Client, server and Postgres share this machine's cores over
loopback: the numbers are a regression yardstick for this machine, not a capacity plan, and the
ratios to the floor, measured minutes apart under the same conditions, say more than either
absolute row. The client's CPU share says when the load generator, not the server, set the pace:
the floor then looks slower than it is, and the ratios too kind to the service.

Exit status: 0 when nothing was lost, the chain verifies and (unless --allow-errors) no request
failed, the floor's included; 1 otherwise; 2 when the benchmark could not run (no Postgres, a
server did not start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "bench" / "results" / "api_load.json"
DEFAULT_POSTGRES = os.environ.get("LTU_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_BROKER = os.environ.get("LTU_BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")
# Far above anything this load sends: the benchmark measures capacity, not the admission policy.
UNLIMITED_RATE = 10**6  # per minute: the settings ceiling, far above what 2 cores can submit
# The synthetic dataset: 8x8 grey images, subjects of 3 samples → 667 subjects, 660 with training samples.
DATASET_SAMPLES = 2000
QUICK = {"submissions": 200, "reads": 400, "warmup": 20}
SERVER_START_TIMEOUT = 90.0  # seconds for every worker to import the API and finish its start-up
REQUEST_TIMEOUT = 30.0  # per request; a timeout is recorded as an error, never retried


class BenchError(RuntimeError):
    """The benchmark could not run (exit status 2); the message says why."""


# --- the server side --------------------------------------------------------------------------------


def _free_port() -> int:
    # Bound and released at once: uvicorn binds it again a moment later (a race only with another
    # process picking the same ephemeral port in between, which start-up would report).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """The uvicorn supervisor process, its log and its URL."""

    process: subprocess.Popen
    log: Path
    url: str

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The supervisor and its worker processes (for CPU accounting)."""
        return [self.process.pid, *_children(self.process.pid)]


@contextmanager
def running_server(env: dict[str, str], workers: int, log: Path) -> Iterator[Server]:
    """Start `ltu serve --workers N` on a free loopback port; yield once every worker has started."""
    port = _free_port()
    # Exactly how a deployment runs the API: `ltu serve --workers N`, one app per process, its JSON
    # access log included (at INFO, which also carries the per-worker start-up lines waited for).
    command = [
        sys.executable,
        "-m",
        "ltu_cli.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with _started(command, env, workers, log, port, what="the API server") as server:
        yield server


@contextmanager
def running_floor(database_url: str, workers: int, log: Path, http: str) -> Iterator[Server]:
    """Start the bare floor (bench/floor_app.py) under uvicorn with `workers` processes on a free loopback port."""
    port = _free_port()
    # uvicorn's own defaults but for its access log: the floor is what the framework costs, and the
    # service writes its access line through its own middleware (counted in its CPU, not here).
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(REPO / "bench"),
        "floor_app:app_from_env",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        http,
        "--no-access-log",
    ]
    env = {**os.environ, floor_app_module().DATABASE_URL_VARIABLE: database_url}
    with _started(command, env, workers, log, port, what="the floor server") as server:
        yield server


@contextmanager
def _started(
    command: list[str], env: dict[str, str], workers: int, log: Path, port: int, what: str
) -> Iterator[Server]:
    with open(log, "wb") as out:
        # A session of its own: a Ctrl-C in the terminal reaches only this script, whose finally
        # stops the server in order (uvicorn's supervisor then stops its workers).
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(process, log, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        # Wait for all workers, not just the first: requests would otherwise pile onto the early ones.
        while (log_text := server.log_tail(1 << 20)).count("Application startup complete") < workers:
            # A worker that fails to start is respawned by uvicorn's supervisor again and again:
            # its first traceback is the answer, not the time-out.
            if process.poll() is not None or "Traceback" in log_text or time.monotonic() > deadline:
                state = (
                    f"exited with status {process.returncode}"
                    if process.poll() is not None
                    else "failed"
                    if "Traceback" in log_text
                    else "timed out"
                )
                raise BenchError(f"{what} {state} before all {workers} workers started:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM: uvicorn's supervisor shuts its workers down gracefully
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the workers go with it
            process.wait()


# --- the database -----------------------------------------------------------------------------------


def _libpq(url: str) -> str:
    """psycopg wants postgresql://; SQLAlchemy URLs may carry +psycopg."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    """A fresh, migrated database (SQLAlchemy URL); dropped afterwards, connections and all."""
    import psycopg

    from ledger import migrate

    admin = _libpq(admin_url)
    name = f"ltu_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise BenchError(f"cannot create a database through {admin} ({type(exc).__name__}: {exc})") from None
    url = "postgresql+psycopg://" + admin.removeprefix("postgresql://").rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class LedgerCheck:
    """Every id the API accepted (202), looked up in the ledger afterwards."""

    accepted: int
    missing: dict[str, list[str]]  # what → ids without it
    unacknowledged: int  # rows no 202 reported (a request whose answer the client lost)
    dispatched: int  # outbox rows marked dispatched (must be 0: no relay runs)

    @property
    def lost(self) -> list[str]:
        return sorted({i for ids in self.missing.values() for i in ids})


def check_ledger(database_url: str, accepted_ids: list[str]) -> LedgerCheck:
    """Look every accepted id up in deletion_requests, request_samples, the outbox and the audit log."""
    import psycopg

    from ledger.outbox import ERASURE_TASK

    ids = sorted(set(accepted_ids))
    queries = {
        "request row": "SELECT id FROM deletion_requests WHERE id = ANY(%s)",
        "request samples": "SELECT DISTINCT request_id FROM request_samples WHERE request_id = ANY(%s)",
        "outbox row": "SELECT DISTINCT payload->>'request_id' FROM outbox "
        f"WHERE task_name = '{ERASURE_TASK}' AND payload->>'request_id' = ANY(%s)",
        "audit event": "SELECT DISTINCT request_id FROM audit_events "
        "WHERE action = 'deletion_request.received' AND request_id = ANY(%s)",
    }
    with psycopg.connect(_libpq(database_url), connect_timeout=5) as conn:
        missing = {}
        for what, query in queries.items():
            found = {row[0] for row in conn.execute(query, (ids,))}
            missing[what] = [i for i in ids if i not in found]
        total = conn.execute("SELECT count(*) FROM deletion_requests").fetchone()[0]
        dispatched = conn.execute("SELECT count(*) FROM outbox WHERE dispatched_at IS NOT NULL").fetchone()[0]
    return LedgerCheck(accepted=len(ids), missing=missing, unacknowledged=total - len(ids), dispatched=dispatched)


def floor_app_module():
    """bench/floor_app.py, imported by path (bench/ is no package): its table and its database variable."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_floor_app", REPO / "bench" / "floor_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_floor(database_url: str, accepted_ids: list[str]) -> list[str]:
    """The ids the floor answered 202 for that its table lacks (the floor must really commit to compare)."""
    import psycopg

    ids = sorted(set(accepted_ids))
    with psycopg.connect(_libpq(database_url), connect_timeout=5) as conn:
        found = {row[0] for row in conn.execute("SELECT id FROM floor_requests WHERE id = ANY(%s)", (ids,))}
    return [i for i in ids if i not in found]


# --- fixtures: a dataset and a model ------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    archive: Path
    weights: Path
    subjects: list[str]  # subject ids with at least one training sample


def build_fixture(root: Path, seed: int) -> Fixture:
    """A synthetic dataset archive and an untrained tiny ResNet-18 on it (no job runs, so untrained is fine)."""
    import numpy as np
    import torch

    from ltu_core.data import make_synthetic, pack_dataset, write_dataset
    from ltu_core.models import ArchConfig, build_model, save_model

    torch.set_num_threads(1)  # a few ms of work; spinning threads would only steal from the server later
    dataset = make_synthetic(num_samples=DATASET_SAMPLES, num_classes=4, image_size=8, seed=seed)
    archive = pack_dataset(write_dataset(dataset, root / "dataset"), root / "dataset.tar")
    arch = ArchConfig("resnet18", num_classes=4, in_chans=1, img_size=8, width=0.125)
    weights = save_model(build_model(arch, seed=seed), arch, root / "model.safetensors")
    subjects = np.unique(dataset.subject_ids[dataset.split_indices("train")])
    return Fixture(archive, weights, [str(s) for s in subjects])


# --- the load ---------------------------------------------------------------------------------------

SUBMIT, READ, MIXED = "submit", "read", "mixed"
REQUESTS_PATH = "/v1/deletion-requests"
# The row a phase is judged by: its own operation, or the total of an interleaved mix.
PHASE_OPERATION = {SUBMIT: SUBMIT, READ: READ, MIXED: "all"}
PHASE_NAMES = {SUBMIT: "submissions", READ: "reads", MIXED: "interleaved"}


@dataclass
class Record:
    op: str
    status: int  # HTTP status; 0 when no answer came (connection error, timeout)
    seconds: float
    error: str | None = None  # why a 2xx was not a success, or the transport error


@dataclass
class LoadResult:
    records: list[Record] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)  # ids answered 202, in answer order
    wall_seconds: float = 0.0


class TransportError(Exception):
    """No answer came (refused, reset, closed early, timed out, malformed); the message is its kind."""


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection of the load generator, one request at a time.

    The client shares the cores with the server, so its CPU per request is taken from the server:
    httpx's AsyncClient spent 3-7 ms of CPU a request here (more the more connections it pools),
    more than the floor server spends answering, so it set the floor's pace. This speaks only the
    HTTP/1.1 both servers answer with (Content-Length bodies, keep-alive) for about 0.2 ms.
    A connection that fails is closed, and the next request opens a new one; nothing is retried.
    """

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.fixed_headers = f"Host: {parts.netloc}\r\nAuthorization: Bearer {api_key}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: bytes, path: bytes, body: bytes = b"", headers: bytes = b"") -> Answer:
        """Send one request (`headers`: ready-made `Name: value\\r\\n` lines) and read its whole answer."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                length = b"Content-Length: %d\r\n" % len(body) if body else b""
                self.writer.write(
                    b"%s %s HTTP/1.1\r\n%s%s%s\r\n%s" % (method, path, self.fixed_headers, headers, length, body)
                )
                head = (await self.reader.readuntil(b"\r\n\r\n"))[:-4].decode("latin-1").split("\r\n")
                _version, status_text, *reason = head[0].split(" ", 2)
                status = int(status_text)
                fields = dict(line.split(":", 1) for line in head[1:])
                answer_headers = {name.strip().lower(): value.strip() for name, value in fields.items()}
                if "content-length" not in answer_headers:  # chunked: never sent by these JSON routes
                    raise ValueError("an answer without Content-Length")
                answer_body = await self.reader.readexactly(int(answer_headers["content-length"]))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            raise TransportError(type(exc).__name__) from None
        if answer_headers.get("connection", "").lower() == "close":
            await self.close()
        return Answer(status, " ".join(reason), answer_headers, answer_body)

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()


def plans(submissions: int, reads: int, *, interleaved: bool, rng: random.Random) -> list[tuple[str, list[str]]]:
    """The phases of one load, in order, each a name and its operations.

    Phased (the default): every submission, then every read, each phase on its own clock, so that
    each operation's throughput is its own. Interleaved: one seeded shuffle of both under one clock,
    where submissions/s and reads/s are fixed shares of the same total.
    """
    if interleaved:
        plan = [SUBMIT] * submissions + [READ] * reads
        rng.shuffle(plan)
        return [(MIXED, plan)] if plan else []
    return [(op, [op] * count) for op, count in ((SUBMIT, submissions), (READ, reads)) if count]


async def drive_load(
    connections: list[Connection],
    plan: list[str],
    *,
    model_id: str,
    subjects: list[str],
    rng: random.Random,
    key_prefix: str,
    readable: list[str],
) -> LoadResult:
    """Run the operations of `plan` in order, one request in flight on each connection at a time.

    Reads pick a random id among those accepted so far (`readable` seeds that pool, e.g. with the
    submission phase's ids), the way clients poll the requests they submitted. Submission bodies
    and headers are encoded before the clock starts: the load generator shares the cores with the
    server, so every millisecond of its CPU per request is one the server does not get.
    """
    plan = list(plan)
    if not readable and READ in plan and SUBMIT in plan:
        plan.remove(SUBMIT)
        plan.insert(0, SUBMIT)  # something must be accepted before the first read
    prepared = {
        index: (
            json.dumps({"model_id": model_id, "subject_ids": [rng.choice(subjects)]}).encode(),
            f"Content-Type: application/json\r\nIdempotency-Key: {key_prefix}-{index}\r\n".encode(),
        )
        for index, op in enumerate(plan)
        if op == SUBMIT
    }
    queue = iter(enumerate(plan))  # shared by the tasks; asyncio switches only at awaits
    result = LoadResult()
    pool = list(readable)
    submits_left = len(prepared)
    readable_event = asyncio.Event()  # set once a read can pick an id (or never will)
    if pool or not submits_left:
        readable_event.set()

    async def submit(connection: Connection, index: int) -> None:
        nonlocal submits_left
        body, headers = prepared[index]
        started = time.perf_counter()
        try:
            response = await connection.request(b"POST", REQUESTS_PATH.encode(), body, headers)
        except TransportError as exc:
            result.records.append(Record(SUBMIT, 0, time.perf_counter() - started, str(exc)))
        else:
            elapsed = time.perf_counter() - started
            error = None
            if response.status == 202:
                request_id = _answer_id(response)
                if request_id and response.headers.get("location") == f"{REQUESTS_PATH}/{request_id}":
                    result.accepted.append(request_id)
                    pool.append(request_id)
                    readable_event.set()
                else:
                    error = "202 without the request id and its Location"
            elif 200 <= response.status < 300:
                error = f"expected 202, got {response.status}"
            else:
                error = _problem(response)
            result.records.append(Record(SUBMIT, response.status, elapsed, error))
        finally:
            submits_left -= 1
            if not submits_left:
                readable_event.set()  # nothing more will be accepted: waiting reads must not hang

    async def read(connection: Connection) -> None:
        await readable_event.wait()  # not timed: this is the load's ordering, not the server's latency
        if not pool:
            result.records.append(Record(READ, 0, 0.0, "nothing accepted to read"))
            return
        request_id = rng.choice(pool)
        started = time.perf_counter()
        try:
            response = await connection.request(b"GET", f"{REQUESTS_PATH}/{request_id}".encode())
        except TransportError as exc:
            result.records.append(Record(READ, 0, time.perf_counter() - started, str(exc)))
            return
        elapsed = time.perf_counter() - started
        error = None
        if response.status != 200:  # a 404 here means an accepted request is not readable
            error = _problem(response)
        elif _answer_id(response) != request_id:
            error = "200 with another request's body"
        result.records.append(Record(READ, response.status, elapsed, error))

    async def worker(connection: Connection) -> None:
        for index, op in queue:
            if op == SUBMIT:
                await submit(connection, index)
            else:
                await read(connection)

    started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in connections))
    result.wall_seconds = time.perf_counter() - started
    return result


def _answer_id(response: Answer) -> str | None:
    """The `id` of a JSON object answer, or None (a malformed answer is an error, not a crash)."""
    try:
        body = json.loads(response.body)
    except ValueError:
        return None
    return body.get("id") if isinstance(body, dict) else None


def _problem(response: Answer) -> str:
    """`<status> <code>: <detail>` of an error answer (problem+json), shortened."""
    try:
        body = json.loads(response.body)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    text = f"{response.status} {body.get('code') or response.reason}"
    detail = body.get("detail") or body.get("title")
    return f"{text}: {str(detail)[:120]}" if detail else text


# --- statistics -------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (an observed value; no interpolation between two requests); None if empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(records: list[Record], wall_seconds: float) -> dict[str, dict[str, Any]]:
    """Per operation and overall: count, errors, ops/s over the load's wall time, latency percentiles (ms).

    Percentiles cover every request that got an answer, errors included (a fast 500 is a served
    request too; the errors column says how many there were).
    """
    rows = {}
    for op in (SUBMIT, READ, "all"):
        mine = [r for r in records if op == "all" or r.op == op]
        answered = sorted(r.seconds * 1000 for r in mine if r.status)
        rows[op] = {
            "count": len(mine),
            "errors": sum(r.error is not None for r in mine),
            "ops_per_s": _round(len(mine) / wall_seconds if wall_seconds else None, 2),
            "p50_ms": _round(percentile(answered, 50), 3),
            "p95_ms": _round(percentile(answered, 95), 3),
            "p99_ms": _round(percentile(answered, 99), 3),
            "max_ms": _round(answered[-1] if answered else None, 3),
            "status_codes": dict(sorted(Counter(str(r.status) for r in mine).items())),
        }
    return rows


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table (pastes into the README as is)."""
    names = {SUBMIT: "POST /v1/deletion-requests", READ: "GET /v1/deletion-requests/{id}", "all": "all"}
    header = ("operation", "count", "errors", "ops/s", "p50 ms", "p95 ms", "p99 ms")

    body = [
        (
            names[op],
            str(r["count"]),
            str(r["errors"]),
            _num(r["ops_per_s"], 0),
            _num(r["p50_ms"], 1),
            _num(r["p95_ms"], 1),
            _num(r["p99_ms"], 1),
        )
        for op, r in rows.items()
    ]
    return _markdown(header, body)


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _markdown(header: tuple[str, ...], body: list[tuple[str, ...]], left: tuple[int, ...] = (0,)) -> str:
    """A markdown table, the `left` columns left-aligned, the others right-aligned (pastes into the README as is)."""
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        padded = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i in left else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in body)])


# --- CPU accounting (Linux /proc; absent elsewhere) --------------------------------------------------


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after the parenthesised name
                kids.append(int(entry.name))
    return kids


def _process_cpu(pids: list[int]) -> float | None:
    """User + system CPU seconds of live processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _machine_busy() -> float | None:
    """Busy CPU seconds of the whole machine, all processes (/proc/stat), or None."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is already in user


def _threads(pid: int) -> int | None:
    """The number of threads of a live process (/proc/<pid>/status), or None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")), None)


def _process_threads(server: Server) -> list[dict[str, Any]]:
    """Each of the server's processes (the supervisor first): its command line and thread count."""

    def command(pid: int) -> str | None:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
        except OSError:
            return None

    return [{"pid": pid, "command": command(pid), "threads": _threads(pid)} for pid in server.pids()]


def _cpu_model() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def _load_average() -> str | None:
    """The 1, 5 and 15 minute load averages, e.g. "1.02 0.80 0.41", or None."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


@dataclass
class CpuMeter:
    """CPU seconds used during one phase by this client, the server's processes and the whole machine."""

    server: Server
    start: dict[str, float | None] = field(default_factory=dict)
    used: dict[str, float | None] = field(default_factory=dict)
    # Each server process's own share: uvicorn's workers accept the keep-alive connections as they
    # come, and one worker holding most of them runs most of the load on one core.
    by_process: dict[int, float] = field(default_factory=dict)
    _start_by_process: dict[int, float | None] = field(default_factory=dict)

    def _sample_processes(self) -> dict[int, float | None]:
        return {pid: _process_cpu([pid]) for pid in self.server.pids()}

    def _sample(self) -> dict[str, float | None]:
        times = os.times()
        return {
            "client": times.user + times.system,
            "server": _process_cpu(self.server.pids()),
            "machine": _machine_busy(),
        }

    def __enter__(self) -> Self:
        self._start_by_process = self._sample_processes()
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        end_by_process = self._sample_processes()
        self.by_process = {
            pid: end_by_process[pid] - before
            for pid, before in self._start_by_process.items()
            if before is not None and end_by_process.get(pid) is not None
        }
        self.used = {k: (end[k] - v if v is not None and end[k] is not None else None) for k, v in self.start.items()}


# --- the run ----------------------------------------------------------------------------------------


def server_env(database_url: str, broker_url: str, home: Path, admin_key: str) -> dict[str, str]:
    """The API workers' environment: a deployment's LTU_* variables, rate limits raised."""
    return {
        **os.environ,
        "LTU_HOME": str(home),
        "LTU_ARTIFACTS_DIR": str(home / "artifacts"),
        "LTU_DATABASE_URL": database_url,
        # Set so the API does not run jobs in-process; nothing consumes it (no worker, no relay).
        "LTU_BROKER_URL": broker_url,
        "LTU_SECRET_KEY": secrets.token_urlsafe(48)[:48],
        "LTU_ADMIN_API_KEY": admin_key,
        "LTU_RATE_LIMIT_PER_MINUTE": str(UNLIMITED_RATE),
        "LTU_RATE_LIMIT_BURST": str(UNLIMITED_RATE),
        # No LTU_CERTIFICATE_KEY_FILE: outside embedded mode the API then serves no certificates,
        # which no operation here needs.
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:  # --no-optional-locks: never refresh (write) the index of a tree others are editing
            out = subprocess.run(
                ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def versions() -> dict[str, str | None]:
    """Versions of what both servers run on (the floor's cost is mostly theirs)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("fastapi", "starlette", "pydantic", "sqlalchemy", "psycopg", "uvicorn", "h11", "httptools", "uvloop"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@dataclass
class Phase:
    """One measured stretch of the load: its requests, its own wall time and the CPU used meanwhile."""

    load: LoadResult
    cpu: dict[str, float | None]
    server_cpu_by_process: dict[int, float]

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        return summarize(self.load.records, self.load.wall_seconds)

    def cpu_ms_per_request(self, who: str) -> float | None:
        """CPU milliseconds per request of `who` ("server" or "client") during this phase."""
        used = self.cpu.get(who)
        return used * 1000 / len(self.load.records) if used is not None and self.load.records else None

    @property
    def client_cpu_share(self) -> float | None:
        """The load generator's CPU seconds per wall second: near 1 it, not the server, sets the pace."""
        used = self.cpu.get("client")
        return used / self.load.wall_seconds if used is not None and self.load.wall_seconds else None

    def json(self) -> dict[str, Any]:
        return {
            "operations": self.rows,
            "wall_seconds": round(self.load.wall_seconds, 3),
            "cpu_seconds": {k: _round(v, 3) for k, v in self.cpu.items()},
            "server_cpu_seconds_by_process": {pid: round(v, 3) for pid, v in self.server_cpu_by_process.items()},
            "server_cpu_ms_per_request": _round(self.cpu_ms_per_request("server"), 3),
            "client_cpu_ms_per_request": _round(self.cpu_ms_per_request("client"), 3),
            "client_cpu_share": _round(self.client_cpu_share, 3),
        }


@dataclass
class Measured:
    """One server's run of the client pattern: the warm-up, then each measured phase in order."""

    warm: LoadResult
    phases: dict[str, Phase]
    threads: list[dict[str, Any]]  # of the server's processes, right after the load

    @property
    def accepted(self) -> list[str]:
        return self.warm.accepted + [i for phase in self.phases.values() for i in phase.load.accepted]

    @property
    def rows(self) -> dict[str, dict[str, Any]]:
        """This server's table: each phase's own operation row (a mix's rows as they are)."""
        if MIXED in self.phases:
            return self.phases[MIXED].rows
        return {op: phase.rows[op] for op, phase in self.phases.items()}

    @property
    def errors(self) -> Counter:
        records = self.warm.records + [r for phase in self.phases.values() for r in phase.load.records]
        return Counter(r.error for r in records if r.error)

    def json(self) -> dict[str, Any]:
        return {
            "warmup": {"operations": summarize(self.warm.records, self.warm.wall_seconds)},
            "phases": {name: phase.json() for name, phase in self.phases.items()},
            "threads": self.threads,
            "errors": dict(self.errors),
            "accepted": len(set(self.accepted)),
        }


def drive(server: Server, *, api_key: str, model_id: str, subjects: list[str], args: argparse.Namespace) -> Measured:
    """Warm up, then each phase under its own CpuMeter; a fresh Random(seed) per server, so that the
    service and the floor get the same operations in the same order with the same subjects."""
    return asyncio.run(_drive(server, api_key=api_key, model_id=model_id, subjects=subjects, args=args))


async def _drive(
    server: Server, *, api_key: str, model_id: str, subjects: list[str], args: argparse.Namespace
) -> Measured:
    rng = random.Random(args.seed)
    # One keep-alive connection per request in flight, for the whole run: opened in the warm-up,
    # not inside a measured phase.
    connections = [Connection(server.url, api_key) for _ in range(args.concurrency)]
    try:

        async def load(plan: list[str], key_prefix: str, readable: list[str]) -> LoadResult:
            return await drive_load(
                connections,
                plan,
                model_id=model_id,
                subjects=subjects,
                rng=rng,
                key_prefix=key_prefix,
                readable=readable,
            )

        # Warm-up: connections, first imports and query plans of every worker, in the same phases;
        # not in the statistics (the service's 202s are checked in the ledger like the others).
        warm = LoadResult()
        for name, plan in plans(args.warmup, args.warmup, interleaved=args.interleaved, rng=rng):
            done = await load(plan, f"warm-{name}", warm.accepted)
            warm.records += done.records
            warm.accepted += done.accepted
            warm.wall_seconds += done.wall_seconds
        phases = {}
        readable = list(warm.accepted)
        for name, plan in plans(args.submissions, args.reads, interleaved=args.interleaved, rng=rng):
            with CpuMeter(server) as cpu:
                done = await load(plan, f"load-{name}", readable)
            readable += done.accepted
            phases[name] = Phase(done, cpu.used, cpu.by_process)
    finally:
        for connection in connections:
            await connection.close()
    return Measured(warm, phases, _process_threads(server))


@dataclass
class ServiceRun:
    measured: Measured
    chain: dict[str, Any]
    server_log: str


def run_service(args: argparse.Namespace, database_url: str, fixture: Fixture, root: Path, t0: float) -> ServiceRun:
    """`ltu serve`: register the dataset, model and a load key, drive the load, verify the audit chain."""
    from ltu_client import ApiError, Client

    admin_key = "ltu_" + secrets.token_urlsafe(32)
    env = server_env(database_url, args.broker_url, root / "home", admin_key)
    with running_server(env, args.workers, root / "server.log") as server:
        setup_seconds = time.perf_counter() - t0
        try:
            with Client(server.url, admin_key) as admin:
                dataset = admin.register_dataset(fixture.archive, name="bench-synthetic")
                model = admin.register_model(fixture.weights, dataset_id=dataset.id, name="bench-tiny")
                load_key = admin.create_api_key("bench-load", ["submit", "read"])["key"]
        except ApiError as exc:
            raise BenchError(f"registering the dataset and model failed: {exc}\n{server.log_tail()}") from None
        print(
            f"api_load: service {server.url} ready, database {database_url.rsplit('/', 1)[1]}, "
            f"dataset {dataset.id} ({len(fixture.subjects)} subjects with training samples), "
            f"model {model.id}; set-up {setup_seconds:.1f} s"
        )
        measured = drive(server, api_key=load_key, model_id=model.id, subjects=fixture.subjects, args=args)
        try:  # the chain is sealed under an advisory lock: concurrent commits must not fork it
            with Client(server.url, admin_key) as admin:
                chain = admin.verify_audit()
        except ApiError as exc:
            chain = {"valid": False, "broken": f"GET /v1/audit/verify: {exc}"}
        return ServiceRun(measured, chain, server.log_tail(1 << 20))


def run_floor(args: argparse.Namespace, database_url: str, fixture: Fixture, root: Path) -> Measured:
    """The bare floor on its own table of the same database, driven exactly like the service."""
    floor_app_module().create_table(database_url)
    with running_floor(database_url, args.workers, root / "floor.log", args.floor_http) as server:
        print(f"api_load: floor {server.url} ready (bench/floor_app.py, uvicorn --http {args.floor_http})")
        # The same shape of body as the service gets; the floor checks no model, so any id does.
        return drive(server, api_key="floor", model_id="floor-model", subjects=fixture.subjects, args=args)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def comparison(service: Measured, floor: Measured) -> dict[str, dict[str, float | None]]:
    """Service over floor, phase by phase: throughput, p99 and server CPU per request."""
    ratios = {}
    for name, mine in service.phases.items():
        theirs, op = floor.phases[name], PHASE_OPERATION[name]
        ratios[name] = {
            "ops_per_s": _ratio(mine.rows[op]["ops_per_s"], theirs.rows[op]["ops_per_s"]),
            "p99_ms": _ratio(mine.rows[op]["p99_ms"], theirs.rows[op]["p99_ms"]),
            "server_cpu_ms_per_request": _ratio(mine.cpu_ms_per_request("server"), theirs.cpu_ms_per_request("server")),
        }
    return ratios


def comparison_table(service: Measured, floor: Measured, workers: int) -> str:
    """Per phase: the service's row, the floor's row and their ratio, with the client's CPU beside each."""
    ratios = comparison(service, floor)
    header = ("phase", "server", "ops/s", "p99 ms", "server CPU ms/req", "client CPU ms/req", "client CPU share")

    def cells(phase: Phase, op: str) -> tuple[str, ...]:
        share = phase.client_cpu_share
        return (
            _num(phase.rows[op]["ops_per_s"], 0),
            _num(phase.rows[op]["p99_ms"], 1),
            _num(phase.cpu_ms_per_request("server"), 2),
            _num(phase.cpu_ms_per_request("client"), 2),
            "–" if share is None else f"{share:.0%}",
        )

    body = []
    for name, ratio in ratios.items():
        op = PHASE_OPERATION[name]
        body += [
            (PHASE_NAMES[name], f"`ltu serve --workers {workers}`", *cells(service.phases[name], op)),
            ("", "bare floor", *cells(floor.phases[name], op)),
            (
                "",
                "service / floor",
                _num(ratio["ops_per_s"], 2),
                _num(ratio["p99_ms"], 2),
                _num(ratio["server_cpu_ms_per_request"], 2),
                "",
                "",
            ),
        ]
    return _markdown(header, body, left=(0, 1))


# Issue 15's goals, against the bare floor at the same concurrency, phase by phase.
READS_THROUGHPUT_GOAL = 0.8  # service reads/s ÷ floor reads/s, at least
SUBMISSIONS_THROUGHPUT_GOAL = 0.5  # service submissions/s ÷ floor INSERTs/s, at least
P99_GOAL = 2.0  # service p99 ÷ floor p99, below


def goals(ratios: dict[str, dict[str, float | None]], lost: int) -> dict[str, dict[str, Any]]:
    """Each goal's measured value and whether it is met (None: that phase did not run)."""

    def judged(value: float | None, bound: float, at_least: bool) -> dict[str, Any]:
        met = None if value is None else value >= bound if at_least else value < bound
        return {"value": value, "goal": f"{'>=' if at_least else '<'} {bound}", "met": met}

    def ratio(phase: str, what: str) -> float | None:
        return ratios.get(phase, {}).get(what)

    return {
        "reads_throughput_ratio": judged(ratio(READ, "ops_per_s"), READS_THROUGHPUT_GOAL, at_least=True),
        "submissions_throughput_ratio": judged(ratio(SUBMIT, "ops_per_s"), SUBMISSIONS_THROUGHPUT_GOAL, at_least=True),
        "reads_p99_ratio": judged(ratio(READ, "p99_ms"), P99_GOAL, at_least=False),
        "submissions_p99_ratio": judged(ratio(SUBMIT, "p99_ms"), P99_GOAL, at_least=False),
        "lost": {"value": lost, "goal": "0", "met": lost == 0},
    }


def goals_line(judged: dict[str, dict[str, Any]]) -> str:
    def verdict(goal: dict[str, Any]) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[goal["met"]]

    def part(label: str, key: str, bound: str) -> str:
        goal = judged[key]
        return f"{label} {_num(goal['value'], 2)} ({bound}: {verdict(goal)})"

    return "goals (issue 15, service / floor): " + "; ".join(
        [
            part("reads/s", "reads_throughput_ratio", f"≥ {READS_THROUGHPUT_GOAL}"),
            part("submissions/s", "submissions_throughput_ratio", f"≥ {SUBMISSIONS_THROUGHPUT_GOAL}"),
            part("reads p99", "reads_p99_ratio", f"< {P99_GOAL}"),
            part("submissions p99", "submissions_p99_ratio", f"< {P99_GOAL}"),
            f"lost {judged['lost']['value']} ({verdict(judged['lost'])})",
        ]
    )


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cpus = os.cpu_count() or 1
    load_before = _load_average()  # other work on the machine skews every number: say how much there was
    order = ["service"] if args.no_floor else ["floor", "service"] if args.floor_first else ["service", "floor"]
    phase_order = [
        name for name, _ in plans(args.submissions, args.reads, interleaved=args.interleaved, rng=random.Random())
    ]
    config = {
        "workers": args.workers,
        "concurrency": args.concurrency,
        "submissions": args.submissions,
        "reads": args.reads,
        "warmup": args.warmup,
        "seed": args.seed,
        "load": "interleaved" if args.interleaved else "phased",
        "phases": phase_order,
        "order": order,
        "dataset_samples": DATASET_SAMPLES,
        "floor_http": None if args.no_floor else args.floor_http,
    }
    shape = (
        "interleaved in one seeded order"
        if args.interleaved
        else "all submissions, then reads of the accepted ids, each phase on its own clock"
    )
    print(
        f"api_load: {args.workers} uvicorn workers, concurrency {args.concurrency}, "
        f"{args.submissions} submissions + {args.reads} reads ({shape}; +{args.warmup} warm-up of each), "
        f"{cpus} CPUs shared by client, server workers and Postgres (loopback); "
        f"order: {', then '.join(order)}, one at a time"
    )
    print(
        f"api_load: rate limits raised to {UNLIMITED_RATE}/min (burst {UNLIMITED_RATE}) for the benchmark; "
        "no Celery worker or relay runs, so requests stay `received`"
    )

    floor = None
    with tempfile.TemporaryDirectory(prefix="ltu-bench-") as tmp:
        root = Path(tmp)
        with throwaway_database(args.postgres) as database_url:
            fixture = build_fixture(root, args.seed)
            for name in order:
                if name == "service":
                    service_run = run_service(args, database_url, fixture, root, t0)
                else:
                    floor = run_floor(args, database_url, fixture, root)
            # Both servers are stopped: every answered request's transaction has ended.
            service = service_run.measured
            accepted = service.accepted
            ledger = check_ledger(database_url, accepted)
            floor_lost = check_floor(database_url, floor.accepted) if floor else []

    chain, server_log = service_run.chain, service_run.server_log
    errors = service.errors
    warm_errors = sum(r.error is not None for r in service.warm.records)
    server_errors = server_log.count("Traceback")
    total_seconds = time.perf_counter() - t0
    lost = ledger.lost
    ratios = comparison(service, floor) if floor else None
    judged = goals(ratios, len(lost)) if ratios is not None and not args.interleaved else None

    print()
    print(f"service (`ltu serve --workers {args.workers}`):")
    print(table(service.rows))
    if floor:
        print()
        print(f"bare floor (bench/floor_app.py, uvicorn --workers {args.workers} --http {args.floor_http}):")
        print(table(floor.rows))
        print()
        print(comparison_table(service, floor, args.workers))
        print(
            "(server CPU: the uvicorn supervisor and workers; client CPU: this process; client CPU share: its "
            "CPU seconds per wall second of the phase, near 100% the load generator sets the pace)"
        )
    if judged:
        print(goals_line(judged))
    elif floor:
        print("goals (issue 15): not judged on an interleaved mix, whose per-operation ratios are one ratio")
    print()
    for name, measured in (("service", service), ("floor", floor)):
        for phase_name, phase in measured.phases.items() if measured else ():
            used = phase.cpu
            if all(used.get(k) is not None for k in ("client", "server", "machine")):
                capacity = cpus * phase.load.wall_seconds
                split = ", ".join(f"{v:.1f}" for v in sorted(phase.server_cpu_by_process.values(), reverse=True))
                print(
                    f"{name} {PHASE_NAMES[phase_name]}: {phase.load.wall_seconds:.1f} s wall; CPU (of "
                    f"{capacity:.1f} core-seconds): load generator {used['client']:.1f} s, server processes "
                    f"{used['server']:.1f} s (by process: {split}), whole machine {used['machine']:.1f} s "
                    f"({used['machine'] / capacity:.0%} busy; the rest is Postgres and whatever else runs here)"
                )
    print(f"total {total_seconds:.1f} s (set-up, warm-up, loads, checks, teardown)")
    print(f"load average before the run: {load_before}")
    for error, n in errors.most_common(10):
        print(f"error x{n}: {error}")
    if warm_errors:
        print(f"warm-up: {warm_errors} of {len(service.warm.records)} requests failed")
    if server_errors:
        print(f"server log: {server_errors} traceback(s); last lines:\n{server_log[-3000:]}")
    if floor:
        for error, n in floor.errors.most_common(10):
            print(f"floor error x{n}: {error}")
        if floor_lost:
            print(f"floor: {len(floor_lost)} id(s) answered 202 that its table lacks")

    print(
        f"ledger: {ledger.accepted} ids answered 202 (warm-up included); "
        + ", ".join(f"{len(ids)} without {what}" for what, ids in ledger.missing.items())
    )
    if ledger.unacknowledged:
        print(f"ledger: {ledger.unacknowledged} request row(s) no 202 reported (answers lost on the way back)")
    if ledger.dispatched:
        print(f"ledger: {ledger.dispatched} outbox row(s) dispatched although no relay runs")
    print(
        f"audit chain: {'valid' if chain.get('valid') else 'BROKEN ' + json.dumps(chain.get('broken'))}, "
        f"{chain.get('checked')} events"
    )
    print(f"lost: {len(lost)}" + (f"  {' '.join(lost[:50])}{' …' if len(lost) > 50 else ''}" if lost else ""))

    failures = []
    if lost:
        failures.append(f"{len(lost)} accepted request(s) missing from the ledger")
    if not chain.get("valid"):
        failures.append("the audit chain does not verify")
    if ledger.accepted != len(accepted):
        duplicates = len(accepted) - ledger.accepted
        failures.append(f"{duplicates} distinct Idempotency-Keys were answered with an id already given")
    if errors and not args.allow_errors:
        failures.append(f"{sum(errors.values())} request(s) failed (--allow-errors to accept)")
    if floor and floor.errors and not args.allow_errors:
        failures.append(f"{sum(floor.errors.values())} floor request(s) failed: the ratios compare nothing")
    if floor_lost:
        failures.append(f"the floor's table lacks {len(floor_lost)} id(s) it answered 202 for")

    if args.json:
        record = {
            "benchmark": "api_load",
            "config": config,
            "environment": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpu_count": cpus,
                "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                "cpu_model": _cpu_model(),
                "machine_note": f"loopback; {cpus} CPUs shared by the load generator, "
                f"{args.workers} uvicorn workers and Postgres; no Celery worker; service and floor one at a time",
                "rate_limits": f"raised to {UNLIMITED_RATE} per minute and burst",
                "versions": versions(),
                "service_http": "h11 (api.http_protocol.ProblemH11Protocol)",
                "thread_variables": {
                    name: os.environ.get(name)
                    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                },
                **_git(),
            },
            "total_seconds": round(total_seconds, 2),
            "load_average_before": load_before,
            "service": service.json() | {"server_tracebacks": server_errors},
            "ledger": {
                "accepted": ledger.accepted,
                "missing": {k: len(v) for k, v in ledger.missing.items()},
                "lost": lost,
                "unacknowledged_rows": ledger.unacknowledged,
                "dispatched_outbox_rows": ledger.dispatched,
            },
            "audit_chain": chain,
            "floor": None if floor is None else floor.json() | {"http": args.floor_http, "lost": floor_lost},
            "service_over_floor": ratios,
            "goals": judged,
            "passed": not failures,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"results: {args.json}")
    for failure in failures:
        print(f"api_load: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/api_load.py",
        description="Load benchmark of the erasure API on Postgres with several uvicorn workers (loopback): "
        "throughput and p50/p95/p99 of erasure submissions and status reads, then a check that "
        "every accepted (202) request is in the ledger. No Celery worker runs.",
        epilog="Exit status: 0 pass; 1 an accepted request is missing, the audit chain is broken or a request "
        "failed; 2 the benchmark could not run.",
    )
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight from the client (default 16)")
    parser.add_argument("--submissions", type=int, default=2000, help="POST /v1/deletion-requests (default 2000)")
    parser.add_argument("--reads", type=int, default=4000, help="GET /v1/deletion-requests/{id} (default 4000)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="submissions and as many reads before the measured load, not in the statistics (default 100)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK['submissions']} submissions, {QUICK['reads']} reads, "
        f"{QUICK['warmup']} warm-up (overrides those three; writes no results unless --json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the dataset, the operation order and the subjects")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help=f"write the results here (default {DEFAULT_JSON.relative_to(REPO)}; none with --quick)",
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="a Postgres URL allowed to CREATE and DROP DATABASE (default LTU_BENCH_POSTGRES_URL "
        f"or {DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--broker-url",
        default=DEFAULT_BROKER,
        help="LTU_BROKER_URL of the API; never connected to, it only turns off the in-process runner "
        f"(default LTU_BENCH_BROKER_URL or {DEFAULT_BROKER})",
    )
    parser.add_argument("--allow-errors", action="store_true", help="exit 0 even if some requests failed")
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="one seeded mix of submissions and reads under one clock instead of the two phases "
        "(what clients do at once; its per-operation throughputs are shares of one total, so no goals)",
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="drive only the service, not the bare floor (bench/floor_app.py) after it: no ratios",
    )
    parser.add_argument(
        "--floor-first",
        action="store_true",
        help="drive the floor before the service (to see whether the order moves the ratios)",
    )
    parser.add_argument(
        "--floor-http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="uvicorn --http of the floor (default auto: httptools if installed; the service always runs h11)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.submissions, args.reads, args.warmup = QUICK["submissions"], QUICK["reads"], QUICK["warmup"]
    elif args.json is None:
        args.json = DEFAULT_JSON
    for name in ("workers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    for name in ("submissions", "reads", "warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be 0 or more")
    if not args.broker_url:
        parser.error("--broker-url must be set: without it the API would run erasure jobs in its own processes")
    if args.no_floor and args.floor_first:
        parser.error("--floor-first needs the floor: drop --no-floor")
    if args.reads and not (args.submissions or args.warmup):
        parser.error("reads need something to read: --submissions or --warmup must be positive")
    return args


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop the server and drop the database.

    Re-raised as SIGINT because asyncio.run turns that into a clean cancellation of the load;
    a KeyboardInterrupt raised inside a task would leave asyncio complaining about it.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(args)
    except BenchError as exc:
        print(f"api_load: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("api_load: interrupted; the server is stopped and the database dropped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Where one erasure submission and one status read spend their time: statement by statement, round trip
by round trip, function by function. What bench/api_load.py measures from outside, taken apart.

    python bench/api_profile.py --quick     # 30 of each timed and profiled, well under a minute
    python bench/api_profile.py             # 200 of each
    python bench/api_profile.py --json /tmp/api_profile.json

(with the project's virtualenv, from any directory; Postgres as for bench/api_load.py, --postgres).

The app is the one a `ltu serve --workers N` process builds (ltu_cli.serve.app_from_env, the same
LTU_* environment as api_load.py: Postgres ledger, broker mode, rate limits raised), run in this
process through Starlette's TestClient on a throw-away database, with the same synthetic dataset,
model and submit+read key. Its log lines are formatted as in production and written to /dev/null.
After a warm-up, three passes over the two routes of the load, POST /v1/deletion-requests and
GET /v1/deletion-requests/{id}:

1. statements: one submission, then one read of it. Every SQL statement (SQLAlchemy's
   before/after_cursor_execute), every BEGIN psycopg sends before a transaction's first
   statement, every COMMIT and ROLLBACK that reaches the server, every pool pre-ping: its time
   and where it came from (the innermost and the outermost frame in api/ or ledger/). The round
   trips are counted again on the wire, from libpq's protocol trace (each Query or Sync message);
2. timing: --repeat of each, uninstrumented but for the statement hooks; per request the wall
   time inside the ASGI app, the time waiting on Postgres (statements, BEGIN, COMMIT, pings) and
   the rest (Python), medians; the statement count of each request (its min and max show whether
   it varies) and how many times the request hopped to a worker thread (anyio.to_thread);
3. cProfile: --repeat of each, with those thread hops run inline so that cProfile, which sees one
   thread, sees all of the request. The top functions by cumulative time, and the own time
   summed by package (sqlalchemy, psycopg, pydantic, fastapi, starlette, api, ledger, ...).

What it leaves out: HTTP parsing and the socket (uvicorn's h11 protocol, measured only by
api_load.py), contention between concurrent requests (one request at a time here), and Postgres's
own CPU beyond the waits. cProfile roughly doubles Python's time; its shares, not its
milliseconds, are the figure to read (the timing pass gives the milliseconds).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import logging
import os
import platform
import pstats
import re
import secrets
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
PROJECT_DIRS = tuple(str(REPO / d) + os.sep for d in ("api", "ledger"))
QUICK = {"repeat": 30, "warmup": 10}
SUBMIT_PATH = "/v1/deletion-requests"


def _load_api_load():
    spec = importlib.util.spec_from_file_location("bench_api_load", REPO / "bench" / "api_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


api_load = _load_api_load()


# --- the statement recorder -------------------------------------------------------------------------


@dataclass
class Statement:
    kind: str  # SELECT, INSERT, ..., or BEGIN / COMMIT / ROLLBACK / PING (no SQL of the app's own)
    sql: str
    ms: float
    origin: str | None  # innermost ← outermost frame in api/ or ledger/


@dataclass
class Recorder:
    """SQLAlchemy events and wrapped dialect calls: every round trip of the requests while `active`."""

    engine: Any
    with_stacks: bool = False
    active: bool = False
    statements: list[Statement] = field(default_factory=list)
    traced: dict[int, Any] = field(default_factory=dict)  # id(dbapi connection) → connection, while tracing
    trace_file: Any = None
    wire: list[str] | None = None  # the last traced recording's round trips as sent
    _started: dict[int, float] = field(default_factory=dict)

    def install(self) -> None:
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        dialect = self.engine.dialect
        for name, kind in (("do_commit", "COMMIT"), ("do_rollback", "ROLLBACK"), ("do_ping", "PING")):
            setattr(dialect, name, self._timed_call(getattr(dialect, name), kind))

    def _origin(self) -> str | None:
        if not self.with_stacks:
            return None
        frames = [f for f in traceback.extract_stack()[:-3] if f.filename.startswith(PROJECT_DIRS)]
        if not frames:
            return None

        def name(f: traceback.FrameSummary) -> str:
            return f"{Path(f.filename).relative_to(REPO)}:{f.lineno} {f.name}"

        inner, outer = frames[-1], frames[0]
        return name(inner) if inner is outer else f"{name(inner)} ← {name(outer)}"

    def _idle(self, dbapi_connection: Any) -> bool:
        """True when psycopg will send BEGIN (one round trip of its own) before the next statement."""
        from psycopg import pq

        return not dbapi_connection.autocommit and dbapi_connection.info.transaction_status == pq.TransactionStatus.IDLE

    def _note_begin(self, dbapi_connection: Any, origin: str | None) -> None:
        if self._idle(dbapi_connection):
            begin = "BEGIN READ ONLY" if dbapi_connection.read_only else "BEGIN"
            self.statements.append(Statement("BEGIN", begin, 0.0, origin))  # its time is in the statement's

    def _trace(self, dbapi_connection: Any) -> None:
        from psycopg import pq

        if self.trace_file is not None and id(dbapi_connection) not in self.traced:
            dbapi_connection.pgconn.trace(self.trace_file.fileno())
            dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            self.traced[id(dbapi_connection)] = dbapi_connection

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if not self.active:
            return
        dbapi_connection = conn.connection.dbapi_connection
        self._trace(dbapi_connection)
        origin = self._origin()
        self._note_begin(dbapi_connection, origin)
        self.statements.append(Statement(statement.split(None, 1)[0].upper(), statement, 0.0, origin))
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        started = self._started.pop(id(cursor), None)
        if self.active and started is not None:
            self.statements[-1].ms = (time.perf_counter() - started) * 1000

    def _timed_call(self, call: Callable[[Any], Any], kind: str) -> Callable[[Any], Any]:
        def timed(connection: Any) -> Any:
            if not self.active:
                return call(connection)
            # do_commit and do_rollback get the pool's proxy, do_ping the psycopg connection itself.
            dbapi_connection = getattr(connection, "dbapi_connection", connection)
            self._trace(dbapi_connection)
            # A COMMIT or ROLLBACK outside a transaction sends nothing; SQLAlchemy's psycopg dialect pings
            # in autocommit (no BEGIN), once per pool checkout (pool_pre_ping).
            sends = kind == "PING" or not self._idle(dbapi_connection)
            started = time.perf_counter()
            try:
                return call(connection)
            finally:
                if sends:
                    ms = (time.perf_counter() - started) * 1000
                    self.statements.append(Statement(kind, kind, ms, self._origin()))

        return timed

    @contextmanager
    def recording(self, *, stacks: bool, trace: bool = False) -> Iterator[list[Statement]]:
        """Record the round trips of what runs inside; `trace` also lists them on the wire (libpq's
        protocol trace: each Query or Sync message the client sends waits for the server) in `wire`."""
        self.statements, self.with_stacks, self.active, self.wire = [], stacks, True, None
        with tempfile.TemporaryFile() if trace else nullcontext() as trace_file:
            self.trace_file = trace_file
            try:
                yield self.statements
            finally:
                self.active, self.trace_file = False, None
                for dbapi_connection in self.traced.values():
                    dbapi_connection.pgconn.untrace()  # flushes what libpq buffered
                self.traced.clear()
            if trace_file is not None:
                trace_file.seek(0)
                sent = [line.split("\t") for line in trace_file.read().decode(errors="replace").splitlines()]
                self.wire = [
                    " ".join(f[3:]).strip()[:80] or f[2]
                    for f in sent
                    if f[:1] == ["F"] and f[2:3] in (["Query"], ["Sync"])
                ]


def round_trips(statements: list[Statement]) -> int:
    """BEGINs, statements, COMMITs, ROLLBACKs and pings: each waits for the server once."""
    return len(statements)


def db_ms(statements: list[Statement]) -> float:
    return sum(s.ms for s in statements)


# --- the app under the microscope -------------------------------------------------------------------


class TimedApp:
    """ASGI wrapper: the wall time of each HTTP request inside the app (middlewares included), and
    cProfile switched on around it when a profiler is set."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.profiler: cProfile.Profile | None = None
        self.last_seconds = 0.0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        profiler = self.profiler
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            await self.app(scope, receive, send)
        finally:
            if profiler is not None:
                profiler.disable()
            self.last_seconds = time.perf_counter() - started


@dataclass
class ThreadHops:
    """Counts anyio.to_thread.run_sync calls (FastAPI's sync routes and dependencies); can run them inline."""

    inline: bool = False
    count: int = 0

    @contextmanager
    def installed(self) -> Iterator[ThreadHops]:
        import anyio.to_thread

        original = anyio.to_thread.run_sync

        async def run_sync(func, *args, **kwargs):
            self.count += 1
            if self.inline:
                return func(*args)
            return await original(func, *args, **kwargs)

        anyio.to_thread.run_sync = run_sync
        try:
            yield self
        finally:
            anyio.to_thread.run_sync = original


def _silence_logs() -> None:
    """Keep formatting every log record (part of a request's cost) but write it nowhere."""
    sink = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    for handler in logging.getLogger().handlers:
        # The service's console handler only: another one (a test runner's capture) keeps its own stream.
        if isinstance(handler, logging.StreamHandler) and handler.stream in consoles:
            handler.setStream(sink)


# --- reports ----------------------------------------------------------------------------------------


def _bucket(filename: str) -> str:
    """The package a profiled function belongs to: a site-package, a directory of this repo, stdlib or C."""
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C)"
    if filename.startswith(str(REPO) + os.sep):
        return Path(filename).relative_to(REPO).parts[0]
    match = re.search(r"site-packages[/\\]([^/\\]+)", filename)
    if match:
        return match.group(1).removesuffix(".py")
    return "stdlib"


def _where(filename: str, lineno: int, name: str) -> str:
    if filename.startswith("~"):
        return name
    if filename.startswith(str(REPO) + os.sep):
        path = str(Path(filename).relative_to(REPO))
    else:
        match = re.search(r"site-packages[/\\](.*)", filename)
        path = match.group(1) if match else re.sub(r".*[/\\]lib[/\\]python[0-9.]+[/\\]", "", filename)
    return f"{path}:{lineno} {name}"


def profile_summary(profiler: cProfile.Profile, requests: int, top: int) -> dict[str, Any]:
    """Per request: own time summed per package, the project's functions (api/, ledger/) by cumulative
    time, and the hot spots (any function) by own time."""
    stats = pstats.Stats(profiler).stats  # (file, line, name) → (primitive calls, calls, own s, cumulative s, callers)
    total = sum(own for _, _, own, _, _ in stats.values())
    by_package: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, own, _, _) in stats.items():
        by_package[_bucket(filename)] += own

    def rows(items: list) -> list[dict[str, Any]]:
        return [
            {
                "function": _where(*key),
                "calls_per_request": round(calls / requests, 2),
                "own_ms_per_request": round(own * 1000 / requests, 3),
                "cumulative_ms_per_request": round(cumulative * 1000 / requests, 3),
            }
            for key, (_, calls, own, cumulative, _) in items
        ]

    project = [item for item in stats.items() if item[0][0].startswith(PROJECT_DIRS)]
    return {
        "requests": requests,
        "profiled_ms_per_request": round(total * 1000 / requests, 3),
        "own_ms_per_request_by_package": {
            k: round(v * 1000 / requests, 3) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "project_by_cumulative": rows(sorted(project, key=lambda item: item[1][3], reverse=True)[:top]),
        "hot_by_own": rows(sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]),
    }


def statements_table(statements: list[dict[str, Any]]) -> str:
    header = ("#", "kind", "ms", "statement", "from")
    body = [
        (str(i), s["kind"], f"{s['ms']:.2f}", _shorten(s["sql"], 70), s["origin"] or "–")
        for i, s in enumerate(statements, 1)
    ]
    return api_load._markdown(header, body, left=(1, 3, 4))


def _shorten(sql: str, width: int) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def timing_table(timing: dict[str, dict[str, Any]]) -> str:
    header = ("route", "requests", "wall ms", "Postgres ms", "Python ms", "statements", "round trips", "thread hops")
    body = []
    for route, t in timing.items():
        counts = t["statements_min_max"]
        body.append(
            (
                route,
                str(t["requests"]),
                f"{t['wall_ms_median']:.2f}",
                f"{t['db_ms_median']:.2f}",
                f"{t['python_ms_median']:.2f}",
                f"{counts[0]}" if counts[0] == counts[1] else f"{counts[0]}–{counts[1]}",
                f"{t['round_trips_median']:.0f}",
                f"{t['thread_hops_per_request']:.1f}",
            )
        )
    return api_load._markdown(header, body)


def package_table(profiles: dict[str, dict[str, Any]], rows: int) -> str:
    routes = list(profiles)
    packages = []
    for profile in profiles.values():
        for name in profile["own_ms_per_request_by_package"]:
            if name not in packages:
                packages.append(name)
    header = ("package (own time)", *(f"{r} ms" for r in routes), *(f"{r} %" for r in routes))
    body = []
    for name in packages[:rows]:
        own = [profiles[r]["own_ms_per_request_by_package"].get(name, 0.0) for r in routes]
        shares = [o / profiles[r]["profiled_ms_per_request"] for o, r in zip(own, routes, strict=True)]
        body.append((name, *(f"{o:.2f}" for o in own), *(f"{s:.0%}" for s in shares)))
    return api_load._markdown(header, body)


def functions_table(functions: list[dict[str, Any]]) -> str:
    header = ("cumulative ms", "own ms", "calls", "function")
    body = [
        (
            f"{f['cumulative_ms_per_request']:.3f}",
            f"{f['own_ms_per_request']:.3f}",
            f"{f['calls_per_request']:g}",
            f["function"],
        )
        for f in functions
    ]
    return api_load._markdown(header, body, left=(3,))


# --- the run ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from ltu_cli.serve import app_from_env
    from ltu_client import Client

    t0 = time.perf_counter()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="ltu-profile-") as tmp:
        root = Path(tmp)
        with api_load.throwaway_database(args.postgres) as database_url:
            fixture = api_load.build_fixture(root, args.seed)
            admin_key = "ltu_" + secrets.token_urlsafe(32)
            # The app reads its configuration from LTU_* variables, as `ltu serve` does; restored afterwards.
            stack.enter_context(
                mock.patch.dict(
                    os.environ, api_load.server_env(database_url, args.broker_url, root / "home", admin_key)
                )
            )
            app = app_from_env()
            _silence_logs()
            recorder = Recorder(app.state.database.engine)
            recorder.install()
            timed = TimedApp(app)
            with TestClient(timed, base_url="http://bench") as http:
                admin = Client(http=http, api_key=admin_key)
                dataset = admin.register_dataset(fixture.archive, name="bench-synthetic")
                model = admin.register_model(fixture.weights, dataset_id=dataset.id, name="bench-tiny")
                load_key = admin.create_api_key("bench-load", ["submit", "read"])["key"]
                headers = {"Authorization": f"Bearer {load_key}"}
                subjects = iter(fixture.subjects * (1 + (2 * args.repeat + args.warmup + 1) // len(fixture.subjects)))
                submitted: list[str] = []

                def submit(index: str) -> None:
                    body = {"model_id": model.id, "subject_ids": [next(subjects)]}
                    response = http.post(SUBMIT_PATH, json=body, headers={**headers, "Idempotency-Key": index})
                    if response.status_code != 202:
                        raise api_load.BenchError(f"submission answered {response.status_code}: {response.text}")
                    submitted.append(response.json()["id"])

                def read(index: str) -> None:
                    response = http.get(f"{SUBMIT_PATH}/{submitted[-1]}", headers=headers)
                    if response.status_code != 200:
                        raise api_load.BenchError(f"read answered {response.status_code}: {response.text}")

                routes = {"POST /v1/deletion-requests": submit, "GET /v1/deletion-requests/{id}": read}
                for i in range(args.warmup):
                    for name, call in routes.items():
                        call(f"warm-{name[:3]}-{i}")

                listing: dict[str, Any] = {}
                for name, call in routes.items():
                    with recorder.recording(stacks=True, trace=True) as statements:
                        call(f"list-{name[:3]}")
                    wire = recorder.wire
                    listing[name] = {
                        "statements": [vars(s) | {"ms": round(s.ms, 3)} for s in statements],
                        "sql_statements": sum(
                            s.kind not in ("BEGIN", "COMMIT", "ROLLBACK", "PING") for s in statements
                        ),
                        "round_trips": round_trips(statements),
                        "wire_round_trips": None if wire is None else len(wire),
                        "wire": wire,
                    }

                timing: dict[str, Any] = {}
                with ThreadHops().installed() as hops:
                    for name, call in routes.items():
                        walls, dbs, counts, trips = [], [], [], []
                        hops.count = 0
                        for i in range(args.repeat):
                            with recorder.recording(stacks=False) as statements:
                                call(f"time-{name[:3]}-{i}")
                            walls.append(timed.last_seconds * 1000)
                            dbs.append(db_ms(statements))
                            counts.append(
                                sum(s.kind not in ("BEGIN", "COMMIT", "ROLLBACK", "PING") for s in statements)
                            )
                            trips.append(round_trips(statements))
                        timing[name] = {
                            "requests": args.repeat,
                            "wall_ms_median": round(statistics.median(walls), 3),
                            "db_ms_median": round(statistics.median(dbs), 3),
                            "python_ms_median": round(
                                statistics.median(w - d for w, d in zip(walls, dbs, strict=True)), 3
                            ),
                            "statements_min_max": [min(counts), max(counts)],
                            "round_trips_median": statistics.median(trips),
                            "thread_hops_per_request": hops.count / args.repeat,
                        }

                profiles: dict[str, Any] = {}
                with ThreadHops(inline=True).installed():
                    for name, call in routes.items():
                        timed.profiler = cProfile.Profile()
                        for i in range(args.repeat):
                            call(f"prof-{name[:3]}-{i}")
                        profiles[name] = profile_summary(timed.profiler, args.repeat, args.top)
                        timed.profiler = None

    return {
        "benchmark": "api_profile",
        "config": {"repeat": args.repeat, "warmup": args.warmup, "top": args.top, "seed": args.seed},
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": api_load.versions(),
            "load_average_before": args.load_before,
            **api_load._git(),
        },
        "statements": listing,
        "timing": timing,
        "profiles": profiles,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }


def report(record: dict[str, Any], rows: int) -> str:
    out = []
    for route, listed in record["statements"].items():
        wire = listed["wire_round_trips"]
        check = "" if wire is None else f"; on the wire (libpq trace): {wire}"
        out += [
            f"{route}: {listed['sql_statements']} SQL statements, {listed['round_trips']} round trips{check}",
            statements_table(listed["statements"]),
            "",
        ]
    out += [
        f"per request, medians of {record['config']['repeat']} (one at a time, no HTTP parsing):",
        timing_table(record["timing"]),
        "",
        "cProfile, own time per request by package (thread hops inline; cProfile inflates Python ~2x, read the "
        "shares; waiting on Postgres is in builtins (C), the socket wait):",
        package_table(record["profiles"], rows),
        "",
    ]
    for route, profile in record["profiles"].items():
        out += [
            f"{route}, cProfile ({profile['profiled_ms_per_request']:.2f} ms per request profiled in all; "
            "a coroutine's calls count its resumptions):",
            "functions of api/ and ledger/ by cumulative time:",
            functions_table(profile["project_by_cumulative"]),
            "",
            "hot spots, any function, by own time:",
            functions_table(profile["hot_by_own"]),
            "",
        ]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/api_profile.py",
        description="Statements, round trips, Postgres vs Python time and a cProfile of one erasure submission "
        "and one status read of the real app (in-process, on a throw-away Postgres database).",
    )
    parser.add_argument(
        "--repeat", type=int, default=200, help="requests of each route timed, and profiled (default 200)"
    )
    parser.add_argument(
        "--warmup", type=int, default=50, help="requests of each route first, not reported (default 50)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: --repeat {QUICK['repeat']} --warmup {QUICK['warmup']}",
    )
    parser.add_argument("--top", type=int, default=25, help="functions listed per route and list (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic dataset")
    parser.add_argument("--json", type=Path, default=None, help="write the results here too")
    parser.add_argument("--postgres", default=api_load.DEFAULT_POSTGRES, help="as for bench/api_load.py")
    parser.add_argument(
        "--broker-url",
        default=api_load.DEFAULT_BROKER,
        help="LTU_BROKER_URL of the app; never connected to, it keeps jobs out of the process",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.warmup = QUICK["repeat"], QUICK["warmup"]
    if args.repeat < 1 or args.warmup < 0 or args.top < 1:
        parser.error("--repeat and --top must be at least 1, --warmup 0 or more")
    args.load_before = api_load._load_average()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        record = run(args)
    except api_load.BenchError as exc:
        print(f"api_profile: {exc}", file=sys.stderr)
        return 2
    print(report(record, rows=12))
    print(
        f"total {record['total_seconds']} s; load average before the run {record['environment']['load_average_before']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, default=str) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

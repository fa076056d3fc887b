"""How long POST /v1/erasures/bulk takes to accept 100,000 data subjects, over HTTP against a real server.

    python bench/bulk_erasure.py                      # 100,000 subjects, SQLite ledger
    python bench/bulk_erasure.py --postgres           # the same on a throw-away Postgres database
    python bench/bulk_erasure.py --subjects 200       # smoke

(with the project's virtualenv, e.g. `.venv/bin/python bench/bulk_erasure.py`, from any directory).

What it does, in order:

1. creates a throw-away ledger (an SQLite file, or with --postgres a database `ltu_bench_<random>` as
   bench/api_load.py does) and migrates it;
2. registers, through the ledger's own functions (`datasets.create_dataset`, `registry.create_model`,
   the same inserts an upload ends in), a synthetic dataset of 99% of the N subjects, two samples each (one
   train, one test) and two models on it; no archive or weights exist, since no job runs;
3. starts `ltu serve` (one worker) on a free loopback port, configured through LTU_* variables, with a
   broker URL so no job runs in-process (nothing consumes it; Redis is never touched);
4. POSTs N subject ids, 1% of them in no dataset, as one JSON body (or --format ndjson) and times it:
   from the first byte sent to the 202 received; then the same call again with its Idempotency-Key
   (the replay);
5. checks the answer (one request per model, every subject's samples named, the unknown ones counted)
   and prints the table and the environment, and writes --json.

What it does not show: how long the runs take (no worker runs; each model's request stays
`received`), nor the export (GET /v1/erasures/{id}/subjects). Client, server and database share
this machine's cores over loopback.

Exit status: 0 when the erasure was accepted and checked, 1 when a check failed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import api_load  # bench/api_load.py: the server, the throw-away Postgres database, the commit
import httpx
from api_load import REPO, BenchError

DEFAULT_JSON = REPO / "bench" / "results" / "bulk_erasure.json"
UNKNOWN_SHARE = 100  # one subject in this many is in no dataset (counted in subjects_not_found)
POST_TIMEOUT = 600.0


@contextmanager
def throwaway_ledger(root: Path, postgres: str | None) -> Iterator[str]:
    """A migrated, empty ledger (SQLAlchemy URL): an SQLite file under `root`, or a Postgres database."""
    if postgres:
        with api_load.throwaway_database(postgres) as url:
            yield url
        return
    from ledger import migrate

    url = f"sqlite:///{root / 'ledger.db'}"
    migrate.upgrade(url)
    yield url


def seed(database_url: str, *, secret: str, admin_key: str, subjects: int) -> list[str]:
    """The synthetic dataset and two models on it, registered in the ledger; the model ids."""
    from ledger import datasets, registry, tenant_keys, tenants
    from ledger.datasets import SampleRow
    from ledger.db import Database

    def rows(key: tenant_keys.Key) -> Iterator[SampleRow]:
        for i in range(subjects):
            hashed = key.subject_hash(subject_id(i))
            yield SampleRow(2 * i, f"sample-{i}-a", hashed, i % 4, "train")
            yield SampleRow(2 * i + 1, f"sample-{i}-b", hashed, i % 4, "test")

    database = Database(database_url)
    try:
        with database.transaction() as session:
            tenant_id = tenants.ensure_admin_key(session, secret=admin_key).tenant_id
            key = tenant_keys.current(session, tenant_id=tenant_id, secret=secret, actor="bench")
            dataset = datasets.create_dataset(
                session,
                tenant_id=tenant_id,
                dataset_id="bench-bulk",
                name="bench-bulk",
                format_version=1,
                num_classes=4,
                image_shape=[1, 8, 8],
                archive_sha256="0" * 64,
                storage_key="datasets/bench-bulk.tar",
                samples=rows(key),
                tenant_key_id=key.id,
                actor="bench",
            )
            models = [
                registry.create_model(
                    session,
                    tenant_id=tenant_id,
                    name=name,
                    dataset_id=dataset.id,
                    architecture={"name": "resnet18"},
                    recipe=None,
                    sha256="0" * 64,
                    size_bytes=0,
                    storage_key=f"models/{name}.safetensors",
                    actor="bench",
                )[0]
                for name in ("bench-first", "bench-second")
            ]
            return [m.id for m in models]
    finally:
        database.dispose()


def subject_id(i: int) -> str:
    return f"customer-{i:07d}@example.invalid"


def unknown_count(subjects: int) -> int:
    """How many of the body's subjects are in no dataset."""
    return max(1, subjects // UNKNOWN_SHARE)


def bulk_body(subjects: int, fmt: str) -> tuple[bytes, str]:
    """`subjects` ids, the known ones then the unknown ones, as a JSON or NDJSON body; (body, content type)."""
    known = subjects - unknown_count(subjects)
    ids = [subject_id(i) for i in range(known)]
    ids += [f"nobody-{i}@example.invalid" for i in range(subjects - known)]
    if fmt == "ndjson":
        return "".join(json.dumps(i) + "\n" for i in ids).encode(), "application/x-ndjson"
    return json.dumps({"subject_ids": ids}).encode(), "application/json"


def samples_named(database_url: str, request_ids: list[str]) -> int:
    from sqlalchemy import func, select

    from ledger.db import Database
    from ledger.tables import RequestSample

    database = Database(database_url)
    try:
        with database.read() as session:
            return session.scalar(
                select(func.count()).select_from(RequestSample).where(RequestSample.request_id.in_(request_ids))
            )
    finally:
        database.dispose()


def post(url: str, admin_key: str, body: bytes, content_type: str) -> tuple[httpx.Response, float]:
    headers = {"Authorization": f"Bearer {admin_key}", "Content-Type": content_type, "Idempotency-Key": "bench-bulk"}
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/erasures/bulk", content=body, headers=headers, timeout=POST_TIMEOUT)
    return response, time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ltu-bench-bulk-") as tmp:
        root = Path(tmp)
        admin_key = "ltu_" + secrets.token_urlsafe(32)
        with throwaway_ledger(root, args.postgres) as database_url:
            env = api_load.server_env(database_url, args.broker_url, root / "home", admin_key)
            env["LTU_MAX_BULK_BYTES"] = str(64 << 20)  # the body of the largest --subjects, not the default's test
            t0 = time.perf_counter()
            model_ids = seed(
                database_url,
                secret=env["LTU_SECRET_KEY"],
                admin_key=admin_key,
                subjects=args.subjects - unknown_count(args.subjects),
            )
            seed_seconds = time.perf_counter() - t0
            body, content_type = bulk_body(args.subjects, args.format)
            with api_load.running_server(env, 1, root / "server.log") as server:
                answer, accept_seconds = post(server.url, admin_key, body, content_type)
                if answer.status_code != 202:
                    raise BenchError(f"the bulk erasure was answered {answer.status_code}: {answer.text[:2000]}")
                replay, replay_seconds = post(server.url, admin_key, body, content_type)
            erasure = answer.json()
            request_ids = [r["request_id"] for r in erasure["requests"]]
            named = samples_named(database_url, request_ids)
    result = {
        "subjects": args.subjects,
        "subjects_not_found": erasure["subjects_not_found"],
        "format": args.format,
        "body_bytes": len(body),
        "accept_seconds": round(accept_seconds, 3),
        "replay_seconds": round(replay_seconds, 3),
        "requests_created": len(request_ids),
        "samples_named": named,
        "seed_seconds": round(seed_seconds, 1),
        "environment": environment(database_url),
    }
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    unknown = unknown_count(args.subjects)
    checks = {
        "one request per model": sorted(r["model_id"] for r in erasure["requests"]) == sorted(model_ids),
        "every known subject's two samples named in each": named == 2 * 2 * (args.subjects - unknown),
        "unknown subjects counted": erasure["subjects_not_found"] == unknown,
        "replayed with its key": replay.status_code == 202 and replay.json()["id"] == erasure["id"],
    }
    failed = [what for what, ok in checks.items() if not ok]
    for what in failed:
        print(f"bulk_erasure: CHECK FAILED: {what}")
    return 1 if failed else 0


def environment(database_url: str) -> dict[str, Any]:
    return {
        "ledger": "postgres" if database_url.startswith("postgresql") else "sqlite",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "server": "ltu serve, 1 worker, loopback",
        **api_load._git(),
    }


def print_table(result: dict[str, Any]) -> None:
    columns = ("subjects", "body_bytes", "accept_seconds", "replay_seconds", "requests_created", "samples_named")
    widths = [max(len(c), len(str(result[c]))) for c in columns]
    print(" | ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    print(" | ".join(str(result[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))
    env = result["environment"]
    print(
        f"({result['format']} body, {result['subjects_not_found']} of the subjects in no dataset; ledger {env['ledger']}; "
        f"{env['server']}; {env['cpu_count']} CPUs; Python {env['python']}; {env['platform']}; "
        f"commit {env['commit']}{' (dirty)' if env['dirty'] else ''}; ledger seeded in {result['seed_seconds']} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subjects", type=int, default=100_000, help="subject ids in the body (1%% unknown)")
    parser.add_argument("--format", choices=("json", "ndjson"), default="json", help="the body's media type")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=api_load.DEFAULT_POSTGRES,
        default=None,
        help="a throw-away Postgres database through this admin URL (default: SQLite)",
    )
    parser.add_argument("--broker-url", default=api_load.DEFAULT_BROKER, help="set so no job runs in-process")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the result")
    args = parser.parse_args(argv)
    if not 2 <= args.subjects <= 100_000:
        parser.error("--subjects: 2 to 100000 (the most one bulk erasure takes)")
    try:
        return run(args)
    except BenchError as exc:
        print(f"bulk_erasure: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

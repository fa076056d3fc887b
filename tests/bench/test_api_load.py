"""bench/api_load.py keeps working: its statistics, its ledger check (which must be able to fail),
and a tiny end-to-end run against Postgres with two uvicorn workers, the service and then the floor.

The benchmark's numbers are never asserted (bench/ is not part of pass/fail); that it runs, loses
nothing and cleans up after itself is. Without Postgres these tests skip, under CI=true they fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import load_bench_script, unavailable

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "api_load.py"


api_load = load_bench_script("api_load")


@pytest.fixture(scope="module")
def postgres_admin_url() -> str:
    import psycopg

    url = api_load.DEFAULT_POSTGRES
    try:
        psycopg.connect(api_load._libpq(url), connect_timeout=5).close()
    except psycopg.Error as exc:
        unavailable(f"Postgres is not reachable at {url} ({type(exc).__name__})")
    return url


def test_percentiles_are_nearest_rank_and_the_table_counts_errors():
    values = [float(v) for v in range(1, 101)]
    assert [api_load.percentile(values, q) for q in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert api_load.percentile([7.0], 99) == 7.0
    assert api_load.percentile([], 50) is None

    Record = api_load.Record
    records = [
        Record("submit", 202, 0.010),
        Record("submit", 500, 0.002, "500 internal"),
        Record("read", 200, 0.004),
        Record("read", 0, 30.0, "ReadTimeout"),
    ]
    rows = api_load.summarize(records, wall_seconds=2.0)
    assert (rows["submit"]["count"], rows["submit"]["errors"], rows["submit"]["ops_per_s"]) == (2, 1, 1.0)
    assert rows["read"]["p99_ms"] == 4.0  # a request with no answer has no latency to rank
    assert rows["all"]["status_codes"] == {"0": 1, "200": 1, "202": 1, "500": 1}
    lines = api_load.table(rows).splitlines()
    assert lines[0].startswith("| operation") and len(lines) == 5
    assert "|     2 |      1 |" in lines[2]


def test_the_ledger_check_reports_an_accepted_id_the_ledger_lacks(postgres_admin_url):
    with api_load.throwaway_database(postgres_admin_url) as url:
        check = api_load.check_ledger(url, ["00000000-0000-0000-0000-000000000000"])
    assert check.lost == ["00000000-0000-0000-0000-000000000000"]
    assert all(ids == check.lost for ids in check.missing.values())


def test_a_tiny_run_loses_nothing_and_cleans_up(postgres_admin_url, tmp_path):
    import psycopg

    out = tmp_path / "api_load.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--workers",
        "2",
        "--concurrency",
        "4",
        "--submissions",
        "24",
        "--reads",
        "48",
        "--warmup",
        "0",
        "--json",
        str(out),
        "--postgres",
        postgres_admin_url,
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost: 0" in done.stdout
    record = json.loads(out.read_text())
    assert record["passed"] and record["ledger"]["accepted"] == 24
    assert record["operations"]["submit"]["status_codes"] == {"202": 24}
    assert record["operations"]["read"]["status_codes"] == {"200": 48}
    # The floor got the same load after the service, and committed every row it answered 202 for.
    assert record["config"]["order"] == ["service", "floor"]
    assert record["floor"]["operations"]["submit"]["status_codes"] == {"202": 24}
    assert record["floor"]["operations"]["read"]["status_codes"] == {"200": 48}
    assert record["floor"]["accepted"] == 24 and record["floor"]["lost"] == []
    assert set(record["service_over_floor"]) == {"submit", "read", "all", "server_cpu_ms_per_request"}
    database = re.search(r"database (ltu_bench_[0-9a-f]+)", done.stdout).group(1)
    with psycopg.connect(api_load._libpq(postgres_admin_url), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None

"""bench/api_load.py keeps working: its statistics, its phases, its goals, its ledger check (which
must be able to fail), and a tiny end-to-end run against Postgres with two uvicorn workers, the
service and then the floor, submissions then reads.

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


def test_the_load_is_phased_unless_interleaved():
    import random

    assert api_load.plans(3, 5, interleaved=False, rng=random.Random(0)) == [
        ("submit", ["submit"] * 3),
        ("read", ["read"] * 5),
    ]
    assert api_load.plans(0, 5, interleaved=False, rng=random.Random(0)) == [("read", ["read"] * 5)]
    [(name, mix)] = api_load.plans(3, 5, interleaved=True, rng=random.Random(0))
    assert name == "mixed" and sorted(mix) == ["read"] * 5 + ["submit"] * 3


def test_the_goals_are_judged_on_the_measured_ratios():
    ratios = {
        "submit": {"ops_per_s": 0.5, "p99_ms": 2.0, "server_cpu_ms_per_request": 3.0},
        "read": {"ops_per_s": 0.79, "p99_ms": 1.99, "server_cpu_ms_per_request": 2.0},
    }
    judged = api_load.goals(ratios, lost=0)
    assert {name: goal["met"] for name, goal in judged.items()} == {
        "reads_throughput_ratio": False,
        "submissions_throughput_ratio": True,
        "reads_p99_ratio": True,
        "submissions_p99_ratio": False,
        "lost": True,
    }
    assert api_load.goals({}, lost=1)["reads_throughput_ratio"]["met"] is None
    assert api_load.goals({}, lost=1)["lost"]["met"] is False
    assert "reads/s 0.79 (≥ 0.8: NOT met)" in api_load.goals_line(judged)


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
    assert "goals (issue 15, service / floor): reads/s " in done.stdout
    record = json.loads(out.read_text())
    assert record["passed"] and record["ledger"]["accepted"] == 24
    assert record["config"]["load"] == "phased" and record["config"]["order"] == ["service", "floor"]
    # Every submission in a phase of its own, then every read of an accepted id in the next; the
    # floor got the same phases after the service and committed every row it answered 202 for.
    for server in ("service", "floor"):
        phases = record[server]["phases"]
        assert list(phases) == ["submit", "read"]
        assert phases["submit"]["operations"]["submit"]["status_codes"] == {"202": 24}
        assert phases["submit"]["operations"]["read"]["count"] == 0
        assert phases["read"]["operations"]["read"]["status_codes"] == {"200": 48}
        assert phases["read"]["operations"]["submit"]["count"] == 0
        for phase in phases.values():
            assert set(phase["cpu_seconds"]) == {"client", "server", "machine"}
            assert phase["client_cpu_share"] is not None and phase["server_cpu_ms_per_request"] is not None
        assert record[server]["accepted"] == 24 and record[server]["errors"] == {}
    assert record["floor"]["lost"] == []
    assert set(record["service_over_floor"]) == {"submit", "read"}
    assert all(
        set(r) == {"ops_per_s", "p99_ms", "server_cpu_ms_per_request"} for r in record["service_over_floor"].values()
    )
    goals = record["goals"]
    assert goals["lost"] == {"value": 0, "goal": "0", "met": True}
    throughput = record["service_over_floor"]["read"]["ops_per_s"]
    assert goals["reads_throughput_ratio"] == {"value": throughput, "goal": ">= 0.8", "met": throughput >= 0.8}
    assert record["environment"]["commit"] and record["environment"]["versions"]["uvicorn"]
    # The uvicorn supervisor and its two workers at least (multiprocessing may add a resource tracker).
    assert len(record["service"]["threads"]) >= 3 and all(p["threads"] for p in record["service"]["threads"])
    database = re.search(r"database (ltu_bench_[0-9a-f]+)", done.stdout).group(1)
    with psycopg.connect(api_load._libpq(postgres_admin_url), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None

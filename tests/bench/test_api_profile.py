"""bench/api_profile.py keeps working: it takes one submission and one status read of the real app apart,
and the round trips it counts from SQLAlchemy's events are the ones libpq sends (its protocol trace).

No timing is asserted. Without Postgres these tests skip, under CI=true they fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import load_bench_script, unavailable

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "api_profile.py"
api_profile = load_bench_script("api_profile")
ROUTES = ("POST /v1/deletion-requests", "GET /v1/deletion-requests/{id}")


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> dict:
    import psycopg

    url = api_profile.api_load.DEFAULT_POSTGRES
    try:
        psycopg.connect(api_profile.api_load._libpq(url), connect_timeout=5).close()
    except psycopg.Error as exc:
        unavailable(f"Postgres is not reachable at {url} ({type(exc).__name__})")
    out = tmp_path_factory.mktemp("profile") / "profile.json"
    # Its own process: the profiled app configures logging and reads LTU_* variables, as `ltu serve` does.
    # A warm-up past psycopg's prepare threshold (5 executions): a first PREPARE is one more message on the wire.
    command = [sys.executable, str(SCRIPT), "--repeat", "2", "--warmup", "6", "--top", "5", "--json", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_round_trip_counted_is_one_on_the_wire(record):
    for route in ROUTES:
        listed = record["statements"][route]
        assert listed["round_trips"] == len(listed["statements"]) == listed["wire_round_trips"], route
        assert all(s["origin"] for s in listed["statements"] if s["kind"] not in ("COMMIT",)), route


def test_the_read_authenticates_and_reads_in_one_transaction(record):
    kinds = [s["kind"] for s in record["statements"]["GET /v1/deletion-requests/{id}"]["statements"]]
    assert kinds.count("BEGIN") == 1 and kinds.count("COMMIT") == 1 and kinds.count("SELECT") == 2
    timing = record["timing"]["GET /v1/deletion-requests/{id}"]
    assert timing["requests"] == 2 and timing["round_trips_median"] == len(kinds)
    assert set(record["profiles"]) == set(ROUTES) and record["environment"]["commit"]

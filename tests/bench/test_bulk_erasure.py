"""bench/bulk_erasure.py keeps working: a tiny run (200 subjects, as JSON and as NDJSON) against a real
`ltu serve` on an SQLite ledger is accepted and passes the script's own checks.

The benchmark's numbers are never asserted (bench/ is not part of pass/fail); that it runs and checks is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "bulk_erasure.py"


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_a_tiny_bulk_erasure_is_accepted_and_checked(tmp_path, fmt):
    out = tmp_path / "bulk_erasure.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--subjects", "200", "--format", fmt, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CHECK FAILED" not in done.stdout and "accept_seconds" in done.stdout
    record = json.loads(out.read_text())
    assert (record["subjects"], record["subjects_not_found"], record["format"]) == (200, 2, fmt)
    assert record["requests_created"] == 2 and record["samples_named"] == 2 * 2 * 198
    assert record["accept_seconds"] > 0 and record["environment"]["ledger"] == "sqlite"

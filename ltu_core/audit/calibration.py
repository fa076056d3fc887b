"""The committed calibration table: what a verdict may quote about its own error rates.

`bench/audit_calibration.py` measures, per tier and subject size n, how often the audit fails
models that never saw the samples (independent Retrains: the false-failure rate, with its 95 %
Clopper–Pearson interval) and how often it catches the original model that did (power). A verdict
quotes the row nearest its own n (on a log scale), and the table's sha256 so that anyone can check
which measurement it quoted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

RETRAIN, ORIGINAL = "retrain", "original"


@dataclass(frozen=True)
class CalibrationTable:
    """Rows of `bench/results/audit-calibration.json` and the file's sha256."""

    rows: list[dict]
    sha256: str
    path: str

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationTable:
        """Read the table; ValueError when the file is not one."""
        raw = Path(path).read_bytes()
        try:
            document = json.loads(raw)
            rows = document["rows"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not an audit calibration table") from exc
        return cls(rows=rows, sha256=hashlib.sha256(raw).hexdigest(), path=str(path))

    def _row(self, tier: str, n: int, model: str, alpha: float, references: int | None) -> dict | None:
        candidates = [
            r
            for r in self.rows
            if r.get("tier") == tier
            and r.get("model") == model
            and r.get("alpha") == alpha
            and r.get("references") == references  # the rank tier's rows have none
            and not r.get("family")  # the coalescing rows measure a family of subjects, not one
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (abs(math.log(max(1, r["n"])) - math.log(max(1, n))), r["n"]))

    def quote(self, tier: str, n: int, alpha: float, references: int | None = None) -> dict | None:
        """The measured false-failure rate and power nearest n samples per subject; None when not measured.

        `references`: the likelihood-ratio tier's K, None for the rank tier (rows measured with another K,
        or another α, do not apply: no quote is better than a borrowed one).
        """
        null = self._row(tier, n, RETRAIN, alpha, references)
        if null is None:
            return None
        power = self._row(tier, n, ORIGINAL, alpha, references)
        return {
            "table_sha256": self.sha256,
            "n": null["n"],
            "trials": null["trials"],
            "false_failure_rate": null["failure_rate"],
            "ci_low": null["ci_low"],
            "ci_high": null["ci_high"],
            "power": None if power is None else power["failure_rate"],
        }

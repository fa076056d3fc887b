"""Step 2 (and again in verify), measure: a model's metrics, verdict and member scores on the run's split.

Over the run's whole D_f and, when requests were coalesced, over each request's own samples: a
request's record holds its own numbers. The SVC attackers are fit once per measured model and
shared by the evaluation, the verdict and every request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ledger import records
from ltu_core.metrics import evaluate_posteriors
from ltu_core.mia import VerificationThresholds, fit_svc_attackers, score_summary, verify_forgetting
from ltu_core.models import Posteriors, predict_split
from worker.attempt import Attempt
from worker.steps.prepare import Prepared

SCORE_POINTS = 200  # forget-set member scores kept per measurement (order statistics beyond that)
HISTOGRAM_BINS = 24  # bins of the control's member-score histogram


@dataclass(frozen=True)
class Numbers:
    """One model measured on one forget set."""

    metrics: records.Metrics
    verdict: records.Verdict
    scores: records.ScoreSummary


@dataclass(frozen=True)
class Measured:
    """One model measured on the run's split: the union's numbers and each coalesced request's own."""

    union: Numbers
    own: dict[str, Numbers]  # empty when the run has one request

    def of(self, request_id: str) -> Numbers:
        """One request's numbers: its own when coalesced, else the union's."""
        return self.own.get(request_id, self.union)

    @property
    def passed(self) -> bool:
        """The union passed, and so did every request whose own sample count makes its test conclusive."""
        return self.union.verdict.passed and all(
            n.verdict.passed or not n.verdict.conclusive for n in self.own.values()
        )

    def failing_verdict(self) -> records.Verdict:
        """The verdict that failed, to explain a fallback: the union's, else the first failing request's."""
        if not self.union.verdict.passed:
            return self.union.verdict
        return next(n.verdict for n in self.own.values() if not n.verdict.passed and n.verdict.conclusive)


def run(attempt: Attempt, prepared: Prepared, model: nn.Module, *, original_ta: float | None = None) -> Measured:
    """Measure `model`; the utility check compares with `original_ta` (default: this model's own TA)."""
    settings = attempt.ctx.settings.worker
    post = predict_split(model, prepared.split, device=prepared.device)  # one inference pass for everything
    attackers = fit_svc_attackers(post["retain"], post["test"], seed=settings.seed)  # one fit per feature
    thresholds = VerificationThresholds(z=settings.verify_z, max_test_drop=settings.verify_max_test_drop)

    def numbers(forget: Posteriors) -> Numbers:
        evaluation = evaluate_posteriors(
            {**post, "forget": forget}, prepared.split, seed=settings.seed, attackers=attackers
        )
        verdict = verify_forgetting(
            retain=post["retain"],
            test=post["test"],
            forget=forget,
            control=post["reference"],
            original_test_accuracy=evaluation.ta if original_ta is None else original_ta,
            thresholds=thresholds,
            seed=settings.seed,
            attacker=attackers["confidence"],
        )
        scores = score_summary(forget, post["reference"], points=SCORE_POINTS, bins=HISTOGRAM_BINS)
        return Numbers(
            record(records.Metrics, evaluation.as_dict()),
            record(records.Verdict, verdict.as_dict()),
            record(records.ScoreSummary, scores),
        )

    own = {}
    if len(prepared.own_rows) > 1:
        for request_id, rows in prepared.own_rows.items():
            mask = torch.from_numpy(np.isin(prepared.split.forget, rows))
            own[request_id] = numbers(post["forget"].subset(mask))
    return Measured(numbers(post["forget"]), own)


def record(record_type: type[records.R], value: Any) -> records.R:
    """An ltu_core result (JSON-ready dict) as a ledger record: NaN/inf → None, numpy scalars → Python."""
    return records.from_json(record_type, _jsonable(value))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value

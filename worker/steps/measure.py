"""Step 2 (and again in verify), measure: a model's metrics, erasure audit and member scores on the run's split.

Each request of the run is audited on its own samples against its own control draw from D_audit
(seeded by its id); Holm's correction runs over every subject of every request of the run, so
coalescing requests does not raise the chance of failing a model that forgot them. The run's
verdict (the union's) holds all those subjects. The SVC attackers are fit once per measured model
and shared by the evaluation and every request; they inform, they never decide.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ledger import records
from ltu_core.audit import (
    LIKELIHOOD_RATIO,
    AuditConfig,
    CalibrationTable,
    Evidence,
    decide,
    lr_evidence,
    rank_evidence,
    score_summary,
    subject_results,
)
from ltu_core.data import draw_control
from ltu_core.metrics import evaluate_posteriors
from ltu_core.mia import fit_svc_attackers
from ltu_core.models import Posteriors, predict, predict_split
from worker.attempt import Attempt
from worker.steps.prepare import Prepared

log = logging.getLogger("ltu.worker")

SCORE_POINTS = 200  # forget-set member scores kept per measurement (order statistics beyond that)
HISTOGRAM_BINS = 24  # bins of the control's member-score histogram
SUBJECT_CHARS = 16  # characters of a subject key kept in a verdict
DEFAULT_CALIBRATION = "bench/results/audit-calibration.json"


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
        """The run's verdict passed (every subject of every request, Holm over all of them)."""
        return self.union.verdict.passed

    def failing_verdict(self) -> records.Verdict:
        """The verdict that failed, to explain a fallback: the first failing request's, else the union's."""
        return next((n.verdict for n in self.own.values() if not n.verdict.passed), self.union.verdict)


def run(attempt: Attempt, prepared: Prepared, model: nn.Module, *, original_ta: float | None = None) -> Measured:
    """Measure `model`; the utility check compares with `original_ta` (default: this model's own TA)."""
    settings = attempt.ctx.settings.worker
    split = prepared.split
    post = predict_split(model, split, device=prepared.device)  # one inference pass for everything
    audit_post = predict(model, split.dataset.view(prepared.audit_rows), device=prepared.device)
    attackers = fit_svc_attackers(post["retain"], post["test"], seed=settings.seed)  # one fit per feature
    config = AuditConfig(
        alpha=settings.audit_alpha, max_test_drop=settings.verify_max_test_drop, combine=settings.audit_combine
    )
    subjects = split.dataset.subject_ids[split.forget]

    # Each request: its own forget rows, its own control draw; evidence per sample.
    evidence: dict[str, Evidence] = {}
    controls: dict[str, Posteriors] = {}
    forgets: dict[str, Posteriors] = {}
    for request_id, rows in prepared.own_rows.items():
        control_rows = draw_control(prepared.audit_rows, settings.audit_control_size, prepared.audit_seeds[request_id])
        positions = np.searchsorted(prepared.audit_rows, control_rows)
        mask = np.isin(split.forget, rows)
        forget = post["forget"].subset(torch.from_numpy(mask))
        control = audit_post.subset(torch.from_numpy(positions))
        keys = subjects[mask].astype(str)
        evidence[request_id] = _evidence(prepared, forget, control, keys, split.forget[mask], control_rows)
        controls[request_id], forgets[request_id] = control, forget

    tiers = {e.tier for e in evidence.values()}
    if len(tiers) > 1:  # one family, one test: a run whose references could not test every request uses ranks
        evidence = {r: rank_evidence(forgets[r], controls[r], evidence[r].subjects) for r in evidence}
    # Holm over every subject of the run: a request's results are adjusted over the whole family.
    results = _family(evidence, config)
    family = sum(len(r) for r in results.values())
    calibration = _calibration(settings.audit_calibration_file)

    def numbers(request_ids: list[str], forget: Posteriors, control: Posteriors) -> Numbers:
        merged = _merge([evidence[r] for r in request_ids])
        evaluation = evaluate_posteriors({**post, "forget": forget}, split, seed=settings.seed, attackers=attackers)
        verdict = decide(
            [s for r in request_ids for s in results[r]],
            merged,
            family_size=family,
            config=config,
            test_accuracy=evaluation.ta,
            original_test_accuracy=evaluation.ta if original_ta is None else original_ta,
            forget_nonmember_rate=attackers["confidence"].nonmember_rate(forget),
            control_nonmember_rate=attackers["confidence"].nonmember_rate(control),
            audit_seed=prepared.audit_seeds[request_ids[0]],
            tier_reason=prepared.tier_reason
            if merged.tier == LIKELIHOOD_RATIO or prepared.references is None
            else "the model's reference scores cannot test this run's samples",
        )
        document = verdict.as_dict()
        per_subject = max(1, round(verdict.n_forget / max(1, verdict.n_subjects)))
        k = prepared.references.count if prepared.references is not None else None
        for subject in document["subjects"]:  # a keyed hash in the service: a prefix identifies it in the record
            subject["subject"] = subject["subject"][:SUBJECT_CHARS]
        document["calibration"] = calibration.quote(verdict.tier, per_subject, config.alpha, k) if calibration else None
        scores = score_summary(forget, control, points=SCORE_POINTS, bins=HISTOGRAM_BINS)
        return Numbers(
            record(records.Metrics, evaluation.as_dict()),
            record(records.Verdict, document),
            record(records.ScoreSummary, scores),
        )

    leader = attempt.leader if attempt.leader in evidence else next(iter(evidence))
    union = numbers(list(evidence), post["forget"], controls[leader])
    own = {}
    if len(evidence) > 1:
        own = {r: numbers([r], forgets[r], controls[r]) for r in evidence}
    return Measured(union, own)


def _evidence(
    prepared: Prepared,
    forget: Posteriors,
    control: Posteriors,
    subjects: np.ndarray,
    forget_rows: np.ndarray,
    control_rows: np.ndarray,
) -> Evidence:
    """The likelihood-ratio tier when the model's references are ready and can test these rows, else ranks."""
    if prepared.references is None:
        return rank_evidence(forget, control, subjects)
    try:
        return lr_evidence(
            forget,
            control,
            subjects,
            references=prepared.references,
            forget_rows=forget_rows,
            control_rows=control_rows,
        )
    except ValueError as exc:  # e.g. a control row a reference trained on: the references do not fit this run
        log.warning("the reference scores cannot test this run (%s); rank tier", exc)
        return rank_evidence(forget, control, subjects)


def _family(evidence: dict[str, Evidence], config: AuditConfig) -> dict[str, list]:
    """Each request's subject results, Holm-adjusted over every subject of the run."""
    merged = _merge(list(evidence.values()), tag=list(evidence))
    flat = subject_results(merged, config.combine)
    out: dict[str, list] = {r: [] for r in evidence}
    for result in flat:
        request_id, _, subject = result.subject.partition("|")
        out[request_id].append(dataclasses.replace(result, subject=subject))
    return out


def _merge(parts: list[Evidence], *, tag: list[str] | None = None) -> Evidence:
    """Evidence of several requests as one (subjects tagged by request when `tag` is given)."""
    if len(parts) == 1 and tag is None:
        return parts[0]
    subjects = [
        np.asarray([f"{tag[i]}|{s}" for s in part.subjects]) if tag else part.subjects for i, part in enumerate(parts)
    ]
    return Evidence(
        parts[0].tier,
        np.concatenate([p.p_remembered for p in parts]),
        np.concatenate([p.p_over_forgotten for p in parts]),
        np.concatenate(subjects),
        min(p.n_control for p in parts),
        np.concatenate([p.ranks for p in parts]),
    )


@functools.cache
def _load_calibration(path: str) -> CalibrationTable | None:
    try:
        return CalibrationTable.load(path)
    except (OSError, ValueError):
        return None


def _calibration(configured: str) -> CalibrationTable | None:
    """The calibration table verdicts quote (read once per process); None when there is none."""
    if configured:
        return _load_calibration(configured)
    import ltu_core

    return _load_calibration(str(Path(ltu_core.__file__).resolve().parent.parent / DEFAULT_CALIBRATION))


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

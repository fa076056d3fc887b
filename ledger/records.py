"""The typed run records: what an erasure run writes to a deletion request and every reader reads.

Standard library only (clients and the CLI read them too). The worker builds these from ltu_core's
results; the ledger stores them as JSON columns through `ledger.tables.RecordJSON` (so
`request.verification` *is* a `Verification`); the API exposes them as typed
schemas (pydantic reads standard dataclasses), and certificates, the dashboard, /metrics and the
CLI read them by attribute. One shape, written down once, the way timm's `PretrainedCfg` gives a
model's configuration a type.

Rows written before a field existed still load: a missing field takes its default and an
unknown key is ignored, so a record can grow without a data migration. Floats are finite or None
(a rate on an empty set); JSON has no NaN.

- `Metrics`: the evaluation protocol's numbers of one model (percent).
- `Verdict`: the erasure audit of one model (tier, test, per-subject p-values, calibration).
- `Verification`: before/after verdicts, the Retrain fallback, the coalesced batch.
- `RunDetails`: the run itself: split sizes, the method's record, timings, member scores.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

JsonScalar = str | int | float | bool | None
JsonValue = JsonScalar | list[JsonScalar] | dict[str, JsonScalar] | list[dict[str, JsonScalar]]
"""A method's own configuration and details values (flat or one level deep, all JSON)."""


@dataclass(frozen=True)
class Metrics:
    """UA/RA/TA/MIA of one model on the run's split, in percent (see ltu_core.metrics)."""

    ua: float | None = None  # 100 − accuracy on D_f
    ra: float | None = None  # accuracy on D_r
    ra_seen: float | None = None  # accuracy on D̂_r, the part unlearning could read
    ra_unseen: float | None = None  # accuracy on D_r \ D̂_r
    ta: float | None = None  # accuracy on D_test
    mia: float | None = None  # SVC MIA-efficacy, confidence feature (the headline)
    mia_entropy: float | None = None
    mia_modified_entropy: float | None = None
    mia_posterior: float | None = None


@dataclass(frozen=True)
class SubjectEvidence:
    """One data subject's audit evidence: combined p-values of both tails, Holm-adjusted over the family."""

    subject: str  # the first 16 hex characters of the subject's keyed hash
    samples: int
    p_remembered: float
    p_over_forgotten: float
    adjusted_remembered: float
    adjusted_over_forgotten: float


@dataclass(frozen=True)
class Calibration:
    """The committed calibration table's measurement nearest the verdict's n (bench/audit_calibration.py)."""

    table_sha256: str
    n: int  # samples per subject of the quoted row
    trials: int
    false_failure_rate: float  # how often the audit failed models that never saw the samples
    ci_low: float
    ci_high: float
    power: float | None  # how often it caught the original model


@dataclass(frozen=True)
class Verdict:
    """One model's erasure audit (see ltu_core.audit.verdict): outcome, test, and every number behind it."""

    passed: bool
    forgetting_passed: bool
    utility_passed: bool
    conclusive: bool  # False: too few controls for this family of subjects to fail at all
    n_forget: int
    n_control: int
    test_accuracy: float
    original_test_accuracy: float
    outcome: str = ""  # forgotten | over_forgotten | remembered | inconclusive
    over_forgetting: bool = False  # some subject scored significantly less member-like than unseen data
    tier: str = "rank"  # rank | likelihood_ratio
    tier_reason: str = ""  # why this tier (e.g. the model's reference models are not ready)
    test: str = ""
    alpha: float | None = None
    combine: str = ""
    n_subjects: int = 0
    family_size: int = 0  # subjects Holm's procedure ran over (a coalesced run's, for one of its requests)
    smallest_attainable_p: float | None = None  # family / (m + 1): above alpha nothing can fail
    min_adjusted_p: float | None = None
    subjects: list[SubjectEvidence] = field(default_factory=list)
    audit_seed: int | None = None  # seed of the request's D_audit control draw
    calibration: Calibration | None = None
    forget_mean_rank: float | None = None  # Mann–Whitney AUC of D_f's margins among the controls' (0.5: unseen)
    forget_nonmember_rate: float | None = None  # SVC attacker, information only
    control_nonmember_rate: float | None = None
    max_test_drop: float | None = None


@dataclass(frozen=True)
class MethodRun:
    """An unlearning method's own record: its configuration, wall time and method-specific details."""

    method: str
    config: dict[str, JsonValue] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class FirstAttempt:
    """The method that failed verification before the Retrain fallback."""

    method: str
    verdict: Verdict
    run: MethodRun


@dataclass(frozen=True)
class Fallback:
    """Why the run fell back to exact retraining, and what the first attempt measured."""

    method: str  # the method that replaced it ("retrain")
    reason: str
    first_attempt: FirstAttempt


@dataclass(frozen=True)
class Batch:
    """A coalesced run: its size, the leading request, and the verdict over the union of forget sets."""

    size: int
    leader: str
    verdict_after: Verdict
    forget_samples: int


@dataclass(frozen=True)
class Verification:
    """The request's verification: its own verdicts before and after, and how the version was made.

    `passed`: the published version passed (for a coalesced run: the union and every conclusive
    request). `exact`: the version was retrained from scratch. A failed request carries only
    `passed=False` and the failing `after` verdict.
    """

    passed: bool
    exact: bool = False
    before: Verdict | None = None
    after: Verdict | None = None
    fallback: Fallback | None = None
    batch: Batch | None = None


@dataclass(frozen=True)
class Histogram:
    """Bin edges (len(counts) + 1) and counts."""

    edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class ScoreSummary:
    """The verifier's member scores of one model, compact enough to plot (ltu_core.mia.score_summary)."""

    n_forget: int
    n_control: int
    forget: list[float]  # sorted forget margins (at most a few hundred order statistics)
    forget_ranks: list[float]  # each one's percentile rank among the control
    mean_rank: float
    control_histogram: Histogram


@dataclass(frozen=True)
class Scores:
    """Member scores before and after unlearning."""

    before: ScoreSummary
    after: ScoreSummary


@dataclass(frozen=True)
class SplitSizes:
    """Samples in each set of the run's split."""

    forget: int
    retain: int
    retain_subset: int
    reference: int
    test: int


@dataclass(frozen=True)
class SplitInfo:
    """How the run's split was drawn."""

    forget_spec: dict[str, JsonScalar]
    retain_fraction: float
    seed: int
    sizes: SplitSizes


@dataclass(frozen=True)
class RunDetails:
    """What one run did: the split, the base version, the method's record, timings, member scores."""

    split: SplitInfo
    forget_samples: int  # the run's D_f (the union, when coalesced)
    excluded_erased_samples: int  # erased by earlier requests, left out of every set
    base_version: int
    base_sha256: str
    run: MethodRun
    device: str
    phase_seconds: dict[str, float]
    scores: Scores
    own_forget_samples: int  # this request's own samples in D_f


# --- JSON ----------------------------------------------------------------------------------------

R = TypeVar("R")


def to_json(record: Any) -> Any:
    """A record as plain JSON values (non-finite floats become None)."""
    return _plain(dataclasses.asdict(record) if dataclasses.is_dataclass(record) else record)


def from_json(record_type: type[R], data: Any) -> R:
    """Build `record_type` from JSON values; missing fields take defaults, unknown keys are ignored.

    Raises ValueError when a required field is missing or a value has the wrong shape.
    """
    return _build(record_type, data, record_type.__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _build(option, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: unexpected null")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _build(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}.{f.name}: missing")
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _build(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    elif tp is type(None) and value is None:
        return None
    raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__}")

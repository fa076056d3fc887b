"""The erasure verdict: does any data subject's forget set still look like training data?

The null hypothesis is "the audited model never saw these samples". Each forget sample gets a
p-value against a control sample from D_audit, data no model and no method ever read (drawn per
request, its seed recorded): the rank tier ranks the sample's margin among the controls'; the
likelihood-ratio tier first subtracts what reference models that never saw the sample make of it
(`ltu_core.audit.references`). Each subject's samples combine into one p-value (Simes; Bonferroni
on request), and Holm's procedure runs over every subject of the family (a request, or every
request of a coalesced run). The forgetting check fails when some subject's adjusted p-value is at
most α; the same procedure on the other tail flags *over-forgetting* (a subject scored as less
member-like than unseen data, which an attacker can read too) without failing the check.

With m controls no p-value is below 1/(m + 1), so a family of S subjects can only be failed when
S/(m + 1) ≤ α. Below that the verdict says `conclusive: false` and does not pass: the service then
retrains instead of certifying what it could not test.

Utility passes when test accuracy fell by at most `max_test_drop` points against the original.
The SVC attacker's non-member rates (the literature's population metric) are recorded beside the
verdict and never decide it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ltu_core.audit import stats
from ltu_core.audit.references import ReferenceScores, lr_pvalues
from ltu_core.audit.scores import logit_confidence, margin, percentile_ranks
from ltu_core.models.inference import Posteriors

RANK, LIKELIHOOD_RATIO = "rank", "likelihood_ratio"
TESTS = {
    RANK: "per-sample Mann–Whitney rank of the margin among D_audit controls",
    LIKELIHOOD_RATIO: "per-sample offline LiRA statistic (φ minus the out-references' mean φ), ranked among "
    "D_audit controls",
}
FORGOTTEN, OVER_FORGOTTEN, REMEMBERED, INCONCLUSIVE = "forgotten", "over_forgotten", "remembered", "inconclusive"


@dataclass(frozen=True)
class AuditConfig:
    """alpha: family-wise level of the forgetting test; combine: per-subject combination; max_test_drop: TA points."""

    alpha: float = 0.05
    max_test_drop: float = 5.0
    combine: str = "simes"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha}")
        if self.combine not in stats.COMBINATIONS:
            raise ValueError(f"unknown combination {self.combine!r}; use one of {', '.join(stats.COMBINATIONS)}")


@dataclass(frozen=True, eq=False)
class Evidence:
    """Per-sample p-values of one model on one forget set (both tails), and the subject of each sample."""

    tier: str
    p_remembered: np.ndarray  # small: scored more member-like than the controls
    p_over_forgotten: np.ndarray  # small: scored less member-like than the controls
    subjects: np.ndarray  # subject key per forget sample
    n_control: int
    ranks: np.ndarray  # each forget margin's percentile rank among the controls' (information)

    def __len__(self) -> int:
        return len(self.subjects)

    def subset(self, positions: np.ndarray) -> Evidence:
        """The samples at `positions` (a request's own, within a coalesced run)."""
        return Evidence(
            self.tier,
            self.p_remembered[positions],
            self.p_over_forgotten[positions],
            self.subjects[positions],
            self.n_control,
            self.ranks[positions],
        )


def rank_evidence(forget: Posteriors, control: Posteriors, subjects: np.ndarray) -> Evidence:
    """The rank tier: each forget margin's exact p-value among the control margins."""
    _check(forget, control, subjects)
    f, c = margin(forget), margin(control)
    return Evidence(
        RANK,
        stats.conformal_pvalues(f, c),
        stats.conformal_pvalues(-f, -c),
        np.asarray(subjects),
        len(c),
        percentile_ranks(f, c),
    )


def lr_evidence(
    forget: Posteriors,
    control: Posteriors,
    subjects: np.ndarray,
    *,
    references: ReferenceScores,
    forget_rows: np.ndarray,
    control_rows: np.ndarray,
) -> Evidence:
    """The likelihood-ratio tier: the rows index the dataset the references scored."""
    _check(forget, control, subjects)
    p_high, p_low = lr_pvalues(
        references,
        forget_rows=forget_rows,
        forget_phi=logit_confidence(forget),
        control_rows=control_rows,
        control_phi=logit_confidence(control),
    )
    return Evidence(
        LIKELIHOOD_RATIO,
        p_high,
        p_low,
        np.asarray(subjects),
        len(control),
        percentile_ranks(margin(forget), margin(control)),
    )


def _check(forget: Posteriors, control: Posteriors, subjects: np.ndarray) -> None:
    if len(forget) == 0 or len(control) == 0:
        raise ValueError("verification needs at least one forget and one control sample")
    if len(subjects) != len(forget):
        raise ValueError("one subject key per forget sample")


@dataclass(frozen=True)
class SubjectResult:
    """One data subject's evidence: combined p-values of both tails, and Holm's adjustment over the family."""

    subject: str
    samples: int
    p_remembered: float
    p_over_forgotten: float
    adjusted_remembered: float
    adjusted_over_forgotten: float


def subject_results(evidence: Evidence, combine: str = "simes") -> list[SubjectResult]:
    """Every subject of `evidence`, Holm-adjusted over all of them (the family)."""
    keys, which = np.unique(evidence.subjects.astype(str), return_inverse=True)
    which = which.reshape(-1)
    high = [stats.combine(evidence.p_remembered[which == i], combine) for i in range(len(keys))]
    low = [stats.combine(evidence.p_over_forgotten[which == i], combine) for i in range(len(keys))]
    adj_high, adj_low = stats.holm(high), stats.holm(low)
    return [
        SubjectResult(
            str(k), int((which == i).sum()), float(high[i]), float(low[i]), float(adj_high[i]), float(adj_low[i])
        )
        for i, k in enumerate(keys)
    ]


@dataclass(frozen=True)
class Verdict:
    """The outcome and every number behind it (rates and accuracies in percent)."""

    passed: bool
    forgetting_passed: bool
    utility_passed: bool
    conclusive: bool  # False: too few controls for this family of subjects to fail at all
    outcome: str  # forgotten | over_forgotten | remembered | inconclusive
    over_forgetting: bool  # some subject scored significantly *less* member-like than unseen data
    tier: str  # rank | likelihood_ratio
    test: str
    alpha: float
    combine: str
    n_forget: int
    n_subjects: int
    n_control: int
    family_size: int  # subjects Holm's procedure ran over (a coalesced run's, for one of its requests)
    smallest_attainable_p: float  # family / (m + 1): above α nothing can fail
    min_adjusted_p: float  # the smallest Holm-adjusted p-value of the remembered tail
    subjects: list[SubjectResult]
    forget_mean_rank: float  # Mann–Whitney AUC of D_f's margins among the controls' (0.5 = looks unseen)
    forget_nonmember_rate: float  # SVC attacker: share of D_f called non-member (information)
    control_nonmember_rate: float  # SVC attacker: share of the control called non-member (information)
    test_accuracy: float
    original_test_accuracy: float
    max_test_drop: float
    audit_seed: int | None = None
    tier_reason: str = ""
    calibration: dict | None = field(default=None)

    def as_dict(self) -> dict:
        """JSON-ready."""
        out = asdict(self)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


def decide(
    results: list[SubjectResult],
    evidence: Evidence,
    *,
    family_size: int,
    config: AuditConfig,
    test_accuracy: float,
    original_test_accuracy: float,
    forget_nonmember_rate: float = float("nan"),
    control_nonmember_rate: float = float("nan"),
    audit_seed: int | None = None,
    tier_reason: str = "",
) -> Verdict:
    """The verdict over `results` (this request's subjects, adjusted over a family of `family_size`)."""
    smallest = stats.smallest_attainable(evidence.n_control, family_size)
    conclusive = smallest <= config.alpha
    remembered = any(r.adjusted_remembered <= config.alpha for r in results)
    over = any(r.adjusted_over_forgotten <= config.alpha for r in results)
    if remembered:
        outcome = REMEMBERED
    elif not conclusive:
        outcome = INCONCLUSIVE
    else:
        outcome = OVER_FORGOTTEN if over else FORGOTTEN
    forgetting_ok = outcome in (FORGOTTEN, OVER_FORGOTTEN)
    utility_ok = test_accuracy >= original_test_accuracy - config.max_test_drop
    return Verdict(
        passed=forgetting_ok and utility_ok,
        forgetting_passed=forgetting_ok,
        utility_passed=utility_ok,
        conclusive=conclusive,
        outcome=outcome,
        over_forgetting=over,
        tier=evidence.tier,
        test=f"{TESTS[evidence.tier]}; {config.combine} per subject; Holm over {family_size} subject(s)",
        alpha=config.alpha,
        combine=config.combine,
        n_forget=sum(r.samples for r in results),
        n_subjects=len(results),
        n_control=evidence.n_control,
        family_size=family_size,
        smallest_attainable_p=smallest,
        min_adjusted_p=min((r.adjusted_remembered for r in results), default=1.0),
        subjects=results,
        forget_mean_rank=float(np.mean(evidence.ranks)),
        forget_nonmember_rate=forget_nonmember_rate,
        control_nonmember_rate=control_nonmember_rate,
        test_accuracy=test_accuracy,
        original_test_accuracy=original_test_accuracy,
        max_test_drop=config.max_test_drop,
        audit_seed=audit_seed,
        tier_reason=tier_reason,
    )


def audit(
    evidence: Evidence,
    *,
    config: AuditConfig = AuditConfig(),
    test_accuracy: float = 100.0,
    original_test_accuracy: float = 0.0,
    **info,
) -> Verdict:
    """One forget set as its own family: `subject_results` then `decide`."""
    results = subject_results(evidence, config.combine)
    return decide(
        results,
        evidence,
        family_size=len(results),
        config=config,
        test_accuracy=test_accuracy,
        original_test_accuracy=original_test_accuracy,
        **info,
    )


def verify_model(
    model,
    split,
    *,
    original_test_accuracy: float,
    config: AuditConfig = AuditConfig(),
    control_size: int = 1000,
    audit_seed: int = 0,
    device="cpu",
) -> Verdict:
    """The rank-tier verdict of `model` on a split's D_f (library and CLI use; the service audits per request).

    Controls: a seeded draw of `control_size` rows of D_audit; subjects: the dataset's subject ids.
    """
    from ltu_core.data.selection import audit_rows, draw_control
    from ltu_core.mia.svc import SvcAttacker
    from ltu_core.models.inference import predict, predict_split

    dataset = split.dataset
    control_rows = draw_control(audit_rows(split), control_size, audit_seed)
    if len(control_rows) == 0:
        raise ValueError("the split leaves no D_audit rows to audit against")
    post = predict_split(model, split, names=("forget", "retain", "test"), device=device)
    forget, retain, test = post["forget"], post["retain"], post["test"]
    control = predict(model, dataset.view(control_rows), device=device)
    attacker = SvcAttacker(retain, test, feature="confidence", seed=audit_seed)
    evidence = rank_evidence(forget, control, dataset.subject_ids[split.forget].astype(str))
    return audit(
        evidence,
        config=config,
        test_accuracy=test.accuracy(),
        original_test_accuracy=original_test_accuracy,
        forget_nonmember_rate=attacker.nonmember_rate(forget),
        control_nonmember_rate=attacker.nonmember_rate(control),
        audit_seed=audit_seed,
        tier_reason="library call: rank tier",
    )

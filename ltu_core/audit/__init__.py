"""The erasure audit: membership-inference tests whose error rates are measured, per data subject.

See `verdict` for the procedure, `stats` for the statistics, `references` for the
likelihood-ratio tier's reference models, `calibration` for the committed error-rate table.
"""

from ltu_core.audit.calibration import CalibrationTable
from ltu_core.audit.references import ReferenceScores, lr_pvalues, plan_halves, train_references
from ltu_core.audit.scores import logit_confidence, margin, mean_percentile_rank, percentile_ranks, score_summary
from ltu_core.audit.verdict import (
    FORGOTTEN,
    INCONCLUSIVE,
    LIKELIHOOD_RATIO,
    OVER_FORGOTTEN,
    RANK,
    REMEMBERED,
    AuditConfig,
    Evidence,
    SubjectResult,
    Verdict,
    audit,
    decide,
    lr_evidence,
    rank_evidence,
    subject_results,
    verify_model,
)

__all__ = [
    "FORGOTTEN",
    "INCONCLUSIVE",
    "LIKELIHOOD_RATIO",
    "OVER_FORGOTTEN",
    "RANK",
    "REMEMBERED",
    "AuditConfig",
    "CalibrationTable",
    "Evidence",
    "ReferenceScores",
    "SubjectResult",
    "Verdict",
    "audit",
    "decide",
    "logit_confidence",
    "lr_evidence",
    "lr_pvalues",
    "margin",
    "mean_percentile_rank",
    "percentile_ranks",
    "plan_halves",
    "rank_evidence",
    "score_summary",
    "subject_results",
    "train_references",
    "verify_model",
]

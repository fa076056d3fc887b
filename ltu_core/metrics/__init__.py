"""Evaluation metrics: UA, RA (seen/unseen), TA, MIA-efficacy variants, Avg. Gap."""

from ltu_core.metrics.evaluate import (
    HEADLINE,
    Evaluation,
    avg_gap,
    evaluate,
    evaluate_posteriors,
    unlearning_accuracy,
)

__all__ = ["HEADLINE", "Evaluation", "avg_gap", "evaluate", "evaluate_posteriors", "unlearning_accuracy"]

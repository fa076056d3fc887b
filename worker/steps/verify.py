"""Step 4, verify: measure the unlearned model; if it fails, fall back to exact retraining or fail saying why."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ledger import records
from ltu_core.methods import UnlearningResult, create_method
from worker.attempt import Attempt, JobFailed
from worker.steps import measure, unlearn
from worker.steps.measure import Measured
from worker.steps.prepare import Prepared

log = logging.getLogger("ltu.worker")


@dataclass(frozen=True)
class Verified:
    """The model to publish, its measurement, and the fallback that produced it (if one did)."""

    result: UnlearningResult
    after: Measured
    fallback: records.Fallback | None


def run(attempt: Attempt, prepared: Prepared, result: UnlearningResult, before: Measured) -> Verified:
    """A model that passed verification, or one exact Retrain when the method's did not.

    JobFailed (verification_failed) when it did not pass and no Retrain is possible (no recipe, or
    the fallback is disabled); the failing verdict lands in the request's record. A method that
    already retrains from scratch is published as it is: nothing exacter exists.
    """
    attempt.progress("verifying", 0, 1)
    after = measure.run(attempt, prepared, result.model, original_ta=before.union.metrics.ta)
    if after.passed or prepared.method.reads_full_retain:
        attempt.progress("verifying", 1, 1)
        return Verified(result, after, None)

    verdict = after.failing_verdict()
    failed = []
    if not verdict.forgetting_passed:
        failed.append(
            "forgetting"
            if verdict.conclusive
            else f"forgetting (too few audit controls to test {verdict.family_size} subject(s) at alpha {verdict.alpha})"
        )
    if not verdict.utility_passed:
        failed.append("utility")
    reason = " and ".join(failed)
    fallback_enabled = attempt.ctx.settings.worker.fallback_to_retrain
    if not (fallback_enabled and prepared.has_recipe):
        why = "the model has no training recipe" if not prepared.has_recipe else "the Retrain fallback is disabled"
        raise JobFailed(
            "verification_failed",
            f"{result.method} did not pass verification ({reason} check{'s' if len(failed) > 1 else ''}) and {why}; "
            "no version was published",
            values={"verification": records.Verification(passed=False, after=verdict)},
        )

    log.info("request %s: %s failed verification (%s); falling back to Retrain", attempt.leader, result.method, reason)
    attempt.check_cancelled()
    retrain = unlearn.run(attempt, prepared, create_method("retrain"))
    attempt.progress("verifying", 0, 1)
    retrained = measure.run(attempt, prepared, retrain.model, original_ta=verdict.original_test_accuracy)
    attempt.progress("verifying", 1, 1)
    first = records.FirstAttempt(
        method=result.method, verdict=verdict, run=measure.record(records.MethodRun, result.record())
    )
    return Verified(
        retrain,
        retrained,
        records.Fallback(method="retrain", reason=f"{result.method} failed the {reason} check", first_attempt=first),
    )

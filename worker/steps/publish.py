"""Step 5, publish: each request's record, the weights stored by sha256, and version base+1 in one transaction."""

from __future__ import annotations

import logging

from ledger import records, requests
from ledger import references as reference_sets
from ledger.tables import Model, ModelVersion
from ltu_core.models import save_model
from worker.attempt import Attempt
from worker.steps.measure import Measured, record
from worker.steps.prepare import Prepared
from worker.steps.verify import Verified

log = logging.getLogger("ltu.worker")


def outcomes(attempt: Attempt, prepared: Prepared, before: Measured, verified: Verified) -> dict[str, requests.Outcome]:
    """Each request's record (leader first): its own metrics and verdicts, the run's shared details."""
    after, result = verified.after, verified.result
    batch = (
        records.Batch(
            size=len(attempt.request_ids),
            leader=attempt.leader,
            verdict_after=after.union.verdict,
            forget_samples=len(prepared.split.forget),
        )
        if len(attempt.request_ids) > 1
        else None
    )
    split = record(records.SplitInfo, prepared.split.info)
    run = record(records.MethodRun, result.record())
    phase_seconds = {k: round(v, 3) for k, v in attempt.phase_seconds.items()}
    out = {}
    for request_id in attempt.request_ids:
        mine_before, mine_after = before.of(request_id), after.of(request_id)
        verification = records.Verification(
            passed=after.passed,
            exact=result.method == "retrain",
            before=mine_before.verdict,
            after=mine_after.verdict,
            fallback=verified.fallback,
            batch=batch,
        )
        details = records.RunDetails(
            split=split,
            forget_samples=len(prepared.split.forget),
            excluded_erased_samples=prepared.excluded_erased,
            base_version=prepared.base_number,
            base_sha256=prepared.base_sha256,
            run=run,
            device=prepared.device,
            phase_seconds=phase_seconds,
            scores=records.Scores(before=mine_before.scores, after=mine_after.scores),
            own_forget_samples=len(prepared.own_rows[request_id]),
        )
        out[request_id] = requests.Outcome(mine_before.metrics, mine_after.metrics, verification, details)
    return out


def run(attempt: Attempt, prepared: Prepared, before: Measured, verified: Verified) -> int:
    """Publish the run's model for every request of the run; returns the new version number.

    StaleBase (the model moved on: the caller redoes the work on the new version) or LeaseLost;
    either way the transaction rolls back and nothing is half-published. The weights reach models/
    only as that transaction commits: a rolled-back publication (whose base may still hold a subject
    the concurrent publication erased) leaves no file behind.
    """
    attempt.progress("publishing", 0, 1)
    results = outcomes(attempt, prepared, before, verified)
    store = attempt.ctx.store
    staged = store.staging_file(".safetensors")
    try:
        save_model(
            verified.result.model.cpu(),
            prepared.arch,
            staged,
            metadata={
                "model_id": prepared.model_id,
                "parent_sha256": prepared.base_sha256,
                "request_id": attempt.leader,
                "method": verified.result.method,
            },
        )
        with attempt.ctx.database.transaction() as session:
            blob = store.stage_model(session, staged)
            model_row = session.get(Model, prepared.model_id)
            base = session.get(ModelVersion, prepared.base_id)
            assert model_row is not None and base is not None
            version = requests.complete(
                session,
                token=attempt.token,
                model=model_row,
                base=base,
                outcomes=results,
                sha256=blob.sha256,
                size_bytes=blob.size,
                storage_key=blob.key,
            )
            # The erased samples are marked in this transaction: the refresh check sees them.
            refresh = reference_sets.queue_refresh_if_due(
                session, model_id=prepared.model_id, threshold=attempt.ctx.settings.worker.audit_refresh_after_erasures
            )
    finally:
        store.discard(staged)  # a save that failed before the transaction took the file over
    if refresh is not None:
        log.info("model %s: reference models queued for retraining without the erased samples", prepared.model_id)
    log.info(
        "request %s: completed%s; model %s version %d (sha256 %s)",
        attempt.leader,
        f" with {len(results) - 1} coalesced request(s)" if len(results) > 1 else "",
        prepared.model_id,
        version.number,
        blob.sha256,
    )
    return version.number

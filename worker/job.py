"""The erasure job: claim, then the steps of worker/steps over one deletion request.

    claim → prepare → measure → unlearn → verify (→ Retrain fallback) → publish

`run_erasure(ctx, request_id)` is the only entry point; the Celery task and the embedded runner
both call it. Each step writes its results under the attempt's lease token, so:

- a redelivered or duplicated task finds the request running (or finished) and does nothing;
- a task redelivered after a crash takes the request over once its heartbeat is stale, and
  starts again from the beginning (steps are cheap next to correctness);
- publication is one transaction (new version + forward move of `current` + erased samples +
  completed status), so a request publishes exactly one version or none;
- if another request published a newer version meanwhile, the job redoes its work on it, so no
  version ever re-contains data erased by an earlier request;
- requests for the same model, method and parameters that wait at the same time are coalesced:
  the claim takes up to `coalesce_max_batch` of them under one lease, one unlearning run forgets
  the union of their samples, and each request still gets its own metrics, verdict, audit
  events and completion (with the one published version).

Cancellation is honoured between steps and, inside the unlearning method, at its checks; a
request of a coalesced run cancelled after its forget set was built makes the run start again
without it, so its samples are never unlearned and its verdict never decides the others'. How
each failure ends (worker/faults.py): a client error fails with its code, a passing fault gives
the requests back to the queue with a backoff, a broken device gives them back for another
worker and this one stops taking work, a defect fails with `internal_error`. No
database session is held while the model trains. The steps import torch; this module imports
them only when a job runs, so the API process that embeds the runner stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ledger.errors import LeaseLost, StaleBase
from ledger.observability import bind
from ledger.tables import CANCELLED, FAILED
from worker.attempt import Attempt, Cancelled, Interrupted, JobFailed, JobOutcome, Regroup
from worker.claim import claim, wait_for_coalescing
from worker.context import JobContext
from worker.faults import Fault, classify

log = logging.getLogger("ltu.worker")

MAX_REBASES = 3


def run_erasure(ctx: JobContext, request_id: str, *, stopping: Callable[[], bool] = lambda: False) -> JobOutcome:
    """Execute one deletion request, with the waiting requests it can share a run with (see JobOutcome).

    `stopping` (the process is shutting down) interrupts the run: its requests go back to the queue.
    """
    with bind(deletion_request_id=request_id):
        if ctx.device_fault is not None:
            log.warning("request %s: not taken; this worker's device failed (%s)", request_id, ctx.device_fault)
            return JobOutcome.DEVICE_BROKEN
        try:
            wait_for_coalescing(ctx, request_id)
            attempt = claim(ctx, request_id, stopping=stopping)
        except Exception as exc:
            if classify(exc) != Fault.TRANSIENT:
                raise
            log.warning("request %s: the claim hit a passing fault (%s: %s)", request_id, type(exc).__name__, exc)
            return JobOutcome.UNAVAILABLE
        if isinstance(attempt, JobOutcome):
            return attempt
        request_ids = list(attempt.request_ids)
        outcome = execute(attempt)
        _close_erasures(ctx, request_ids)
        return outcome


def _close_erasures(ctx: JobContext, request_ids: list[str]) -> None:
    """Record the ending of the erasures these requests belong to, if they just ended (the reconciler's pass
    catches any this misses)."""
    from sqlalchemy import select

    from ledger import erasures
    from ledger.tables import DeletionRequest

    try:
        with ctx.database.transaction() as session:
            ids = session.scalars(
                select(DeletionRequest.erasure_id).where(
                    DeletionRequest.id.in_(request_ids), DeletionRequest.erasure_id.is_not(None)
                )
            ).all()
            if ids:
                erasures.close_finished(session, erasure_ids=sorted(set(ids)))
    except Exception:
        log.exception("could not record the ending of the erasures of %s; the reconciler will", request_ids)


def execute(attempt: Attempt) -> JobOutcome:
    """The steps under the lease's heartbeat; every ending lands in the ledger."""
    with attempt.heartbeat():
        return _execute(attempt)


def _execute(attempt: Attempt) -> JobOutcome:
    """The steps, redone on the newest version when the model moved on, or without a request that left the run."""
    from ltu_core.errors import LTUError, UnlearningCancelled

    try:
        rebases = 0
        while True:
            try:
                _steps(attempt)
                return JobOutcome.COMPLETED
            except StaleBase:
                rebases += 1
                if rebases == MAX_REBASES:
                    return _passing_fault(attempt, f"the model moved to a newer version {rebases} times", None)
                log.info("request %s: the model moved to a newer version; redoing the work on it", attempt.leader)
            except Regroup:
                log.info("request %s: a request left the run; redoing the run without its samples", attempt.leader)
    except LeaseLost:
        log.warning("request %s: lease lost; another execution owns it now", attempt.leader)
        return JobOutcome.LEASE_LOST
    except Interrupted:
        settings = attempt.ctx.settings.worker
        return _give_back(
            attempt,
            "the worker is shutting down",
            None,
            give_back_attempt=True,
            count_retry=False,
            retry_in=0.0,
            retry_cap=settings.retry_backoff_cap_seconds,
        )
    except (Cancelled, UnlearningCancelled):
        return attempt.finish(CANCELLED, None, "cancelled on request")
    except JobFailed as exc:
        return attempt.finish(FAILED, exc.code, str(exc), values=exc.values)
    except LTUError as exc:
        return attempt.finish(FAILED, _error_code(exc), str(exc))
    except Exception as exc:
        return _unexpected(attempt, exc)


def _unexpected(attempt: Attempt, exc: Exception) -> JobOutcome:
    """A passing fault or a broken device gives the requests back to the queue; a defect fails them."""
    fault = classify(exc)
    if fault == Fault.TRANSIENT:
        log.warning("request %s: a passing fault", attempt.leader, exc_info=exc)
        return _passing_fault(attempt, f"a passing fault ({type(exc).__name__})", str(exc)[:500])
    if fault == Fault.DEVICE:
        attempt.ctx.device_fault = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.critical("this worker's device failed; it takes no more work", exc_info=exc)
        return _give_back(
            attempt,
            "the worker's device failed",
            str(exc)[:500],
            give_back_attempt=False,
            count_retry=False,
            retry_in=0.0,
            retry_cap=0.0,
        )
    log.exception("request %s failed unexpectedly", attempt.leader)
    return attempt.finish(
        FAILED, "internal_error", f"internal error ({type(exc).__name__}); the worker log has the details"
    )


def _passing_fault(attempt: Attempt, reason: str, error: str | None) -> JobOutcome:
    settings = attempt.ctx.settings.worker
    return _give_back(
        attempt,
        reason,
        error,
        give_back_attempt=True,
        count_retry=True,
        retry_in=settings.retry_backoff_seconds,
        retry_cap=settings.retry_backoff_cap_seconds,
    )


def _give_back(attempt: Attempt, reason: str, error: str | None, **how) -> JobOutcome:
    try:
        return attempt.release(reason, error, **how)
    except Exception:  # the database is still away: the lease expires and the reconciler requeues the requests
        log.exception("request %s: could not give the run's requests back; the reconciler will", attempt.leader)
        return JobOutcome.LEASE_LOST


def _steps(attempt: Attempt) -> None:
    """prepare → measure → unlearn → verify → publish, checking for cancellation between steps."""
    from worker.steps import measure, prepare, publish, unlearn, verify

    ctx = attempt.ctx
    ctx.configure_torch()
    attempt.restart()
    attempt.progress("preparing", 0, 1)
    prepared = prepare.run(attempt, device=ctx.device())
    attempt.prepared = True
    attempt.check_cancelled()
    attempt.progress("measuring", 0, 1)
    before = measure.run(attempt, prepared, prepared.model)
    attempt.report(base_version=prepared.base_number, metrics_before=before.union.metrics)
    attempt.check_cancelled()
    result = unlearn.run(attempt, prepared)
    attempt.check_cancelled()
    verified = verify.run(attempt, prepared, result, before)
    attempt.check_cancelled()
    publish.run(attempt, prepared, before, verified)


def _error_code(exc: Exception) -> str:
    """CheckpointError → checkpoint_error, MethodConfigError → method_config_error, ..."""
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")

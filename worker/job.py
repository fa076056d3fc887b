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

Cancellation is honoured between steps and, inside the unlearning method, at its checks. No
database session is held while the model trains. The steps import torch; this module imports
them only when a job runs, so the API process that embeds the runner stays light.
"""

from __future__ import annotations

import logging

from ledger.errors import LeaseLost, StaleBase
from ledger.observability import bind
from ledger.tables import CANCELLED, FAILED
from worker.attempt import Attempt, Cancelled, JobFailed, JobOutcome
from worker.claim import claim, wait_for_coalescing
from worker.context import JobContext

log = logging.getLogger("ltu.worker")

MAX_REBASES = 3


def run_erasure(ctx: JobContext, request_id: str) -> JobOutcome:
    """Execute one deletion request, with the waiting requests it can share a run with (see JobOutcome)."""
    with bind(deletion_request_id=request_id):
        wait_for_coalescing(ctx, request_id)
        attempt = claim(ctx, request_id)
        if isinstance(attempt, JobOutcome):
            return attempt
        return execute(attempt)


def execute(attempt: Attempt) -> JobOutcome:
    """The steps, redone on the newest version when the model moved on; every ending lands in the ledger."""
    from ltu_core.errors import LTUError, UnlearningCancelled

    try:
        for _ in range(MAX_REBASES):
            try:
                _steps(attempt)
                return JobOutcome.COMPLETED
            except StaleBase:
                log.info("request %s: the model moved to a newer version; redoing the work on it", attempt.leader)
        raise JobFailed("stale_base", f"the model kept moving to newer versions; gave up after {MAX_REBASES} tries")
    except LeaseLost:
        log.warning("request %s: lease lost; another execution owns it now", attempt.leader)
        return JobOutcome.LEASE_LOST
    except (Cancelled, UnlearningCancelled):
        return attempt.finish(CANCELLED, None, "cancelled on request")
    except JobFailed as exc:
        return attempt.finish(FAILED, exc.code, str(exc), values=exc.values)
    except LTUError as exc:
        return attempt.finish(FAILED, _error_code(exc), str(exc))
    except Exception as exc:
        log.exception("request %s failed unexpectedly", attempt.leader)
        return attempt.finish(
            FAILED, "internal_error", f"internal error ({type(exc).__name__}); the worker log has the details"
        )


def _steps(attempt: Attempt) -> None:
    """prepare → measure → unlearn → verify → publish, checking for cancellation between steps."""
    from worker.steps import measure, prepare, publish, unlearn, verify

    ctx = attempt.ctx
    ctx.configure_torch()
    attempt.restart()
    attempt.progress("preparing", 0, 1)
    prepared = prepare.run(attempt, device=ctx.device())
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

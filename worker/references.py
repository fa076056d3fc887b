"""The reference-training job: K reference models of a model lineage for the audit's likelihood-ratio tier.

    claim → load the model's architecture, recipe and dataset (without erased samples)
          → train_references (ltu_core.audit) → store the scores file → ready (older sets superseded)

`run_reference_training(ctx, reference_set_id)` is the only entry point; the Celery task
`ltu.audit_references.train` (its own queue) and the embedded runner's reference thread call it,
so a reference training never waits behind, or delays, an erasure request.

As in the erasure job, every write goes through the lease token (ledger.references): a redelivered
task finds the set running or finished and does nothing, a task redelivered after a crash takes
over once the heartbeat is stale, and training starts again from the first model. A heartbeat
thread renews the lease whatever training does (one reference model may train longer than the
lease). Failures end as in the erasure job (worker/faults.py): a passing fault puts the set back
in the queue with a backoff, a broken device puts it back and this worker stops taking work. Only
the models' scores are stored, never their weights. Torch is imported only when a job runs: the
API process that embeds the runner stays light.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from enum import StrEnum

from ledger import datasets as ledger_datasets
from ledger import references, registry
from ledger.errors import LeaseLost
from ledger.observability import bind
from ledger.tables import Dataset, Model
from worker.context import JobContext
from worker.faults import Fault, classify
from worker.heartbeat import Heartbeat

log = logging.getLogger("ltu.worker")

CANCEL_CHECK_INTERVAL = 1.0  # seconds between cancellation reads inside training


class ReferenceOutcome(StrEnum):
    """What one call of the job did with its set."""

    COMPLETED = "completed"  # this call trained and stored it: the set is ready
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # finished or cancelled already, held by a live execution, or taken over meanwhile


class ReferenceFailed(Exception):
    """The set cannot be trained; `code` and the message land in its row."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Cancelled(Exception):
    """Someone asked to cancel the set."""


class Interrupted(Exception):
    """The process is stopping: the set goes back to the queue, to be trained again from the start."""


class ReferenceLease:
    """The job's hold on one set: progress, heartbeat and cancellation, each a short transaction."""

    def __init__(
        self, ctx: JobContext, set_id: str, token: str, *, stopping: Callable[[], bool] = lambda: False
    ) -> None:
        self.ctx = ctx
        self.set_id = set_id
        self.token = token
        self.stopping = stopping
        self._last_check = 0.0
        self._cancelled = False
        self.heartbeat = Heartbeat(
            ctx.database,
            lambda session: references.heartbeat(session, set_id=set_id, token=token),
            lease_seconds=ctx.settings.worker.lease_seconds,
            name="ltu-reference-heartbeat",
        )

    def report(self, **values) -> None:
        """Write columns of the set (renews the lease; LeaseLost once it is not ours any more)."""
        with self.ctx.database.transaction() as session:
            references.report(session, set_id=self.set_id, token=self.token, **values)

    def progress(self, phase: str, step: int, total: int) -> None:
        """ltu_core progress callback: one write per reference model."""
        self.report(phase=phase, progress_step=step, progress_total=total)

    def should_cancel(self) -> bool:
        """ltu_core cancellation hook, called every batch: reads the flag every second.

        Interrupted when the process is stopping; LeaseLost once the heartbeat found the lease gone.
        """
        if self.stopping():
            raise Interrupted()
        if self.heartbeat.lost.is_set():
            raise LeaseLost(f"reference set {self.set_id} is no longer held by this execution")
        now = time.monotonic()
        if now - self._last_check >= CANCEL_CHECK_INTERVAL:
            self._last_check = now
            with self.ctx.database.session() as session:
                self._cancelled = references.cancel_requested(session, set_id=self.set_id)
        return self._cancelled

    def check_cancelled(self) -> None:
        """Between steps: raise Cancelled if someone asked to."""
        self._last_check = 0.0
        if self.should_cancel():
            raise Cancelled()

    def finish(self, to: str, code: str | None, message: str | None, seconds: float) -> ReferenceOutcome:
        """End the set as failed or cancelled (SKIPPED if it was not ours any more)."""
        with self.ctx.database.transaction() as session:
            done = references.finish(
                session,
                set_id=self.set_id,
                token=self.token,
                to=to,
                error_code=code,
                error_message=message,
                seconds=round(seconds, 3),
            )
        log.info("reference set %s: %s%s", self.set_id, to, f" ({code}: {message})" if code else "")
        return ReferenceOutcome(to) if done else ReferenceOutcome.SKIPPED


def run_reference_training(
    ctx: JobContext, reference_set_id: str, *, stopping: Callable[[], bool] = lambda: False
) -> str:
    """Train and store one reference set (see ReferenceOutcome); every ending lands in the ledger.

    `stopping` (the embedded runner's shutdown) is checked inside training: when it turns True the
    set is put back in the queue and dispatched again (SKIPPED), instead of holding up the shutdown.
    """
    with bind(reference_set_id=reference_set_id):
        settings, token = ctx.settings.worker, str(uuid.uuid4())
        with ctx.database.transaction() as session:
            claimed = references.claim(
                session,
                set_id=reference_set_id,
                token=token,
                lease_seconds=settings.lease_seconds,
                max_attempts=settings.max_attempts,
            )
        if claimed is None:
            log.info(
                "reference set %s: nothing to do (finished, cancelled, or held by a live execution)", reference_set_id
            )
            return ReferenceOutcome.SKIPPED
        lease = ReferenceLease(ctx, reference_set_id, token, stopping=stopping)
        with lease.heartbeat:
            return _execute(lease)


def _execute(lease: ReferenceLease) -> ReferenceOutcome:
    from ltu_core.errors import LTUError, UnlearningCancelled

    started = time.monotonic()
    try:
        _train(lease, started)
        return ReferenceOutcome.COMPLETED
    except LeaseLost:
        log.warning("reference set %s: lease lost; another execution owns it now", lease.set_id)
        return ReferenceOutcome.SKIPPED
    except Interrupted:
        _release(lease, reason="shutdown")
        return ReferenceOutcome.SKIPPED
    except (Cancelled, UnlearningCancelled):
        return lease.finish(references.CANCELLED, None, "cancelled on request", time.monotonic() - started)
    except ReferenceFailed as exc:
        return lease.finish(references.FAILED, exc.code, str(exc), time.monotonic() - started)
    except LTUError as exc:
        code = "".join("_" + c.lower() if c.isupper() else c for c in type(exc).__name__).lstrip("_")
        return lease.finish(references.FAILED, code, str(exc), time.monotonic() - started)
    except Exception as exc:
        fault = classify(exc)
        if fault == Fault.DEVICE:
            lease.ctx.device_fault = f"{type(exc).__name__}: {str(exc)[:300]}"
            log.critical("this worker's device failed; it takes no more work", exc_info=exc)
            _release(lease, reason=f"the worker's device failed ({type(exc).__name__})")
            return ReferenceOutcome.SKIPPED
        if fault == Fault.TRANSIENT:
            log.warning("reference set %s: a passing fault", lease.set_id, exc_info=exc)
            _release(lease, reason=f"a passing fault ({type(exc).__name__}: {str(exc)[:300]})", count_retry=True)
            return ReferenceOutcome.SKIPPED
        log.exception("reference set %s failed unexpectedly", lease.set_id)
        message = (
            f"internal error ({type(exc).__name__}) while training the reference models; the worker log has the details"
        )
        return lease.finish(references.FAILED, "internal_error", message, time.monotonic() - started)


def _release(lease: ReferenceLease, *, reason: str, count_retry: bool = False) -> None:
    """Put the set back in the queue (with the backoff of its retries after a passing fault)."""
    settings = lease.ctx.settings.worker
    try:
        with lease.ctx.database.transaction() as session:
            released = references.release(
                session,
                set_id=lease.set_id,
                token=lease.token,
                reason=reason,
                retry_in=settings.retry_backoff_seconds if count_retry else 0.0,
                retry_cap=settings.retry_backoff_cap_seconds,
                count_retry=count_retry,
                max_retries=settings.max_transient_retries,
            )
    except Exception:  # the database is still away: the lease expires and the reconciler requeues the set
        log.exception("reference set %s: could not put it back in the queue; the reconciler will", lease.set_id)
        return
    log.info("reference set %s: %s (%s)", lease.set_id, "back in the queue" if released else "lost its lease", reason)


def _train(lease: ReferenceLease, started: float) -> None:
    """The steps; raises ReferenceFailed, Cancelled or LeaseLost instead of leaving the set running."""
    import numpy as np

    from ltu_core.audit import train_references
    from ltu_core.data import read_dataset
    from ltu_core.data.format import check_tombstones
    from ltu_core.errors import DatasetFormatError
    from ltu_core.models import load_model
    from ltu_core.train import TrainRecipe

    ctx = lease.ctx
    ctx.configure_torch()
    with ctx.database.session() as session:
        ref = references.load(session, set_id=lease.set_id)
        assert ref is not None
        model_row = session.get(Model, ref.model_id)
        assert model_row is not None
        if model_row.recipe is None:
            raise ReferenceFailed(
                "no_recipe",
                f"model {model_row.id} has no training recipe: reference models are trained with the model's own "
                "recipe; register the model with one",
            )
        version = registry.get_version(session, model_id=model_row.id, number=model_row.current_version)
        dataset_row = session.get(Dataset, model_row.dataset_id)
        assert dataset_row is not None
        erased = references.erased_sample_ids(session, dataset_id=dataset_row.id)
        purged = ledger_datasets.purged_rows(session, dataset_id=dataset_row.id)
        recipe_fields, count, seed = dict(model_row.recipe), ref.count, ref.seed
        model_id, trained_on_version = model_row.id, model_row.current_version
        dataset_key, dataset_size, dataset_sha256 = (
            dataset_row.storage_key,
            dataset_row.num_samples,
            dataset_row.archive_sha256,
        )
        weights_key, weights_sha256 = version.storage_key, version.sha256

    dataset = read_dataset(ctx.store.path(dataset_key))
    erased_rows = np.asarray(sorted(erased), dtype=np.int64)
    named = np.asarray([erased[r] for r in erased_rows.tolist()], dtype=dataset.sample_ids.dtype)
    if len(dataset) != dataset_size or (
        len(erased_rows) and not np.array_equal(dataset.sample_ids[erased_rows], named)
    ):
        raise ReferenceFailed("dataset_mismatch", "the stored dataset files do not match the ledger's sample index")
    try:
        check_tombstones(dataset, purged)  # purged rows are erased ones: excluded below, and zeros besides
    except DatasetFormatError as exc:
        raise ReferenceFailed(
            "dataset_mismatch", f"the stored dataset does not match the ledger's purges: {exc}"
        ) from None
    # Erased samples never enter a reference model: an erased person's data must not train a new model.
    train_rows = np.setdiff1d(dataset.split_indices("train"), np.union1d(erased_rows, purged))
    if len(train_rows) < references.MIN_COUNT:
        raise ReferenceFailed("too_few_samples", f"only {len(train_rows)} training samples are left after erasures")
    _, arch = load_model(ctx.store.path(weights_key))
    try:
        recipe = TrainRecipe(**recipe_fields)
    except TypeError as exc:
        raise ReferenceFailed("invalid_recipe", f"the model's stored training recipe is not usable: {exc}") from None
    lease.report(
        trained_on_version=trained_on_version,
        train_samples=len(train_rows),
        erased_samples=len(erased_rows),
        phase="references",
        progress_step=0,
        progress_total=count,
    )
    device = ctx.device()
    scores = train_references(
        dataset,
        train_rows,
        arch,
        recipe,
        count=count,
        seed=seed,
        device=device,
        progress=lease.progress,
        should_cancel=lease.should_cancel,
    )
    lease.check_cancelled()

    lease.report(phase="storing")  # the step count stays at the K models trained
    staged = ctx.store.staging_file(".safetensors")
    try:
        scores.save(
            staged,
            metadata={
                "reference_set_id": lease.set_id,
                "model_id": model_id,
                "trained_on_version": trained_on_version,
                "weights_sha256": weights_sha256,
                "dataset_sha256": dataset_sha256,
                "train_samples": len(train_rows),
                "erased_samples": len(erased_rows),
                "count": count,
                "device": str(device),
            },
        )
        seconds = round(time.monotonic() - started, 3)
        with ctx.database.transaction() as session:  # the file reaches references/ only as the set turns ready
            blob = ctx.store.stage_scores(session, staged)
            if not references.finish_ready(
                session,
                set_id=lease.set_id,
                token=lease.token,
                storage_key=blob.key,
                sha256=blob.sha256,
                size_bytes=blob.size,
                seconds=seconds,
            ):
                raise LeaseLost(f"reference set {lease.set_id} is no longer held by this execution")
    finally:
        ctx.store.discard(staged)  # a save that failed before the transaction took the file over
    log.info(
        "reference set %s: ready; %d reference models of model %s version %d on %d samples (%d erased left out) "
        "in %.1f s (sha256 %s)",
        lease.set_id,
        count,
        model_id,
        trained_on_version,
        len(train_rows),
        len(erased_rows),
        seconds,
        blob.sha256,
    )

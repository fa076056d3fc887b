"""The erasure job: ordered, idempotent steps over one deletion request.

    claim → prepare → measure before → unlearn → verify (→ Retrain fallback) → publish

`run_erasure(ctx, request_id)` is the only entry point; the Celery task and the embedded runner
both call it. Each step reads what it needs from the ledger and writes its results back under
the attempt's lease token, so:

- a redelivered or duplicated task finds the request running (or finished) and does nothing;
- a task redelivered after a crash takes the request over once its heartbeat is stale, and
  starts again from the beginning (steps are cheap next to correctness);
- publication is one transaction (new version + forward move of `current` + erased samples +
  completed status), so a request publishes exactly one version or none;
- if another request published a newer version meanwhile, the job redoes its work on it, so no
  version ever re-contains data erased by an earlier request.

Cancellation is honoured between steps and, inside the unlearning method, at its checks. No
database session is held while the model trains.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ledger import registry, requests
from ledger import datasets as ledger_datasets
from ledger.errors import LeaseLost, StaleBase
from ledger.tables import CANCELLED, FAILED, RUNNING, Dataset, Model, ModelVersion
from worker.context import JobContext

log = logging.getLogger("ltu.worker")

MAX_REBASES = 3
PROGRESS_INTERVAL = 0.5  # seconds between progress writes within one phase
CANCEL_CHECK_INTERVAL = 1.0  # seconds between cancellation reads
SCORE_POINTS = 200  # forget-set member scores kept per measurement (order statistics beyond that)
HISTOGRAM_BINS = 24  # bins of the control's member-score histogram


class JobFailed(Exception):
    """The request cannot be executed; `code` and the message land in its record."""

    def __init__(self, code: str, message: str, *, values: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.values = values or {}


class Cancelled(Exception):
    """Someone asked to cancel the request."""


def run_erasure(ctx: JobContext, request_id: str) -> str:
    """Execute one deletion request; returns what happened.

    completed | failed | cancelled: this call finished it. skipped: it was already finished or
    cancelled. busy: another execution holds its lease (retry after `lease_seconds`: if that
    execution died, the retry takes the request over). lease_lost: it was taken over meanwhile.
    """
    token = str(uuid.uuid4())
    with ctx.database.transaction() as session:
        claimed = requests.claim(session, request_id=request_id, token=token,
                                 lease_seconds=ctx.settings.lease_seconds, max_attempts=ctx.settings.max_attempts)
    if claimed is None:
        with ctx.database.session() as session:
            current = requests.load(session, request_id=request_id)
        if current is not None and current.status == RUNNING:
            # Another execution holds a live lease — or held it until it was killed a moment ago.
            # The caller may try again once the lease has run out (the Celery task does).
            log.info("request %s: held by another execution; try again after the lease", request_id)
            return "busy"
        log.info("request %s: nothing to do (finished or cancelled)", request_id)
        return "skipped"
    job = ErasureJob(ctx, request_id, token)
    try:
        for _ in range(MAX_REBASES):
            try:
                return job.execute()
            except StaleBase:
                log.info("request %s: the model moved to a newer version; redoing the work on it", request_id)
        raise JobFailed("stale_base", f"the model kept moving to newer versions; gave up after {MAX_REBASES} tries")
    except LeaseLost:
        log.warning("request %s: lease lost; another execution owns it now", request_id)
        return "lease_lost"
    except Cancelled:
        return job.finish(CANCELLED, None, "cancelled on request")
    except JobFailed as exc:
        return job.finish(FAILED, exc.code, str(exc), values=exc.values)
    except Exception as exc:  # noqa: BLE001 - every failure must land in the ledger
        from ltu_core.errors import LTUError, UnlearningCancelled

        if isinstance(exc, UnlearningCancelled):
            return job.finish(CANCELLED, None, "cancelled on request")
        if isinstance(exc, LTUError):
            return job.finish(FAILED, _error_code(exc), str(exc))
        log.exception("request %s failed unexpectedly", request_id)
        return job.finish(FAILED, "internal_error", f"internal error ({type(exc).__name__}); the worker log has the details")


def _error_code(exc: Exception) -> str:
    """CheckpointError → checkpoint_error, MethodConfigError → method_config_error, ..."""
    name = type(exc).__name__
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


@dataclass
class Prepared:
    """Everything the unlearning step reads, loaded once per try."""

    model_row: Model
    base: ModelVersion
    model: Any  # torch.nn.Module, θ_o
    arch: Any  # ltu_core ArchConfig
    split: Any  # ltu_core UnlearningSplit
    recipe: Any  # ltu_core TrainRecipe
    has_recipe: bool
    method: Any  # ltu_core UnlearningMethod
    info: dict[str, Any]


class ErasureJob:
    """One execution attempt of one request, holding the lease `token`."""

    def __init__(self, ctx: JobContext, request_id: str, token: str) -> None:
        self.ctx = ctx
        self.request_id = request_id
        self.token = token
        ctx.configure_torch()
        self.device = ctx.device()
        self._phase: str | None = None
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False

    # --- ledger I/O (short transactions) ----------------------------------------------------------

    def report(self, **values: Any) -> None:
        """Write values of the running request (LeaseLost if it is not ours any more)."""
        with self.ctx.database.transaction() as session:
            requests.report(session, request_id=self.request_id, token=self.token, **values)

    def progress(self, phase: str, step: int, total: int) -> None:
        """Progress callback: every phase change, the last step, and at most every PROGRESS_INTERVAL otherwise."""
        now = time.monotonic()
        if phase == self._phase and step < total and now - self._last_write < PROGRESS_INTERVAL:
            return
        self._phase, self._last_write = phase, now
        self.report(phase=phase, progress_step=step, progress_total=total)

    def should_cancel(self) -> bool:
        """Cancellation check for ltu_core hooks (reads the ledger at most every second)."""
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            with self.ctx.database.session() as session:
                self._cancel = requests.cancel_requested(session, request_id=self.request_id)
        return self._cancel

    def check_cancelled(self) -> None:
        """Between steps: stop if cancellation was asked for."""
        self._last_cancel_check = 0.0
        if self.should_cancel():
            raise Cancelled()

    def finish(self, to: str, code: str | None, message: str | None, values: dict[str, Any] | None = None) -> str:
        """End the attempt as failed or cancelled (a no-op if the lease was lost)."""
        with self.ctx.database.transaction() as session:
            if values:
                try:
                    requests.report(session, request_id=self.request_id, token=self.token, **values)
                except LeaseLost:
                    return "lease_lost"
            done = requests.finish(session, request_id=self.request_id, token=self.token, to=to,
                                   error_code=code, error_message=message)
        log.info("request %s: %s%s", self.request_id, to, f" ({code}: {message})" if code else "")
        return to if done else "lease_lost"

    # --- the steps --------------------------------------------------------------------------------

    def execute(self) -> str:
        """prepare → measure before → unlearn → verify → publish; returns "completed"."""
        self.progress("preparing", 0, 1)
        prep = self.prepare()
        self.check_cancelled()
        before, verdict_before, scores_before = self.measure(prep.model, prep)
        self.report(base_version=prep.base.number, metrics_before=before)
        self.check_cancelled()

        from ltu_core.methods import RunHooks

        hooks = RunHooks(progress=self.progress, should_cancel=self.should_cancel)
        result = prep.method.run(self.task(prep), hooks)
        self.check_cancelled()

        self.progress("verifying", 0, 1)
        after, verdict_after, scores_after = self.measure(result.model, prep, original_ta=before["ta"])
        fallback = None
        if not verdict_after["passed"] and not prep.method.reads_full_retain:
            fallback = self.fallback(prep, result, verdict_after)
            result, (after, verdict_after, scores_after) = fallback.pop("_result"), fallback.pop("_measure")
        self.progress("verifying", 1, 1)
        verification = {
            "passed": verdict_after["passed"],
            "exact": bool(result.method == "retrain"),
            "before": verdict_before,
            "after": verdict_after,
            "fallback": fallback,
        }
        details = {**prep.info, "run": _jsonable(result.record()), "device": self.device,
                   "scores": {"before": scores_before, "after": scores_after}}
        self.check_cancelled()
        return self.publish(prep, result, after, verification, details)

    def prepare(self) -> Prepared:
        """Load the current version, the dataset without previously erased samples, D_f and the method."""
        import numpy as np
        from ltu_core.data import ForgetSpec, make_split, read_dataset
        from ltu_core.methods import create_method, method_entry
        from ltu_core.models import load_model
        from ltu_core.train import TrainRecipe

        with self.ctx.database.session() as session:
            request = requests.load(session, request_id=self.request_id)
            assert request is not None
            model_row = session.get(Model, request.model_id)
            assert model_row is not None
            base = registry.get_version(session, model_id=model_row.id, number=model_row.current_version)
            dataset_row = session.get(Dataset, model_row.dataset_id)
            assert dataset_row is not None
            named = requests.request_samples(session, request_id=self.request_id)
            forgotten = ledger_datasets.erased_for_model(session, model_id=model_row.id)
            erased = ledger_datasets.erased_rows(session, dataset_id=dataset_row.id)
            method_name, parameters = request.method, dict(request.parameters)

        forget = [s for s in named if s.split == "train" and s.id not in forgotten]
        if not forget:
            raise JobFailed("already_erased", "every training sample this request names was already erased from the model by an earlier request")
        forget_pks = {s.id for s in forget}
        excluded = sorted(row for pk, row in erased.items() if pk not in forget_pks)

        entry = method_entry(method_name)  # UnknownMethodError → failed, with the list of methods
        method = create_method(method_name, **parameters)  # MethodConfigError → failed
        has_recipe = model_row.recipe is not None
        if entry.cls.reads_full_retain and not has_recipe:
            raise JobFailed("no_recipe", f"method {method_name!r} retrains from scratch and needs the model's training recipe; register the model with one")

        dataset = read_dataset(self.ctx.store.path(dataset_row.storage_key))
        rows = np.asarray([s.row for s in forget])
        if not np.array_equal(dataset.sample_ids[rows], np.asarray([s.sample_id for s in forget], dtype=dataset.sample_ids.dtype)):
            raise JobFailed("dataset_mismatch", "the stored dataset files do not match the ledger's sample index")
        split = make_split(dataset, ForgetSpec(kind="samples", ids=tuple(s.sample_id for s in forget)),
                           retain_fraction=self.ctx.settings.retain_fraction, seed=self.ctx.settings.seed,
                           exclude=np.asarray(excluded, dtype=np.int64))
        model, arch = load_model(self.ctx.store.path(base.storage_key))
        model = model.to(self.device).eval()
        recipe = TrainRecipe(**model_row.recipe) if has_recipe else TrainRecipe()
        info = {
            "split": _jsonable(split.info),
            "forget_samples": len(forget),
            "excluded_erased_samples": len(excluded),
            "base_version": base.number,
            "base_sha256": base.sha256,
        }
        return Prepared(model_row, base, model, arch, split, recipe, has_recipe, method, info)

    def task(self, prep: Prepared, model: Any = None):
        """The ltu_core task for this request's split."""
        from ltu_core.methods import UnlearningTask

        return UnlearningTask.from_split(model or prep.model, prep.arch, prep.split, prep.recipe,
                                         seed=self.ctx.settings.seed, device=self.device)

    def measure(self, model: Any, prep: Prepared, *, original_ta: float | None = None) -> tuple[dict, dict, dict]:
        """(UA/RA/TA/MIA metrics, membership-inference verdict with its numbers, member scores) of `model`."""
        from ltu_core.metrics import evaluate_posteriors
        from ltu_core.mia import VerificationThresholds, score_summary, verify_forgetting
        from ltu_core.models import predict_split

        settings = self.ctx.settings
        post = predict_split(model, prep.split, device=self.device)  # one inference pass for all three
        evaluation = evaluate_posteriors(post, prep.split, seed=settings.seed)
        thresholds = VerificationThresholds(z=settings.verify_z, max_test_drop=settings.verify_max_test_drop)
        verdict = verify_forgetting(
            retain=post["retain"], test=post["test"], forget=post["forget"], control=post["reference"],
            original_test_accuracy=evaluation.ta if original_ta is None else original_ta,
            thresholds=thresholds, seed=settings.seed,
        )
        scores = score_summary(post["forget"], post["reference"], points=SCORE_POINTS, bins=HISTOGRAM_BINS)
        return _jsonable(evaluation.as_dict()), _jsonable(verdict.as_dict()), scores

    def fallback(self, prep: Prepared, first: Any, first_verdict: dict) -> dict[str, Any]:
        """Verification failed: fall back to exact retraining, or fail the request saying why."""
        failed = []
        if not first_verdict["forgetting_passed"]:
            failed.append("forgetting" if first_verdict["conclusive"]
                          else "forgetting (too few samples to verify by membership inference)")
        if not first_verdict["utility_passed"]:
            failed.append("utility")
        reason = " and ".join(failed)
        if not (self.ctx.settings.fallback_to_retrain and prep.has_recipe):
            why = "the model has no training recipe" if not prep.has_recipe else "the Retrain fallback is disabled"
            raise JobFailed(
                "verification_failed",
                f"{first.method} did not pass verification ({reason} check{'s' if len(failed) > 1 else ''}) and {why}; no version was published",
                values={"verification": {"passed": False, "after": first_verdict, "fallback": None}},
            )
        log.info("request %s: %s failed verification (%s); falling back to Retrain", self.request_id, first.method, reason)
        from ltu_core.methods import RunHooks, create_method

        self.check_cancelled()
        retrain = create_method("retrain").run(self.task(prep), RunHooks(progress=self.progress, should_cancel=self.should_cancel))
        self.progress("verifying", 0, 1)
        measured = self.measure(retrain.model, prep, original_ta=first_verdict["original_test_accuracy"])
        return {
            "method": "retrain",
            "reason": f"{first.method} failed the {reason} check",
            "first_attempt": {"method": first.method, "verdict": first_verdict, "run": _jsonable(first.record())},
            "_result": retrain,
            "_measure": measured,
        }

    def publish(self, prep: Prepared, result: Any, after: dict, verification: dict, details: dict) -> str:
        """Store the weights (sha256-addressed) and publish version base+1 in one transaction."""
        from ltu_core.models import save_model

        self.progress("publishing", 0, 1)
        staged = self.ctx.store.staging_file(".safetensors")
        try:
            save_model(result.model.cpu(), prep.arch, staged, metadata={
                "model_id": prep.model_row.id, "parent_sha256": prep.base.sha256,
                "request_id": self.request_id, "method": result.method,
            })
            blob = self.ctx.store.put_model(staged)
        finally:
            self.ctx.store.discard(staged)
        with self.ctx.database.transaction() as session:
            request = requests.load(session, request_id=self.request_id)
            model_row = session.get(Model, prep.model_row.id)
            base = session.get(ModelVersion, prep.base.id)
            assert request is not None and model_row is not None and base is not None
            version = requests.complete(
                session, request=request, token=self.token, model=model_row, base=base, sha256=blob.sha256,
                size_bytes=blob.size, storage_key=blob.key, metrics_after=after, verification=verification,
                details=details,
            )
        log.info("request %s: completed; model %s version %d (sha256 %s)", self.request_id, prep.model_row.id,
                 version.number, blob.sha256)
        return "completed"


def _jsonable(value: Any) -> Any:
    """JSON-ready for every backend: tuples → lists, NaN/inf → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value

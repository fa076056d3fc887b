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
  version ever re-contains data erased by an earlier request;
- requests for the same model, method and parameters that wait at the same time are coalesced:
  the claim takes up to `coalesce_max_batch` of them under one lease, one unlearning run forgets
  the union of their samples, and each request still gets its own metrics, verdict, audit
  events and completion (with the one published version).

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
from ledger.observability import bind
from ledger.tables import CANCELLED, FAILED, QUEUED, RECEIVED, RUNNING, Dataset, Model, ModelVersion, utcnow
from worker.context import JobContext

log = logging.getLogger("ltu.worker")

MAX_REBASES = 3
PROGRESS_INTERVAL = 0.5  # seconds between progress writes within one phase
CANCEL_CHECK_INTERVAL = 1.0  # seconds between cancellation reads
SCORE_POINTS = 200  # forget-set member scores kept per measurement (order statistics beyond that)
HISTOGRAM_BINS = 24  # bins of the control's member-score histogram


ALREADY_ERASED = "every training sample this request names was already erased from the model by an earlier request"


class JobFailed(Exception):
    """The request cannot be executed; `code` and the message land in its record."""

    def __init__(self, code: str, message: str, *, values: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.values = values or {}


class Cancelled(Exception):
    """Someone asked to cancel the request."""


def run_erasure(ctx: JobContext, request_id: str) -> str:
    """Execute one deletion request, with the waiting requests it can share a run with; returns what happened.

    completed | failed | cancelled: this call finished it. skipped: it was already finished or
    cancelled. held: another live execution holds it (e.g. a coalesced run took it along); if
    that execution dies, the reconciler dispatches it again once its heartbeat is older than the
    lease. busy: it is startable but kept changing under the claim; try again shortly.
    lease_lost: it was taken over meanwhile.
    """
    with bind(deletion_request_id=request_id):
        return _run(ctx, request_id)


def _run(ctx: JobContext, request_id: str) -> str:
    _wait_for_coalescing(ctx, request_id)
    token = str(uuid.uuid4())
    settings = ctx.settings
    with ctx.database.transaction() as session:
        leader = requests.claim(session, request_id=request_id, token=token,
                                lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts)
        siblings = [] if leader is None else requests.claim_siblings(
            session, leader=leader, lease_seconds=settings.lease_seconds, max_attempts=settings.max_attempts,
            limit=settings.coalesce_max_batch - 1)
        request_ids = [] if leader is None else [leader.id, *(s.id for s in siblings)]
    if leader is None:
        with ctx.database.session() as session:
            current = requests.load(session, request_id=request_id)
        if current is not None and current.status == RUNNING:
            log.info("request %s: held by a live execution (batch %s); the reconciler requeues it if that dies",
                     request_id, current.batch_id or request_id)
            return "held"
        if current is not None and current.status in (RECEIVED, QUEUED):
            log.info("request %s: %s but the claim kept losing races; try again shortly", request_id, current.status)
            return "busy"
        log.info("request %s: nothing to do (finished or cancelled)", request_id)
        return "skipped"
    if len(request_ids) > 1:
        log.info("request %s: coalesced with %d waiting request(s) on the same model", request_id, len(request_ids) - 1)
    job = ErasureJob(ctx, request_ids, token)
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


def _wait_for_coalescing(ctx: JobContext, request_id: str) -> None:
    """Give requests submitted together a moment to arrive: wait until `coalesce_window_seconds` after receipt.

    Only a waiting request that is younger than the window waits, so a backlog (or a requeued
    request) starts at once.
    """
    window = ctx.settings.coalesce_window_seconds
    if window <= 0 or ctx.settings.coalesce_max_batch <= 1:
        return
    with ctx.database.session() as session:
        request = requests.load(session, request_id=request_id)
        if request is None or request.status not in (RECEIVED, QUEUED):
            return
        remaining = (request.received_at - utcnow()).total_seconds() + window
    if remaining > 0:
        time.sleep(min(remaining, window))


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
    own_rows: dict[str, Any]  # request id → its D_f rows (dataset row indices), for its own metrics


@dataclass
class Measured:
    """One model measured on the run's split: the union's numbers and each request's own."""

    metrics: dict[str, Any]  # UA/RA/TA/MIA over the whole D_f
    verdict: dict[str, Any]  # membership-inference verdict over the whole D_f
    scores: dict[str, Any]  # member-score summary over the whole D_f
    own: dict[str, tuple[dict, dict, dict]]  # request id → (metrics, verdict, scores) on its samples

    def for_request(self, request_id: str) -> tuple[dict, dict, dict]:
        """(metrics, verdict, scores) of one request: its own when coalesced, else the union's."""
        return self.own.get(request_id, (self.metrics, self.verdict, self.scores))

    @property
    def passed(self) -> bool:
        """The union passed, and so did every request whose own sample count makes its test conclusive."""
        return self.verdict["passed"] and all(v["passed"] or not v["conclusive"] for _, v, _ in self.own.values())

    def failures(self) -> dict[str, Any]:
        """The verdict that failed, to explain a fallback: the union's, else the first failing request's."""
        if not self.verdict["passed"]:
            return self.verdict
        return next(v for _, v, _ in self.own.values() if not v["passed"] and v["conclusive"])


class ErasureJob:
    """One execution attempt over one or more coalesced requests, holding the lease `token`.

    `request_ids[0]` led the claim; requests cancelled while running leave the list at the next
    check between steps (the run goes on for the others).
    """

    def __init__(self, ctx: JobContext, request_ids: list[str], token: str) -> None:
        self.ctx = ctx
        self.request_ids = list(request_ids)
        self.request_id = request_ids[0]
        self.token = token
        ctx.configure_torch()
        self.device = ctx.device()
        self._phase: str | None = None
        self._phase_started = time.monotonic()
        self.phase_seconds: dict[str, float] = {}
        self._last_write = 0.0
        self._last_cancel_check = 0.0
        self._cancelled: set[str] = set()

    # --- ledger I/O (short transactions) ----------------------------------------------------------

    def report(self, **values: Any) -> None:
        """Write values to every request of the run (LeaseLost if one of them is not ours any more)."""
        with self.ctx.database.transaction() as session:
            requests.report(session, request_ids=self.request_ids, token=self.token, **values)

    def progress(self, phase: str, step: int, total: int) -> None:
        """Progress callback: every phase change, the last step, and at most every PROGRESS_INTERVAL otherwise."""
        now = time.monotonic()
        if phase != self._phase:
            if self._phase is not None:  # time spent per phase, for /metrics and the run record
                self.phase_seconds[self._phase] = self.phase_seconds.get(self._phase, 0.0) + now - self._phase_started
            self._phase_started = now
        elif step < total and now - self._last_write < PROGRESS_INTERVAL:
            return
        self._phase, self._last_write = phase, now
        self.report(phase=phase, progress_step=step, progress_total=total)

    def should_cancel(self) -> bool:
        """Cancellation check for ltu_core hooks: stop the run only when every request asked to (read at most every second)."""
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            with self.ctx.database.session() as session:
                self._cancelled = requests.cancel_requested(session, request_ids=self.request_ids)
        return bool(self.request_ids) and self._cancelled.issuperset(self.request_ids)

    def check_cancelled(self) -> None:
        """Between steps: finish the requests that asked to be cancelled; stop if none is left."""
        self._last_cancel_check = 0.0
        if self.should_cancel():
            raise Cancelled()
        for request_id in [r for r in self.request_ids if r in self._cancelled]:
            self._finish_one(request_id, CANCELLED, None, "cancelled on request")

    def _finish_one(self, request_id: str, to: str, code: str | None, message: str | None) -> None:
        """Drop one request from the run, ending it as failed or cancelled (the others go on)."""
        with self.ctx.database.transaction() as session:
            requests.finish(session, request_id=request_id, token=self.token, to=to, error_code=code, error_message=message)
        self.request_ids.remove(request_id)
        log.info("request %s: %s%s (its coalesced run goes on)", request_id, to, f" ({code})" if code else "")

    def finish(self, to: str, code: str | None, message: str | None, values: dict[str, Any] | None = None) -> str:
        """End the attempt as failed or cancelled for every request of the run (a no-op if the lease was lost)."""
        with self.ctx.database.transaction() as session:
            if values:
                try:
                    requests.report(session, request_ids=self.request_ids, token=self.token, **values)
                except LeaseLost:
                    return "lease_lost"
            # A list, not a generator: every request is finished, even after one that was lost.
            done = all([requests.finish(session, request_id=r, token=self.token, to=to, error_code=code,
                                        error_message=message) for r in self.request_ids])
        log.info("request %s: %s%s", self.request_id, to, f" ({code}: {message})" if code else "")
        return to if done else "lease_lost"

    # --- the steps --------------------------------------------------------------------------------

    def execute(self) -> str:
        """prepare → measure before → unlearn → verify → publish; returns "completed"."""
        self.phase_seconds.clear()
        self.progress("preparing", 0, 1)
        prep = self.prepare()
        self.check_cancelled()
        self.progress("measuring", 0, 1)
        before = self.measure(prep.model, prep)
        self.report(base_version=prep.base.number, metrics_before=before.metrics)
        self.check_cancelled()

        from ltu_core.methods import RunHooks

        hooks = RunHooks(progress=self.progress, should_cancel=self.should_cancel)
        result = prep.method.run(self.task(prep), hooks)
        self.check_cancelled()

        self.progress("verifying", 0, 1)
        after = self.measure(result.model, prep, original_ta=before.metrics["ta"])
        fallback = None
        if not after.passed and not prep.method.reads_full_retain:
            fallback = self.fallback(prep, result, after)
            result, after = fallback.pop("_result"), fallback.pop("_measure")
        self.progress("verifying", 1, 1)
        self.check_cancelled()
        return self.publish(prep, result, before, after, fallback)

    def prepare(self) -> Prepared:
        """Load the current version, the dataset without previously erased samples, D_f and the method."""
        import numpy as np
        from ltu_core.data import ForgetSpec, make_split, read_dataset
        from ltu_core.methods import create_method, method_entry
        from ltu_core.models import load_model
        from ltu_core.train import TrainRecipe

        with self.ctx.database.session() as session:
            leader = requests.load(session, request_id=self.request_id)
            assert leader is not None
            model_row = session.get(Model, leader.model_id)
            assert model_row is not None
            base = registry.get_version(session, model_id=model_row.id, number=model_row.current_version)
            dataset_row = session.get(Dataset, model_row.dataset_id)
            assert dataset_row is not None
            named = {r: requests.request_samples(session, request_id=r) for r in self.request_ids}
            forgotten = ledger_datasets.erased_for_model(session, model_id=model_row.id)
            erased = ledger_datasets.erased_rows(session, dataset_id=dataset_row.id)
            method_name, parameters = leader.method, dict(leader.parameters)

        own = {r: [s for s in samples if s.split == "train" and s.id not in forgotten] for r, samples in named.items()}
        for request_id in [r for r, samples in own.items() if not samples and len(own) > 1]:
            self._finish_one(request_id, FAILED, "already_erased", ALREADY_ERASED)
            del own[request_id]
        forget = sorted({s.id: s for samples in own.values() for s in samples}.values(), key=lambda s: s.row)
        if not forget:
            raise JobFailed("already_erased", ALREADY_ERASED)
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
        own_rows = {r: np.asarray([s.row for s in samples]) for r, samples in own.items()}
        return Prepared(model_row, base, model, arch, split, recipe, has_recipe, method, info, own_rows)

    def task(self, prep: Prepared, model: Any = None):
        """The ltu_core task for this request's split."""
        from ltu_core.methods import UnlearningTask

        return UnlearningTask.from_split(model or prep.model, prep.arch, prep.split, prep.recipe,
                                         seed=self.ctx.settings.seed, device=self.device)

    def measure(self, model: Any, prep: Prepared, *, original_ta: float | None = None) -> Measured:
        """UA/RA/TA/MIA metrics, the membership-inference verdict and member scores of `model`.

        Over the run's whole D_f and, when requests were coalesced, over each request's own samples.
        """
        import numpy as np
        import torch
        from ltu_core.metrics import evaluate_posteriors
        from ltu_core.mia import VerificationThresholds, fit_svc_attackers, score_summary, verify_forgetting
        from ltu_core.models import predict_split

        settings = self.ctx.settings
        post = predict_split(model, prep.split, device=self.device)  # one inference pass for everything
        attackers = fit_svc_attackers(post["retain"], post["test"], seed=settings.seed)  # one fit per feature
        thresholds = VerificationThresholds(z=settings.verify_z, max_test_drop=settings.verify_max_test_drop)

        def numbers(forget: Any) -> tuple[dict, dict, dict]:
            evaluation = evaluate_posteriors({**post, "forget": forget}, prep.split, seed=settings.seed,
                                             attackers=attackers)
            verdict = verify_forgetting(
                retain=post["retain"], test=post["test"], forget=forget, control=post["reference"],
                original_test_accuracy=evaluation.ta if original_ta is None else original_ta,
                thresholds=thresholds, seed=settings.seed, attacker=attackers["confidence"],
            )
            scores = score_summary(forget, post["reference"], points=SCORE_POINTS, bins=HISTOGRAM_BINS)
            return _jsonable(evaluation.as_dict()), _jsonable(verdict.as_dict()), scores

        whole = numbers(post["forget"])
        own = {}
        if len(prep.own_rows) > 1:
            for request_id, rows in prep.own_rows.items():
                own[request_id] = numbers(post["forget"].subset(torch.from_numpy(np.isin(prep.split.forget, rows))))
        return Measured(*whole, own=own)

    def fallback(self, prep: Prepared, first: Any, first_measured: Measured) -> dict[str, Any]:
        """Verification failed: fall back to exact retraining, or fail the request(s) saying why."""
        first_verdict = first_measured.failures()
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

    def outcomes(self, prep: Prepared, result: Any, before: Measured, after: Measured,
                 fallback: dict[str, Any] | None) -> dict[str, requests.Outcome]:
        """Each request's record: its own metrics and verdicts, the run's shared details."""
        self.progress("publishing", 0, 1)
        run = {**prep.info, "run": _jsonable(result.record()), "device": self.device,
               "phase_seconds": {k: round(v, 3) for k, v in self.phase_seconds.items()}}
        batch = {"size": len(self.request_ids), "leader": self.request_id, "verdict_after": after.verdict,
                 "forget_samples": len(prep.split.forget)} if len(self.request_ids) > 1 else None
        outcomes = {}
        for request_id in self.request_ids:
            metrics_before, verdict_before, scores_before = before.for_request(request_id)
            metrics_after, verdict_after, scores_after = after.for_request(request_id)
            verification = {"passed": after.passed, "exact": bool(result.method == "retrain"),
                            "before": verdict_before, "after": verdict_after, "fallback": fallback, "batch": batch}
            details = {**run, "scores": {"before": scores_before, "after": scores_after},
                       "own_forget_samples": len(prep.own_rows[request_id])}
            outcomes[request_id] = requests.Outcome(metrics_before, metrics_after, verification, details)
        return outcomes

    def publish(self, prep: Prepared, result: Any, before: Measured, after: Measured,
                fallback: dict[str, Any] | None) -> str:
        """Store the weights (sha256-addressed) and publish version base+1 for every request in one transaction."""
        from ltu_core.models import save_model

        outcomes = self.outcomes(prep, result, before, after, fallback)
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
            model_row = session.get(Model, prep.model_row.id)
            base = session.get(ModelVersion, prep.base.id)
            assert model_row is not None and base is not None
            version = requests.complete(
                session, token=self.token, model=model_row, base=base, outcomes=outcomes, sha256=blob.sha256,
                size_bytes=blob.size, storage_key=blob.key,
            )
        log.info("request %s: completed%s; model %s version %d (sha256 %s)", self.request_id,
                 f" with {len(outcomes) - 1} coalesced request(s)" if len(outcomes) > 1 else "",
                 prep.model_row.id, version.number, blob.sha256)
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

"""The Celery app factory and its thin tasks.

`create_celery(settings)` builds an app for the Redis broker with the settings long GPU jobs need
(SERVICE.md): late acks, rejection on worker loss, prefetch 1, a dedicated queue per kind of job
(erasures on `settings.worker.queue`, the audit's reference-model trainings on
`settings.worker.audit_queue`, so a long training never holds up an erasure), a visibility
timeout above the longest job, no result backend (status lives only in the ledger). The worker
process also runs the outbox relay, the reconciler and the purge loop (a bootstep), so no extra
process is needed to move requests from Postgres to Redis, to requeue interrupted work or to
delete superseded weights. Webhook deliveries never reach the broker: the same bootstep runs a
webhook lane (worker.webhooks) that takes them from the outbox itself, so they never wait behind
a GPU job.

`celery -A worker.celery_app worker` finds the app through this module's `app` attribute, which
is built from the environment on first access (never at import).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import setup_logging, worker_process_init

from ledger import outbox, secret_check
from ledger.db import Database
from ledger.observability import bind, configure_logging_from_env
from ltu_settings import Settings
from worker.attempt import JobOutcome
from worker.context import LazyContext
from worker.dispatch import OutboxDispatcher
from worker.reconciler import ReconcileLoop
from worker.retention import PurgeLoop
from worker.webhooks import webhook_lane

log = logging.getLogger("ltu.worker")


def create_celery(settings: Settings, *, relay: bool = True) -> Celery:
    """A Celery app whose tasks `ltu.erasure.run` and `ltu.audit_references.train` execute the two jobs."""
    if not settings.ledger.broker_url:
        raise ValueError("create_celery needs settings.ledger.broker_url (LTU_BROKER_URL)")
    app = Celery("ltu", broker=settings.ledger.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,  # one job per GPU
        task_default_queue=settings.worker.queue,
        task_routes=task_routes(settings),
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.worker.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    context = LazyContext(settings)
    worker_process_init.connect(lambda **_: context.reset(), weak=False)  # prefork child: own engine
    # Connected, this replaces Celery's own logging set-up: the same JSON lines as the API's.
    setup_logging.connect(_configure_logging, weak=False, dispatch_uid="ltu-logging")

    # shared=False: each app keeps its own tasks (closures over its settings), never another app's.
    @app.task(name=outbox.ERASURE_TASK, bind=True, ignore_result=True, max_retries=None, shared=False)
    def run_erasure_task(self, request_id: str) -> str:
        """Execute one deletion request (all state is in the ledger)."""
        from worker.job import run_erasure

        ctx = context.get()
        with bind(task_id=self.request.id):
            outcome = run_erasure(ctx, request_id)
        if ctx.device_fault is not None:
            stop_consuming(self.app, self.request.hostname, settings)
        if outcome.retry_after is not None:  # not started (model busy, claim raced, ledger away, device broken)
            raise self.retry(countdown=outcome.retry_after)
        return outcome

    @app.task(name=outbox.AUDIT_REFERENCES_TASK, bind=True, ignore_result=True, max_retries=None, shared=False)
    def train_audit_references_task(self, reference_set_id: str) -> str:
        """Train one set of reference models of the audit's likelihood-ratio tier (all state is in the ledger)."""
        from worker.references import run_reference_training

        ctx = context.get()
        if ctx.device_fault is not None:  # this worker stopped consuming; the message goes to another one
            raise self.retry(countdown=JobOutcome.DEVICE_BROKEN.retry_after)
        with bind(task_id=self.request.id):
            outcome = run_reference_training(ctx, reference_set_id)
        if ctx.device_fault is not None:
            stop_consuming(self.app, self.request.hostname, settings)
        return outcome

    app.steps["worker"].add(_background_step(settings, relay=relay))
    return app


def stop_consuming(app: Celery, hostname: str | None, settings: Settings) -> None:
    """This worker's device failed: it leaves both queues, so other workers take the work, and stays up for
    inspection (`celery inspect active_queues` shows it consuming nothing)."""
    if not hostname:  # never broadcast: that would stop every worker's consumers
        log.critical("a worker's device failed, but it has no hostname to address; restart it")
        return
    log.critical("worker %s: its device failed; it stops consuming the job queues", hostname)
    for queue in (settings.worker.queue, settings.worker.audit_queue):
        app.control.cancel_consumer(queue, destination=[hostname])


def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    configure_logging_from_env(default_level=loglevel or "INFO")  # LTU_LOG_LEVEL wins over --loglevel


def task_routes(settings: Settings) -> dict[str, dict[str, str]]:
    """The queue of each task: erasures and reference trainings never share one.

    The relay hands exactly these tasks to the broker: a task the outbox carries needs its route here.
    """
    return {
        outbox.ERASURE_TASK: {"queue": settings.worker.queue},
        outbox.AUDIT_REFERENCES_TASK: {"queue": settings.worker.audit_queue},
    }


def celery_relay(settings: Settings, app: Celery, *, database: Database | None = None) -> OutboxDispatcher:
    """An outbox dispatcher that enqueues each row on the broker by task name."""

    routes = task_routes(settings)

    def send(task_name: str, payload: dict[str, Any]) -> None:
        queue = routes.get(task_name, {"queue": settings.worker.queue})["queue"]
        app.send_task(task_name, kwargs=payload, queue=queue)

    return OutboxDispatcher(
        database or Database(settings.ledger.database_url),
        send,
        poll_interval=settings.worker.poll_interval,
        name="ltu-outbox-relay",
        task_names=tuple(routes),  # webhook deliveries stay for the webhook lane
    )


def _background_step(settings: Settings, *, relay: bool) -> type[bootsteps.StartStopStep]:
    class BackgroundStep(bootsteps.StartStopStep):
        """Runs the outbox relay (unless disabled), the webhook lane, the reconciler and the purge loop in the
        worker's main process."""

        requires = ("celery.worker.components:Pool",)

        def __init__(self, worker, **kwargs) -> None:
            super().__init__(worker, **kwargs)
            self.loops: list = []

        def start(self, worker) -> None:
            # A worker with another server secret than the ledger's must not start (ConfigError ends it).
            secret_check.check_secret_at(settings.ledger.database_url, settings.ledger.secret_key, actor="worker")
            self.loops = [celery_relay(settings, worker.app)] if relay else []
            deliveries = Database(settings.ledger.database_url)
            self.loops += [
                webhook_lane(settings, deliveries, stopping=lambda: False, name="ltu-webhooks"),
                ReconcileLoop(settings),
                PurgeLoop(settings),
            ]
            for loop in self.loops:
                loop.start()
            log.info(
                "outbox relay %s; reconciler every %.0f s; purge pass every %.0f s (queues %s, %s)",
                "started" if relay else "disabled",
                settings.worker.reconcile_interval,
                settings.ledger.purge_interval,
                settings.worker.queue,
                settings.worker.audit_queue,
            )

        def stop(self, worker) -> None:
            for loop in reversed(self.loops):
                loop.stop()

    return BackgroundStep


_app: Celery | None = None


def __getattr__(name: str) -> Celery:
    # `celery -A worker.celery_app` reads `app`: build it from the environment on first access.
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_celery(Settings.from_env())
        return _app
    raise AttributeError(name)

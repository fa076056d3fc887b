"""The embedded runner: executes jobs in the serving process from the same outbox, one lane per kind of job.

With no broker configured (`LTU_BROKER_URL` unset) `ltu serve` starts this beside the API. Three
background threads poll the outbox, each for its own task names: one calls the same `run_erasure`
the Celery task `ltu.erasure.run` calls, one the same `run_reference_training` the task
`ltu.audit_references.train` calls, one makes webhook delivery attempts (worker.webhooks).
Reference models train for much longer than an erasure takes, so on one thread they would hold up
erasure requests, which have a legal deadline; a receiver that is slow or down holds up neither.

At shutdown a running job is interrupted at its next check and gives its request back to the
queue (the next start runs it); `stop` waits at most `shutdown_timeout` seconds for that, after
which the lease expires and the reconciler requeues the request. When the device fails, the
erasure lane stops taking work and `/readyz` says so (`problem`).
"""

from __future__ import annotations

import logging
import threading

from ledger import outbox
from ledger.db import Database
from ltu_settings import Settings
from worker.context import JobContext
from worker.dispatch import OutboxDispatcher, RetryLater, mark_handed_over
from worker.webhooks import webhook_lane

log = logging.getLogger("ltu.runner")


class EmbeddedRunner:
    """Start/stop object for `api.app.create_app(background=[...])`."""

    def __init__(self, settings: Settings, *, database: Database | None = None) -> None:
        self.context = JobContext.from_settings(settings, database=database)
        self.shutdown_timeout = settings.worker.shutdown_timeout
        self._stopping = threading.Event()
        # The claim lease outlives any job: this runner executes while it holds the claim.
        lane = dict(poll_interval=settings.worker.poll_interval, claim_seconds=settings.worker.lease_seconds)
        self.erasures = OutboxDispatcher(
            self.context.database,
            self._execute,
            task_names=(outbox.ERASURE_TASK,),
            name="ltu-embedded-runner",
            stopping=lambda: self._stopping.is_set() or self.context.device_fault is not None,
            **lane,
        )
        self.references = OutboxDispatcher(
            self.context.database,
            self._execute,
            task_names=(outbox.AUDIT_REFERENCES_TASK,),
            name="ltu-embedded-references",
            stopping=lambda: self._stopping.is_set() or self.context.device_fault is not None,
            **lane,
        )
        # Deliveries need no device: they go on when it fails.
        self.webhooks = webhook_lane(
            settings, self.context.database, stopping=self._stopping.is_set, name="ltu-embedded-webhooks"
        )

    def _execute(self, task_name: str, payload: dict) -> None:
        if task_name == outbox.AUDIT_REFERENCES_TASK:
            from worker.references import run_reference_training

            run_reference_training(self.context, payload["reference_set_id"], stopping=self._stopping.is_set)
            return
        if task_name != outbox.ERASURE_TASK:
            log.warning("embedded runner: no handler for task %s; skipping", task_name)
            return
        from worker.job import run_erasure

        with self.context.database.transaction() as session:  # handed over: this runner is its queue
            mark_handed_over(session, task_name=task_name, payload=payload)
        outcome = run_erasure(self.context, payload["request_id"], stopping=self._stopping.is_set)
        if outcome.retry_after is not None:
            raise RetryLater(f"request {payload['request_id']}: {outcome}", outcome.retry_after)

    @property
    def problem(self) -> str | None:
        """Why this runner takes no erasure work (its device failed), for /readyz; None when healthy."""
        fault = self.context.device_fault
        return None if fault is None else f"the embedded worker's device failed ({fault}); restart the service"

    def run_pending(self) -> int:
        """Execute every pending erasure job now, in this thread (tests, one-shot use); reference jobs stay queued."""
        return self.erasures.drain()

    def run_pending_references(self) -> int:
        """Execute every pending reference-training job now, in this thread."""
        return self.references.drain()

    def run_pending_webhooks(self) -> int:
        """Make every due webhook delivery attempt now, in this thread."""
        return self.webhooks.drain()

    def start(self) -> None:
        """Start the three background threads."""
        self._stopping.clear()
        self.erasures.start()
        self.references.start()
        self.webhooks.start()

    def stop(self) -> None:
        """Interrupt the running jobs (their requests go back to the queue), waiting at most `shutdown_timeout`."""
        self._stopping.set()
        self.erasures.stop(timeout=self.shutdown_timeout)
        self.references.stop(timeout=self.shutdown_timeout)
        self.webhooks.stop(timeout=self.shutdown_timeout)

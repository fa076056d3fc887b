"""The embedded runner: executes jobs in the serving process, one at a time, from the same outbox.

With no broker configured (`LTU_BROKER_URL` unset) `ltu serve` starts this beside the API. It
polls the outbox in a background thread and calls the same `run_erasure` the Celery task calls.
"""

from __future__ import annotations

import logging

from ledger import outbox
from ledger.db import Database
from ltu_settings import Settings
from worker.context import JobContext
from worker.dispatch import OutboxDispatcher, mark_handed_over

log = logging.getLogger("ltu.runner")


class EmbeddedRunner:
    """Start/stop object for `api.app.create_app(background=[...])`."""

    def __init__(self, settings: Settings, *, database: Database | None = None) -> None:
        self.context = JobContext.from_settings(settings, database=database)
        # The claim lease outlives any job: this runner executes while it holds the claim.
        self.dispatcher = OutboxDispatcher(
            self.context.database,
            self._execute,
            poll_interval=settings.worker.poll_interval,
            claim_seconds=settings.worker.lease_seconds,
            name="ltu-embedded-runner",
        )

    def _execute(self, task_name: str, payload: dict) -> None:
        if task_name != outbox.ERASURE_TASK:
            log.warning("embedded runner: no handler for task %s; skipping", task_name)
            return
        from worker.job import run_erasure

        with self.context.database.transaction() as session:  # handed over: this runner is its queue
            mark_handed_over(session, task_name=task_name, payload=payload)
        run_erasure(self.context, payload["request_id"])

    def run_pending(self) -> int:
        """Execute every pending job now, in this thread (tests, one-shot use)."""
        return self.dispatcher.drain()

    def start(self) -> None:
        """Start the background thread."""
        self.dispatcher.start()

    def stop(self) -> None:
        """Stop after the current job."""
        self.dispatcher.stop(timeout=None)

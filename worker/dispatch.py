"""Moving dispatch rows out of the outbox: the shared loop of the embedded runner and the Celery relay.

A dispatcher claims the oldest pending row (committed), hands it on, then marks the row
dispatched and its request queued. If the hand-off fails the row is released and retried; if the
process dies in between, the claim's lease expires and another dispatcher sends it again (the
job's compare-and-set makes duplicates harmless).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.orm import Session

from ledger import outbox, requests
from ledger.db import Database
from worker.periodic import PeriodicLoop

log = logging.getLogger("ltu.dispatch")


class RetryLater(Exception):
    """The handler did not start the job and wants the row again after `retry_in` seconds."""

    def __init__(self, reason: str, retry_in: float) -> None:
        super().__init__(reason)
        self.retry_in = retry_in


def mark_handed_over(session: Session, *, task_name: str, payload: dict) -> bool:
    """received → queued for the erasure request a dispatch row carries, once its executor has it.

    False for other tasks, or when the request has moved on (a worker already runs it, or it was
    cancelled): marking is a compare-and-set, so a late or repeated call changes nothing.
    """
    return task_name == outbox.ERASURE_TASK and requests.mark_queued(session, request_id=payload["request_id"])


class OutboxDispatcher:
    """A background thread that polls the outbox and hands each row to `handle(task_name, payload)`.

    `task_names` restricts it to those rows (the embedded runner's lanes); once `stopping()` is True
    it claims nothing more, so a job put back in the outbox at shutdown waits for the next start.
    """

    def __init__(
        self,
        database: Database,
        handle: Callable[[str, dict], None],
        *,
        poll_interval: float = 0.5,
        claim_seconds: float = 60.0,
        name: str = "ltu-dispatch",
        task_names: tuple[str, ...] | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.database = database
        self.task_names = task_names
        self.stopping = stopping
        self.handle = handle
        self.poll_interval = poll_interval
        self.claim_seconds = claim_seconds
        self.name = name
        # Drains the outbox every poll_interval; a failed pass (the database briefly down) is retried.
        self._loop = PeriodicLoop(name, poll_interval, self.drain)

    def dispatch_one(self) -> bool:
        """Hand on one pending row; False when there was none (or the dispatcher is stopping)."""
        if self.stopping():
            return False
        with self.database.transaction() as session:
            message = outbox.claim_next(session, lease_seconds=self.claim_seconds, task_names=self.task_names)
            if message is None:
                return False
            message_id, token = message.id, message.claim_token
            task_name, payload = message.task_name, dict(message.payload)
        assert token is not None
        try:
            self.handle(task_name, payload)
        except Exception as exc:
            retry_in = exc.retry_in if isinstance(exc, RetryLater) else 5.0
            log.log(
                logging.INFO if isinstance(exc, RetryLater) else logging.WARNING,
                "hand-off of outbox row %s did not take (%s); retrying in %.0f s",
                message_id,
                exc,
                retry_in,
            )
            with self.database.transaction() as session:
                outbox.release(session, message_id=message_id, token=token, error=repr(exc), retry_in=retry_in)
            return False
        with self.database.transaction() as session:
            # Queued only once it really is (a worker may already run it: then this is a no-op).
            if outbox.mark_dispatched(session, message_id=message_id, token=token):
                mark_handed_over(session, task_name=task_name, payload=payload)
        return True

    def drain(self) -> int:
        """Dispatch until the outbox is empty; returns how many rows were handed on."""
        count = 0
        while self.dispatch_one():
            count += 1
        return count

    def start(self) -> None:
        """Start polling in a daemon thread."""
        self._loop.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to stop after its current row and wait for it."""
        self._loop.stop(timeout)

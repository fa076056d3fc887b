"""The reconciler: requeues requests whose work was interrupted, so no accepted request is ever lost.

Interrupted work leaves a trace only in the ledger: a running request whose heartbeat stopped
(its worker was killed, lost the database, or a deploy stopped it), or a queued request that
waited far longer than any queue should (the broker lost its message, e.g. Redis restarted with
nothing on disk). Every Celery worker and `ltu serve` run a pass every `reconcile_interval`
seconds; `requests.reconcile` dispatches each such request again through the outbox, at most
`max_attempts` times, then fails it with the reason. Concurrent passes are harmless: each
requeue is a compare-and-set, and a duplicate message finds the request claimed and does nothing.
"""

from __future__ import annotations

import logging

from ledger import requests
from ledger.db import Database
from ltu_settings import Settings
from worker.periodic import PeriodicLoop

log = logging.getLogger("ltu.reconciler")


def reconcile_once(database: Database, settings: Settings) -> requests.Reconciled:
    """One pass: requeue interrupted requests, fail those out of attempts."""
    with database.transaction() as session:
        outcome = requests.reconcile(
            session,
            lease_seconds=settings.worker.lease_seconds,
            queued_after=settings.worker.requeue_queued_after,
            max_attempts=settings.worker.max_attempts,
        )
    for request_id in outcome.requeued:
        log.warning("request %s: its work was interrupted; dispatched again", request_id)
    for request_id in outcome.failed:
        log.error("request %s: interrupted %d times; failed", request_id, settings.worker.max_attempts)
    return outcome


class ReconcileLoop(PeriodicLoop):
    """`reconcile_once` every `settings.worker.reconcile_interval` seconds in a daemon thread."""

    def __init__(self, settings: Settings, *, database: Database | None = None) -> None:
        self.database = database or Database(settings.ledger.database_url)
        super().__init__(
            "ltu-reconciler", settings.worker.reconcile_interval, lambda: reconcile_once(self.database, settings)
        )

"""The reconciler: requeues requests whose work was interrupted, so no accepted request is ever lost.

Interrupted work leaves a trace only in the ledger: a running request whose heartbeat stopped
(its worker was killed, lost the database, or a deploy stopped it), or a queued request that
waited far longer than any queue should (the broker lost its message, e.g. Redis restarted with
nothing on disk). Every Celery worker and `ltu serve` run a pass every `reconcile_interval`
seconds; `requests.reconcile` dispatches each such request again through the outbox, at most
`max_attempts` executions, then fails it with the reason. Concurrent passes are harmless: each
requeue is a compare-and-set, and a duplicate message finds the request claimed and does nothing.
The audit's reference-model trainings are reconciled the same way (`references.reconcile`) in the
same pass, which also deletes outbox rows dispatched longer than `outbox_retention_hours` ago and
emits the webhook events of requests that came due soon (`LTU_DUE_SOON_DAYS`, as the reports
count them) or overdue since the last pass, once per request.
Only interrupted executions use up attempts: a request the broker lost is dispatched again as
often as it takes.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from ledger import erasures, outbox, references, requests, webhooks
from ledger.db import Database
from ledger.tables import utcnow
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
        log.error(
            "request %s: its execution was interrupted %d times; failed", request_id, settings.worker.max_attempts
        )
    return outcome


def reconcile_references_once(database: Database, settings: Settings) -> requests.Reconciled:
    """One pass over reference sets: requeue interrupted trainings, fail those out of attempts."""
    with database.transaction() as session:
        outcome = references.reconcile(
            session,
            lease_seconds=settings.worker.lease_seconds,
            queued_after=settings.worker.requeue_queued_after,
            max_attempts=settings.worker.max_attempts,
        )
    for set_id in outcome.requeued:
        log.warning("reference set %s: its training was interrupted; dispatched again", set_id)
    for set_id in outcome.failed:
        log.error("reference set %s: interrupted %d times; failed", set_id, settings.worker.max_attempts)
    return outcome


def delete_old_dispatches(database: Database, settings: Settings) -> int:
    """Delete outbox rows dispatched longer than `outbox_retention_hours` ago; how many."""
    with database.transaction() as session:
        return outbox.delete_dispatched(session, older_than=timedelta(hours=settings.worker.outbox_retention_hours))


def emit_deadline_webhooks(database: Database, settings: Settings) -> int:
    """Emit the due-soon and overdue webhook events not emitted yet; how many."""
    with database.transaction() as session:
        return webhooks.emit_deadline_events(session, now=utcnow(), due_soon=timedelta(days=settings.api.due_soon_days))


def close_erasures(database: Database) -> list[str]:
    """Record the ending event of every erasure whose requests all ended (ledger.erasures.close_finished)."""
    with database.transaction() as session:
        return erasures.close_finished(session)


class ReconcileLoop(PeriodicLoop):
    """`reconcile_once` and `reconcile_references_once` every `settings.worker.reconcile_interval` seconds in a
    daemon thread."""

    def __init__(self, settings: Settings, *, database: Database | None = None) -> None:
        self.database = database or Database(settings.ledger.database_url)
        self.settings = settings
        super().__init__("ltu-reconciler", settings.worker.reconcile_interval, self.reconcile_pass)

    def reconcile_pass(self) -> None:
        """Deletion requests first (they have deadlines), then reference sets, then the outbox's old rows,
        then the deadline webhooks, then the endings of erasures whose requests all ended."""
        reconcile_once(self.database, self.settings)
        reconcile_references_once(self.database, self.settings)
        delete_old_dispatches(self.database, self.settings)
        emit_deadline_webhooks(self.database, self.settings)
        close_erasures(self.database)

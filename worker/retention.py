"""Purging superseded weights: one pass (`purge_due`, also `ltu purge`) and the loop that repeats it.

`ltu serve` runs the loop beside the embedded runner and every Celery worker runs it beside the
outbox relay (a bootstep), so a deployment needs no extra scheduler; `ltu purge` runs one pass
(cron, or right after lowering LTU_PURGE_GRACE_HOURS). Concurrent passes are harmless: the
file deletion is idempotent and only one pass wins each version's compare-and-set.

Each version: delete the file first (unless another live version shares it), then mark it purged
with its audit event. A crash in between leaves it superseded with its file gone; the next pass
finds it again, deletes nothing, and records it. Superseded reference sets of the audit's
likelihood-ratio tier are purged the same way after the same grace (`purge_references_due`): the
loop runs both.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from ledger import retention
from ledger.artifacts import ArtifactStore
from ledger.db import Database
from ledger.tables import utcnow
from ltu_settings import Settings
from worker.periodic import PeriodicLoop

log = logging.getLogger("ltu.retention")


def purge_due(database: Database, store: ArtifactStore, *, grace: timedelta) -> list[retention.Candidate]:
    """Purge every superseded version past its grace period; returns those this pass purged."""
    with database.session() as session:
        candidates = retention.due_for_purge(session, now=utcnow(), grace=grace)
    purged = []
    for candidate in candidates:
        with database.session() as session:
            kept_for = retention.other_references(session, candidate=candidate)
        gone = store.delete(candidate.storage_key) if kept_for == 0 else False
        with database.transaction() as session:
            if retention.mark_purged(session, candidate=candidate, gone=gone, kept_for=kept_for):
                purged.append(candidate)
                log.info(
                    "purged model %s version %d (sha256 %s, file %s)",
                    candidate.model_id,
                    candidate.number,
                    candidate.sha256,
                    "deleted" if gone else f"kept for {kept_for} other version(s)",
                )
    return purged


def purge_references_due(
    database: Database, store: ArtifactStore, *, grace: timedelta
) -> list[retention.ReferenceCandidate]:
    """Delete the scores file of every reference set superseded longer than `grace` ago; returns those purged."""
    with database.session() as session:
        candidates = retention.references_due_for_purge(session, now=utcnow(), grace=grace)
    purged = []
    for candidate in candidates:
        with database.session() as session:
            kept_for = retention.other_reference_users(session, candidate=candidate)
        gone = store.delete(candidate.storage_key) if kept_for == 0 else False
        with database.transaction() as session:
            if retention.mark_reference_purged(
                session, candidate=candidate, gone=gone, kept_for=kept_for, now=utcnow()
            ):
                purged.append(candidate)
                log.info(
                    "purged reference set %s of model %s (sha256 %s, file %s)",
                    candidate.set_id,
                    candidate.model_id,
                    candidate.sha256,
                    "deleted" if gone else f"kept for {kept_for} other set(s)",
                )
    return purged


class PurgeLoop(PeriodicLoop):
    """`purge_due` and `purge_references_due` every `settings.ledger.purge_interval` seconds in a daemon thread
    (start/stop object)."""

    def __init__(self, settings: Settings, *, database: Database | None = None) -> None:
        self.database = database or Database(settings.ledger.database_url)
        self.store = ArtifactStore(settings.ledger.artifacts_dir)
        self.grace = timedelta(hours=settings.ledger.purge_grace_hours)
        super().__init__("ltu-purge", settings.ledger.purge_interval, self.purge_once)

    def purge_once(self) -> None:
        """One pass over superseded versions, then superseded reference sets."""
        purge_due(self.database, self.store, grace=self.grace)
        purge_references_due(self.database, self.store, grace=self.grace)

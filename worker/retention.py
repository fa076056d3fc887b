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

Erased pixels (`purge_erased_pixels`): a sample erased from every model registered on its dataset (or
from one, under the tenant's purge-at-once policy) is tombstoned in the stored dataset: a staged copy of
images.u8 with its row zeroed and a version-2 manifest listing it replace the stored files as the
transaction that sets its `purged_at` commits (ledger.datasets). A rollback leaves the stored folder as
it was; a crash after the files moved but before COMMIT leaves the pixels gone and the sample unmarked,
so the next pass tombstones it again (zeros stay zeros) and records it.

Then the sweep (`sweep_unreferenced`): every item of the artifact store that no ledger row
references and nobody has touched for LTU_ARTIFACT_SWEEP_GRACE_HOURS is deleted, with an
`artifact.swept` event. Publications move their files into place right before committing (ledger.
artifacts), so such items come only from crashes: a file moved into place whose commit never came,
a staged upload of a killed process. The grace is what spares a publication in flight: its file is
unreferenced until its commit, but was written (or, when the same bytes were stored already,
touched) moments before.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.orm import Session

from ledger import datasets, retention
from ledger.artifacts import ArtifactStore, SetAside
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


def purge_erased_pixels(database: Database, store: ArtifactStore) -> list[datasets.PixelPurge]:
    """Tombstone, in each stored dataset, the erased samples no model still needs; returns what this pass purged."""
    with database.session() as session:
        due = datasets.datasets_awaiting_purge(session)
    purged = []
    for dataset_id in due:
        with database.transaction() as session:
            purge = _tombstone(session, store, dataset_id)
        if purge is not None:
            purged.append(purge)
            log.info(
                "purged the pixels of %d sample(s) of %d subject(s) from dataset %s",
                len(purge.rows),
                len(purge.subject_hashes),
                dataset_id,
            )
    return purged


def _tombstone(session: Session, store: ArtifactStore, dataset_id: str) -> datasets.PixelPurge | None:
    from ltu_core.data.format import tombstone_rows  # the science library loads only when pixels are due

    purge = datasets.purgeable(session, dataset=datasets.lock_dataset(session, dataset_id=dataset_id))
    if purge is None:
        return None
    rows = sorted({*datasets.purged_rows(session, dataset_id=dataset_id), *purge.rows})
    staged = store.staging_dir()
    try:
        tombstone_rows(store.path(purge.storage_key), rows, staged)
        store.stage_dataset(session, staged, dataset_id)  # replaces the stored files as this transaction commits
    finally:
        store.discard(staged)  # only an unstaged copy is still here
    if not datasets.mark_pixels_purged(session, purge=purge):
        session.rollback()  # another pass was first: its files stand, ours are discarded
        return None
    return purge


def sweep_unreferenced(database: Database, store: ArtifactStore, *, grace: timedelta) -> list[SetAside]:
    """Delete every stored item no row references that is older than `grace`; returns those this pass deleted."""
    with database.session() as session:
        referenced = retention.referenced_keys(session)
    swept = []
    for key in store.items():
        item = None if key in referenced else store.set_aside(key, idle_seconds=grace.total_seconds())
        if item is None:
            continue
        with database.transaction() as session:
            retention.record_swept(session, item=item)
        store.discard(item.path)  # only once its event is committed: no deletion goes unrecorded
        swept.append(item)
        log.info("swept %s: no ledger row references it, untouched for %d s", key, item.age_seconds)
    return swept


class PurgeLoop(PeriodicLoop):
    """`purge_due`, `purge_references_due`, `purge_erased_pixels` and `sweep_unreferenced` every
    `settings.ledger.purge_interval` seconds in a daemon thread (start/stop object)."""

    def __init__(self, settings: Settings, *, database: Database | None = None) -> None:
        self.database = database or Database(settings.ledger.database_url)
        self.store = ArtifactStore(settings.ledger.artifacts_dir)
        self.grace = timedelta(hours=settings.ledger.purge_grace_hours)
        self.sweep_grace = timedelta(hours=settings.ledger.artifact_sweep_grace_hours)
        super().__init__("ltu-purge", settings.ledger.purge_interval, self.purge_once)

    def purge_once(self) -> None:
        """One pass over superseded versions, superseded reference sets, erased pixels, then unreferenced items."""
        purge_due(self.database, self.store, grace=self.grace)
        purge_references_due(self.database, self.store, grace=self.grace)
        purge_erased_pixels(self.database, self.store)
        sweep_unreferenced(self.database, self.store, grace=self.sweep_grace)

"""Purge: superseded weights that still contain erased subjects leave the artifact store.

A version is superseded when an erasure request publishes its successor; from then on its
weights still carry the erased subjects' influence. After a grace period (in-flight downloads,
consumers moving to the new version) its file is deleted and the version becomes `purged`, with
an audit event that records the file's sha256 and whether it is gone. The current version is
never purged (it is never superseded), and the current pointer never moves back
(registry.move_current), so no model ever points at a purged or pre-erasure version again.

Weights are stored by sha256, so two versions can share one file (the same weights uploaded
twice): the file is deleted only when no other unpurged version references it.

Reference sets of the likelihood-ratio audit tier (ledger.references) follow the same rule: a set
superseded by a newer ready set of its model was trained on data erased since (refreshing is what
retires it), so after the same grace its scores file is deleted and its `purged_at` is set, with a
`audit_reference_set.purged` event.

Until it is purged, a superseded version's weights are downloadable with the `admin` scope only (the
current version's with `read`): `download_scope` is that rule, and every download is recorded
(`record_download`, a `model_version.downloaded` event).

Files no row references at all (a publication that crashed between moving its file into place and
committing, staged uploads of a crashed process) are the sweeper's (worker.retention): `referenced_keys`
is what it must leave alone, and `record_swept` the `artifact.swept` event of each item it deletes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from sqlalchemy import func, select, union, update
from sqlalchemy.orm import Session, aliased

from ledger import audit
from ledger.artifacts import SetAside
from ledger.tables import AuditReferenceSet, Dataset, Model, ModelVersion

SUPERSEDED, PURGED = "superseded", "purged"


@dataclass(frozen=True)
class Candidate:
    """A superseded version due for purging, and the request that superseded it."""

    version_id: str
    tenant_id: str
    model_id: str
    number: int
    sha256: str
    storage_key: str
    superseded_by_request: str


def due_for_purge(session: Session, *, now: datetime, grace: timedelta) -> list[Candidate]:
    """Superseded versions whose erasure-produced successor is older than `grace`."""
    successor = aliased(ModelVersion)
    rows = session.execute(
        select(
            ModelVersion.id,
            Model.tenant_id,
            ModelVersion.model_id,
            ModelVersion.number,
            ModelVersion.sha256,
            ModelVersion.storage_key,
            successor.producing_request_id,
        )
        .join(successor, successor.parent_id == ModelVersion.id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(
            ModelVersion.state == SUPERSEDED,
            ModelVersion.number < Model.current_version,
            successor.producing_request_id.is_not(None),
            successor.created_at <= now - grace,
        )
        .order_by(successor.created_at)
    ).all()
    return [Candidate(*row) for row in rows]


def other_references(session: Session, *, candidate: Candidate) -> int:
    """How many other unpurged versions (of any model) use the candidate's file."""
    return (
        session.scalar(
            select(func.count())
            .select_from(ModelVersion)
            .where(
                ModelVersion.storage_key == candidate.storage_key,
                ModelVersion.id != candidate.version_id,
                ModelVersion.state != PURGED,
            )
        )
        or 0
    )


def mark_purged(session: Session, *, candidate: Candidate, gone: bool, kept_for: int, actor: str = "system") -> bool:
    """superseded → purged with its audit event; False if another purger was first."""
    changed = session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == candidate.version_id, ModelVersion.state == SUPERSEDED)
        .values(state=PURGED)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        return False
    audit.record(
        session,
        tenant_id=candidate.tenant_id,
        actor=actor,
        action="model_version.purged",
        resource_type="model_version",
        resource_id=candidate.version_id,
        model_id=candidate.model_id,
        request_id=candidate.superseded_by_request,
        data={
            "number": candidate.number,
            "sha256": candidate.sha256,
            "gone": gone,
            "kept_for_other_versions": kept_for,
        },
    )
    return True


# --- reference sets of the likelihood-ratio audit tier ---------------------------------------------


@dataclass(frozen=True)
class ReferenceCandidate:
    """A superseded reference set whose scores file is due for deletion."""

    set_id: str
    tenant_id: str
    model_id: str
    sha256: str
    storage_key: str


def references_due_for_purge(session: Session, *, now: datetime, grace: timedelta) -> list[ReferenceCandidate]:
    """Superseded reference sets with a stored file, superseded longer than `grace` ago."""
    rows = session.execute(
        select(
            AuditReferenceSet.id,
            AuditReferenceSet.tenant_id,
            AuditReferenceSet.model_id,
            AuditReferenceSet.sha256,
            AuditReferenceSet.storage_key,
        )
        .where(
            AuditReferenceSet.status == SUPERSEDED,
            AuditReferenceSet.purged_at.is_(None),
            AuditReferenceSet.storage_key.is_not(None),
            AuditReferenceSet.updated_at <= now - grace,  # a superseded set changes only when it is purged
        )
        .order_by(AuditReferenceSet.updated_at)
    ).all()
    return [ReferenceCandidate(*row) for row in rows]


def other_reference_users(session: Session, *, candidate: ReferenceCandidate) -> int:
    """How many other unpurged reference sets use the candidate's file."""
    return (
        session.scalar(
            select(func.count())
            .select_from(AuditReferenceSet)
            .where(
                AuditReferenceSet.storage_key == candidate.storage_key,
                AuditReferenceSet.id != candidate.set_id,
                AuditReferenceSet.purged_at.is_(None),
            )
        )
        or 0
    )


def mark_reference_purged(
    session: Session, *, candidate: ReferenceCandidate, gone: bool, kept_for: int, now: datetime, actor: str = "system"
) -> bool:
    """Record a superseded set's file as deleted, with its audit event; False if another purger was first."""
    changed = session.execute(
        update(AuditReferenceSet)
        .where(
            AuditReferenceSet.id == candidate.set_id,
            AuditReferenceSet.status == SUPERSEDED,
            AuditReferenceSet.purged_at.is_(None),
        )
        .values(purged_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if changed != 1:
        return False
    audit.record(
        session,
        tenant_id=candidate.tenant_id,
        actor=actor,
        action="audit_reference_set.purged",
        resource_type="audit_reference_set",
        resource_id=candidate.set_id,
        model_id=candidate.model_id,
        now=now,
        data={"sha256": candidate.sha256, "gone": gone, "kept_for_other_sets": kept_for},
    )
    return True


# --- files no row references -----------------------------------------------------------------------


def referenced_keys(session: Session) -> set[str]:
    """Every storage key a row still needs: unpurged versions' weights, unpurged reference sets' scores, datasets."""
    return set(
        session.scalars(
            union(
                select(ModelVersion.storage_key).where(ModelVersion.state != PURGED),
                select(AuditReferenceSet.storage_key).where(
                    AuditReferenceSet.storage_key.is_not(None), AuditReferenceSet.purged_at.is_(None)
                ),
                select(Dataset.storage_key),
            )
        )
    )


def record_swept(session: Session, *, item: SetAside, actor: str = "system") -> None:
    """The audit event of an unreferenced item the sweeper deletes; no tenant owns a file no row names."""
    data = {"key": item.key, "size": item.size, "age_seconds": item.age_seconds}
    if item.sha256 is not None:
        data["sha256"] = item.sha256
    audit.record(
        session,
        tenant_id=None,
        actor=actor,
        action="artifact.swept",
        resource_type="artifact",
        resource_id=PurePosixPath(item.key).stem[:64],  # a sha256, a dataset id or a tmp/ name; the key is in data
        data=data,
    )


# --- downloads of weights ----------------------------------------------------------------------------


def download_scope(model: Model, version: ModelVersion) -> str:
    """The scope a key needs to download the version's weights: a superseded version still holds erased subjects."""
    return "read" if version.number == model.current_version else "admin"


def record_download(session: Session, *, model: Model, version: ModelVersion, scope: str, key_id: str) -> None:
    """The `model_version.downloaded` event: which version, under which scope, by which key."""
    audit.record(
        session,
        tenant_id=model.tenant_id,
        actor=f"key:{key_id}",
        action="model_version.downloaded",
        resource_type="model_version",
        resource_id=version.id,
        model_id=model.id,
        data={
            "version": version.number,
            "current": version.number == model.current_version,
            "scope": scope,
            "key_id": key_id,
        },
    )

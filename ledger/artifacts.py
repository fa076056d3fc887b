"""The artifact store: model weights and reference scores addressed by sha256, dataset folders by dataset id.

A local folder (a shared volume when the API and the workers run in separate containers). Files are
written to `tmp/` first. A staged file is handed to the ledger transaction whose rows will reference it
(`stage_model`, `stage_scores`, `stage_dataset`) and moved into place as that transaction's last step
before COMMIT, after its row writes succeeded; a transaction that rolls back (a stale base, a lost
lease, any error) deletes it instead. So a reader never sees half a file, writing the same weights
twice is a no-op, and no rollback leaves a file behind. Only a crash between the move and the COMMIT
can; the sweeper (worker.retention) deletes such orphans once they are older than a grace period.
Keys are relative paths; `path()` refuses any key that would leave the root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

CHUNK = 1 << 20
STAGED = "ltu.artifacts.staged"  # Session.info: [(staged path, how to place it)] of the open transaction
# Where stored items sit below each area: one file per shard folder, or one entry per item.
LAYOUT = {"models": "*/*", "references": "*/*", "datasets": "*", "tmp": "*"}


@dataclass(frozen=True)
class Blob:
    """A stored file: its key, sha256 and size."""

    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SetAside:
    """An unreferenced item moved aside to be deleted: its key, sha256 (a file; None for a folder), size, seconds
    untouched, and where it waits in tmp/."""

    key: str
    sha256: str | None
    size: int
    age_seconds: int
    path: Path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactStore:
    """Files under one root folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()

    def ensure(self) -> ArtifactStore:
        """Create the folder layout; returns self."""
        for sub in ("tmp", "models", "datasets"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return self

    def path(self, key: str) -> Path:
        """Absolute path of a key inside the store."""
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"artifact key {key!r} leaves the store")
        return path

    def staging_file(self, suffix: str = "") -> Path:
        """A new empty file in tmp/ (same filesystem as the store, so renames are atomic)."""
        self.ensure()
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", suffix=suffix)
        os.close(fd)
        return Path(name)

    def staging_dir(self) -> Path:
        """A new empty folder in tmp/."""
        self.ensure()
        return Path(tempfile.mkdtemp(dir=self.root / "tmp"))

    def stage_model(self, session: Session, staged: str | os.PathLike) -> Blob:
        """Hand a staged weights file to `session`'s transaction; its commit moves it to models/<sha256>.safetensors."""
        return self._stage_by_content(session, Path(staged), "models")

    def stage_scores(self, session: Session, staged: str | os.PathLike) -> Blob:
        """Hand a staged reference-scores file to `session`'s transaction; its commit moves it to references/<sha256>."""
        return self._stage_by_content(session, Path(staged), "references")

    def stage_dataset(self, session: Session, staged_dir: str | os.PathLike, dataset_id: str) -> str:
        """Hand a staged dataset folder to `session`'s transaction; its commit moves it to datasets/<id>/.

        Over a stored folder (a pixel purge's rewrite) each staged file replaces its namesake, in name order,
        each atomically: a reader never finds the folder missing or a file half-written.
        """
        key = f"datasets/{dataset_id}"
        _hand_over(session, Path(staged_dir), lambda owned: _place_folder(owned, self.path(key)))
        return key

    def _stage_by_content(self, session: Session, staged: Path, area: str) -> Blob:
        sha = sha256_file(staged)
        blob = Blob(f"{area}/{sha[:2]}/{sha}.safetensors", sha, staged.stat().st_size)
        _hand_over(session, staged, lambda owned: self._adopt(owned, blob.key))
        return blob

    def _adopt(self, owned: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # The same bytes are there already (another row's, or an orphan): keep them, made young again,
            # so the sweeper leaves them alone while this commit comes to reference them.
            os.utime(target)
        except FileNotFoundError:
            os.replace(owned, target)  # keeps the staged file's mtime: it was written moments ago
        else:
            owned.unlink()

    def delete(self, key: str) -> bool:
        """Delete a stored file (a no-op if it is already gone); True when it no longer exists."""
        path = self.path(key)
        path.unlink(missing_ok=True)
        return not path.exists()

    def discard(self, path: str | os.PathLike) -> None:
        """Remove a staged file or folder, if it still exists."""
        _remove(Path(path))

    def items(self) -> list[str]:
        """The key of every stored item: weights, reference scores, dataset folders and whatever sits in tmp/."""
        return [
            found.relative_to(self.root).as_posix()
            for area, pattern in LAYOUT.items()
            for found in sorted((self.root / area).glob(pattern))
        ]

    def set_aside(self, key: str, *, idle_seconds: float) -> SetAside | None:
        """Move an item untouched for `idle_seconds` aside into tmp/, to be deleted; None if it is gone or young.

        Its age is read again once it is aside, so a publication adopting the same bytes at that moment
        cannot lose them: either it refreshed them first (they are moved back) or it finds them gone and
        moves its own copy in. Left aside by a crash, the item is an old one in tmp/: the next sweep takes it.
        """
        path, aside = self.path(key), self.ensure().root / "tmp" / f"sweeping-{uuid.uuid4().hex}"
        try:
            if _untouched_seconds(path) < idle_seconds:
                return None
            os.replace(path, aside)
        except FileNotFoundError:  # deleted meanwhile (a purge, another sweeper, a finished upload)
            return None
        age = _untouched_seconds(aside)
        if age < idle_seconds:
            os.replace(aside, path)
            return None
        return SetAside(key, sha256_file(aside) if aside.is_file() else None, _size(aside), int(age), aside)


def _place_folder(owned: Path, target: Path) -> None:
    if not target.is_dir():
        os.replace(owned, target)
        return
    for staged in sorted(owned.iterdir()):
        os.replace(staged, target / staged.name)
    owned.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _tree(path: Path) -> list[Path]:
    return [path, *path.rglob("*")] if path.is_dir() else [path]


def _untouched_seconds(path: Path) -> float:
    return time.time() - max(p.lstat().st_mtime for p in _tree(path))


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in _tree(path) if p.is_file())


# --- placing staged items when a transaction commits ----------------------------------------------------


def install(sessions: sessionmaker) -> None:
    """Make the factory's sessions place the items handed to a transaction right before it commits."""
    event.listen(sessions, "after_transaction_create", _begun)
    event.listen(sessions, "before_commit", _place)
    event.listen(sessions, "after_transaction_end", _ended)


def _hand_over(session: Session, staged: Path, place: Callable[[Path], None]) -> None:
    # Renamed first: the caller's own clean-up of `staged` (a `finally`) no longer reaches what the
    # transaction now owns, and the API's commit comes only after its route has returned.
    if not session.in_transaction():
        session.begin()
    if STAGED not in session.info:
        raise RuntimeError("this session does not place artifacts; make it with ledger.db.Database")
    owned = staged.with_name(staged.name + ".commit")
    os.replace(staged, owned)
    session.info[STAGED].append((owned, place))


def _begun(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info[STAGED] = []


def _place(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's release: the outer commit places them
        return
    session.flush()  # the rows that reference them are written first
    for owned, place in session.info.get(STAGED, ()):
        place(owned)


def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (each was moved away: nothing left) or rolled back
        for owned, _ in session.info.pop(STAGED, ()):
            _remove(owned)

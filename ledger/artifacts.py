"""The artifact store: model weights addressed by sha256, dataset folders by dataset id.

A local folder (a shared volume when the API and the workers run in separate containers).
Files are written to `tmp/` first and renamed into place, so a reader never sees half a file and
writing the same weights twice is a no-op. Keys are relative paths; `path()` refuses any key
that would leave the root.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    """A stored file: its key, sha256 and size."""

    key: str
    sha256: str
    size: int


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

    def put_model(self, staged: str | os.PathLike) -> Blob:
        """Move a staged safetensors file to models/<sha256>.safetensors (consumes `staged`)."""
        staged = Path(staged)
        sha = sha256_file(staged)
        key = f"models/{sha[:2]}/{sha}.safetensors"
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = staged.stat().st_size
        if target.exists():
            staged.unlink()
        else:
            os.replace(staged, target)
        return Blob(key, sha, size)

    def put_dataset(self, staged_dir: str | os.PathLike, dataset_id: str) -> str:
        """Move a staged dataset folder to datasets/<id>/ (consumes it); returns its key."""
        key = f"datasets/{dataset_id}"
        target = self.path(key)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged_dir, target)
        return key

    def delete(self, key: str) -> bool:
        """Delete a stored file (a no-op if it is already gone); True when it no longer exists."""
        path = self.path(key)
        path.unlink(missing_ok=True)
        return not path.exists()

    def discard(self, path: str | os.PathLike) -> None:
        """Remove a staged file or folder, if it still exists."""
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()

"""What a job needs from its process: settings, the ledger database and the artifact store."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ledger.artifacts import ArtifactStore
from ledger.db import Database
from ltu_settings import Settings


@dataclass
class JobContext:
    """Per-process resources of the job function (built lazily: never shared across a fork)."""

    settings: Settings
    database: Database
    store: ArtifactStore
    device_fault: str | None = None  # set when the device broke: this process takes no more jobs

    @classmethod
    def from_settings(cls, settings: Settings, *, database: Database | None = None) -> JobContext:
        """Resources for `settings` (reusing `database` when given)."""
        store = ArtifactStore(settings.ledger.artifacts_dir).ensure()
        return cls(settings, database or Database(settings.ledger.database_url), store)

    def configure_torch(self) -> None:
        """Apply process-wide torch settings (CPU threads) before the first job."""
        if self.settings.worker.torch_threads:
            import torch

            torch.set_num_threads(self.settings.worker.torch_threads)

    def device(self) -> str:
        """The torch device jobs run on: `settings.worker.device`, with auto = CUDA when available."""
        if self.settings.worker.device != "auto":
            return self.settings.worker.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class LazyContext:
    """A JobContext built on first use in the process that uses it (Celery prefork children)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context: JobContext | None = None
        self._lock = threading.Lock()

    def get(self) -> JobContext:
        """The process's context."""
        with self._lock:
            if self._context is None:
                self._context = JobContext.from_settings(self.settings)
            return self._context

    def reset(self) -> None:
        """Forget the context (after a fork: the child builds its own)."""
        self._context = None

"""The one configuration every service process shares (API, worker, embedded runner, CLI).

A frozen dataclass built explicitly by `Settings.from_env()` (the CLI) or by tests; nothing reads
the environment at import time. It lives in the ledger because both edges (api/, worker/) import
the ledger and nothing else in common; it uses only the standard library.

Embedded default: with no configuration everything lives under one state directory `LTU_HOME`
(default `./.ltu`): a SQLite ledger, the artifact folder, a generated server secret and the first
admin key. `LTU_DATABASE_URL` switches the ledger to Postgres and `LTU_BROKER_URL` switches job
execution from the in-process runner to Celery workers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

WEAK_SECRETS = frozenset({"", "changeme", "change-me", "secret", "dev", "development", "test", "ltu"})
MIN_SECRET_LENGTH = 32


class ConfigError(ValueError):
    """The configuration is unusable; the message says which variable to fix."""


@dataclass(frozen=True)
class Settings:
    """Service configuration. Paths are absolute; `broker_url` None means the in-process runner."""

    home: Path
    database_url: str
    artifacts_dir: Path
    secret_key: str = field(repr=False)
    broker_url: str | None = None
    admin_api_key: str | None = field(default=None, repr=False)
    queue: str = "gpu"  # Celery queue of the erasure task
    device: str = "auto"  # auto: CUDA when available, else CPU
    torch_threads: int = 0  # CPU threads per job process; 0 = torch's default
    default_method: str = "ltu"
    retain_fraction: float = 0.1  # ρ = |D̂_r| / |D_r|
    seed: int = 0
    fallback_to_retrain: bool = True  # verification failed → exact retraining (when the model has a recipe)
    verify_z: float = 2.0  # one-sided z of the membership-inference forgetting test
    verify_max_test_drop: float = 5.0  # test-accuracy points an unlearned model may lose
    max_attempts: int = 3  # executions of one request before it is failed
    lease_seconds: float = 300.0  # a running job silent this long may be taken over by a redelivery
    poll_interval: float = 0.5  # embedded runner / relay outbox poll period
    visibility_timeout: int = 6 * 3600  # Redis: above the longest job, or it is redelivered mid-run
    retry_after_seconds: int = 2  # Retry-After of 202 answers
    max_dataset_bytes: int = 2 << 30
    max_weights_bytes: int = 1 << 30
    max_subjects_per_request: int = 1000

    @property
    def dev_mode(self) -> bool:
        """True when the ledger is a local SQLite file: generated secrets are acceptable."""
        return self.database_url.startswith("sqlite")

    @property
    def embedded_runner(self) -> bool:
        """True when jobs run in the serving process (no broker configured)."""
        return self.broker_url is None

    def with_(self, **changes) -> Settings:
        """A copy with some fields changed (tests, CLI flags)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `LTU_*` variables; creates LTU_HOME (and its generated secret) when embedded."""
        env = os.environ if environ is None else environ
        home = Path(env.get("LTU_HOME") or ".ltu").expanduser().resolve()
        database_url = env.get("LTU_DATABASE_URL") or f"sqlite:///{home / 'ledger.db'}"
        artifacts = Path(env.get("LTU_ARTIFACTS_DIR") or home / "artifacts").expanduser().resolve()
        secret = env.get("LTU_SECRET_KEY")
        if database_url.startswith("sqlite"):
            home.mkdir(parents=True, exist_ok=True)
            secret = secret or _read_or_create(home / "secret.key")
        settings = cls(
            home=home,
            database_url=database_url,
            artifacts_dir=artifacts,
            secret_key=secret or "",
            broker_url=env.get("LTU_BROKER_URL") or None,
            admin_api_key=env.get("LTU_ADMIN_API_KEY") or None,
            queue=env.get("LTU_QUEUE") or "gpu",
            device=env.get("LTU_DEVICE") or "auto",
            torch_threads=_int(env, "LTU_TORCH_THREADS", 0),
            default_method=env.get("LTU_DEFAULT_METHOD") or "ltu",
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse unusable values: a weak or default secret outside dev mode, bad numbers."""
        if not self.dev_mode and (
            self.secret_key.lower() in WEAK_SECRETS or len(self.secret_key) < MIN_SECRET_LENGTH
        ):
            raise ConfigError(
                f"LTU_SECRET_KEY must be a random string of at least {MIN_SECRET_LENGTH} characters "
                "when the ledger is not the embedded SQLite file (it keys the subject-id hashes); "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if not self.secret_key:
            raise ConfigError("secret_key is empty")
        if not 0.0 < self.retain_fraction <= 1.0:
            raise ConfigError("retain_fraction must lie in (0, 1]")
        if self.torch_threads < 0:
            raise ConfigError("LTU_TORCH_THREADS must be 0 (torch's default) or positive")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _read_or_create(path: Path) -> str:
    if path.is_file():
        return path.read_text().strip()
    value = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value

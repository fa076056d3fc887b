"""The one configuration every service process shares (API, worker, embedded runner, CLI).

A frozen dataclass built explicitly by `Settings.from_env()` (the CLI) or by tests; nothing reads
the environment at import time. It lives in the ledger because both edges (api/, worker/) import
the ledger and nothing else in common; it uses only the standard library.

Embedded default: with no configuration everything lives under one state directory `LTU_HOME`
(default `./.ltu`): a SQLite ledger, the artifact folder, a generated server secret, the generated
certificate signing key and the first admin key. `LTU_DATABASE_URL` switches the ledger to
Postgres and `LTU_BROKER_URL` switches job execution from the in-process runner to Celery workers.
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
    # Ed25519 key (PKCS#8 PEM) signing erasure certificates; embedded mode generates one in LTU_HOME.
    certificate_key_file: Path | None = None
    due_soon_days: int = 7  # "due soon": an open request whose deadline is this close
    purge_grace_hours: float = 168.0  # superseded weights are deleted this long after their successor
    purge_interval: float = 3600.0  # seconds between purge passes of `ltu serve` and the workers
    # Coalescing: queued requests on one model within this window run as one unlearning pass.
    coalesce_window_seconds: float = 2.0
    coalesce_max_batch: int = 20
    reconcile_interval: float = 30.0  # seconds between reconciler passes (requeue interrupted work)
    # A request queued this long is presumed lost by the broker and dispatched again (duplicates
    # are no-ops); the same horizon after which Redis itself would redeliver an unacked message.
    requeue_queued_after: float = 6 * 3600.0
    rate_limit_per_minute: int = 120  # erasure submissions per API key and minute (token bucket)
    rate_limit_burst: int = 30  # submissions a key may send at once before the rate applies
    max_body_bytes: int = 1 << 20  # JSON request bodies (uploads have their own limits)

    @property
    def signing_key_path(self) -> Path | None:
        """The certificate signing key: LTU_CERTIFICATE_KEY_FILE, else (embedded mode only) LTU_HOME's."""
        if self.certificate_key_file is not None:
            return self.certificate_key_file
        return self.home / "certificate-key.pem" if self.dev_mode else None

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
            certificate_key_file=Path(env["LTU_CERTIFICATE_KEY_FILE"]).expanduser().resolve()
            if env.get("LTU_CERTIFICATE_KEY_FILE") else None,
            due_soon_days=_int(env, "LTU_DUE_SOON_DAYS", 7),
            purge_grace_hours=_float(env, "LTU_PURGE_GRACE_HOURS", 168.0),
            coalesce_window_seconds=_float(env, "LTU_COALESCE_WINDOW_SECONDS", 2.0),
            coalesce_max_batch=_int(env, "LTU_COALESCE_MAX_BATCH", 20),
            reconcile_interval=_float(env, "LTU_RECONCILE_INTERVAL", 30.0),
            requeue_queued_after=_float(env, "LTU_REQUEUE_QUEUED_AFTER", 6 * 3600.0),
            lease_seconds=_float(env, "LTU_LEASE_SECONDS", 300.0),
            max_attempts=_int(env, "LTU_MAX_ATTEMPTS", 3),
            rate_limit_per_minute=_int(env, "LTU_RATE_LIMIT_PER_MINUTE", 120),
            rate_limit_burst=_int(env, "LTU_RATE_LIMIT_BURST", 30),
            max_body_bytes=_int(env, "LTU_MAX_BODY_BYTES", 1 << 20),
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
        if self.due_soon_days < 0:
            raise ConfigError("LTU_DUE_SOON_DAYS must be 0 or positive")
        if not self.purge_grace_hours >= 0:  # also refuses NaN
            raise ConfigError("LTU_PURGE_GRACE_HOURS must be 0 or positive")
        if not self.coalesce_window_seconds >= 0 or self.coalesce_max_batch < 1:
            raise ConfigError("LTU_COALESCE_WINDOW_SECONDS must be 0 or positive and LTU_COALESCE_MAX_BATCH at least 1")
        if not self.reconcile_interval > 0 or not self.lease_seconds > 0 or not self.requeue_queued_after > 0:
            raise ConfigError("LTU_RECONCILE_INTERVAL, LTU_LEASE_SECONDS and LTU_REQUEUE_QUEUED_AFTER must be positive")
        if self.rate_limit_per_minute < 1 or self.rate_limit_burst < 1:
            raise ConfigError("LTU_RATE_LIMIT_PER_MINUTE and LTU_RATE_LIMIT_BURST must be at least 1")
        if self.max_body_bytes < 1024:
            raise ConfigError("LTU_MAX_BODY_BYTES must be at least 1024")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


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

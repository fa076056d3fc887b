"""The three settings sections, split by who reads them; each field is `LTU_<FIELD NAME>` in the environment.

- LedgerSettings: the deployment's state and what guards it — where the ledger and the artifacts
  live, the server secret, the certificate key, the broker, the retention of superseded weights
  and unreferenced artifacts, the addresses webhooks may reach.
  Every process of a deployment (API, Celery worker, `ltu` commands) must agree on these.
- ApiSettings: read only by the HTTP edge (api/): limits, rate limits, Retry-After, the bootstrap
  admin key, the default method of a submission, the "due soon" horizon of reports.
- WorkerSettings: read only by job execution (worker/: the Celery worker, and the embedded runner,
  reconciler and relay wherever they run): queue, device, the unlearning and verification
  parameters, attempts and leases, coalescing, loop periods, webhook delivery attempts.

Every number is finite and bounded: the bounds below are what the code can represent (timedelta,
thread waits) or what makes sense, so a typo fails at start-up instead of in a background loop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ltu_settings.base import Section

DEFAULT_HOME = ".ltu"
WEAK_SECRETS = frozenset({"", "changeme", "change-me", "secret", "dev", "development", "test", "ltu", "admin"})
MIN_SECRET_LENGTH = 32
MIN_DISTINCT_CHARACTERS = 10  # hex has 16, so a random hex string of 32+ characters never comes close
SIGNING_KEY_FILE = "certificate-key.pem"  # embedded mode: generated in LTU_HOME on first start

DAY = 86_400.0
MAX_PERIOD = 30 * DAY  # loop periods and ages in seconds; far beyond any sane value, far below thread-wait limits
MAX_GRACE_HOURS = 100 * 365 * 24.0  # `now - grace` must stay a representable datetime
MAX_TARGETS = 1000  # the ceiling api/schemas.MAX_TARGETS documents in the OpenAPI schema

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_METHOD = re.compile(r"^[a-z][a-z0-9_]{0,63}$")  # the `method` pattern of a submission (api/schemas.py)
_QUEUE = re.compile(r"^[A-Za-z0-9_.:@-]{1,200}$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve(path: Path | str) -> Path:
    """An absolute path (`~` expanded): processes started elsewhere still agree on it."""
    return Path(path).expanduser().resolve()


def sqlite_url(home: Path) -> str:
    """The embedded ledger under LTU_HOME."""
    return f"sqlite:///{home / 'ledger.db'}"


def weak(secret: str) -> bool:
    """True for a secret that a deployment must not run with: short, a well-known default, or typed rather
    than generated (few distinct characters, like 40 × "a", or one pattern repeated, like "abc" × 12)."""
    return (
        secret.lower() in WEAK_SECRETS
        or len(secret) < MIN_SECRET_LENGTH
        or len(set(secret)) < MIN_DISTINCT_CHARACTERS
        or secret in (secret + secret)[1:-1]  # periodic: a shift of it lines up with itself
    )


class LedgerSettings(Section):
    """Where the state lives and what guards it; the same in every process of a deployment."""

    home: Path = Field(Path(DEFAULT_HOME), description="state directory (embedded ledger, artifacts, generated keys)")
    database_url: str = Field(description="SQLAlchemy URL of the ledger; default: SQLite under LTU_HOME (embedded)")
    artifacts_dir: Path = Field(description="datasets and model weights; default: LTU_HOME/artifacts")
    secret_key: str = Field(
        "", repr=False, description="keys the subject-id hashes and dashboard sessions; embedded: generated"
    )
    broker_url: str | None = Field(None, description="Celery broker (Redis); unset: jobs run in the serving process")
    certificate_key_file: Path | None = Field(
        None, description="Ed25519 PKCS#8 PEM signing erasure certificates; embedded: LTU_HOME/certificate-key.pem"
    )
    purge_grace_hours: float = Field(
        168.0,
        ge=0,
        le=MAX_GRACE_HOURS,
        allow_inf_nan=False,
        description="superseded weights are deleted this long after their successor",
    )
    purge_interval: float = Field(
        3600.0,
        gt=0,
        le=MAX_PERIOD,
        allow_inf_nan=False,
        description="seconds between purge passes of `ltu serve` and the workers",
    )
    artifact_sweep_grace_hours: float = Field(
        6.0,
        ge=1,  # a publication's file is unreferenced until its commit: the sweeper must never be that quick
        le=MAX_GRACE_HOURS,
        allow_inf_nan=False,
        description="an artifact no ledger row references is deleted once untouched this long",
    )
    # Read where webhooks are registered (the API) and where they are delivered (the workers).
    webhook_allow_private_addresses: bool = Field(
        False, description="webhooks may target loopback, private, link-local and other non-public addresses"
    )

    @model_validator(mode="before")
    @classmethod
    def _embedded_defaults(cls, values: Any) -> Any:
        # The ledger and the artifacts default to places under LTU_HOME, so they derive from it here.
        if not isinstance(values, dict) or not isinstance(values.get("home", DEFAULT_HOME), str | Path):
            return values
        home = resolve(values.get("home") or DEFAULT_HOME)
        return {"database_url": sqlite_url(home), "artifacts_dir": home / "artifacts", **values, "home": home}

    @field_validator("home", "artifacts_dir", "certificate_key_file")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else resolve(path)

    @field_validator("database_url", "broker_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not _URL.match(url):
            raise ValueError("must be a URL such as postgresql+psycopg://user:password@host/db or redis://host:6379/0")
        return url

    @field_validator("secret_key")
    @classmethod
    def _secret(cls, secret: str, info: ValidationInfo) -> str:
        url = info.data.get("database_url")
        if url is not None and not url.startswith("sqlite") and weak(secret):
            raise ValueError(
                f"must be a random string of at least {MIN_SECRET_LENGTH} characters with no repeated pattern when "
                "the ledger is not the embedded SQLite file (it keys the subject-id hashes); generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        if not secret:
            raise ValueError("must not be empty")
        return secret

    @property
    def dev_mode(self) -> bool:
        """True when the ledger is a local SQLite file: generated secrets are acceptable."""
        return self.database_url.startswith("sqlite")

    @property
    def embedded_runner(self) -> bool:
        """True when jobs run in the serving process (no broker configured)."""
        return self.broker_url is None

    @property
    def signing_key_path(self) -> Path | None:
        """The certificate signing key: LTU_CERTIFICATE_KEY_FILE, else (embedded mode only) LTU_HOME's."""
        if self.certificate_key_file is not None:
            return self.certificate_key_file
        return self.home / SIGNING_KEY_FILE if self.dev_mode else None


class ApiSettings(Section):
    """Read only by the HTTP edge."""

    admin_api_key: str | None = Field(
        None, repr=False, description="registered at start-up as an admin key of the default tenant"
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="comma-separated proxy addresses (or *) whose X-Forwarded-For/-Proto `ltu serve` trusts",
    )
    default_method: str = Field("ltu", description="unlearning method of a submission that names none")
    due_soon_days: int = Field(
        7, ge=0, le=3650, description='"due soon" in reports: an open request this close to its deadline'
    )
    retry_after_seconds: int = Field(2, ge=0, le=3600, description="Retry-After of 202 answers (poll period hint)")
    rate_limit_per_minute: int = Field(120, ge=1, le=1_000_000, description="erasure submissions per key and minute")
    rate_limit_burst: int = Field(
        30, ge=1, le=1_000_000, description="submissions a key may send at once before the rate applies"
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="JSON request bodies (uploads have their own limits)")
    max_dataset_bytes: int = Field(2 << 30, ge=1024, description="an uploaded ltu-dataset archive")
    max_weights_bytes: int = Field(1 << 30, ge=1024, description="an uploaded safetensors weights file")
    max_bulk_bytes: int = Field(16 << 20, ge=1024, description="a bulk erasure body (POST /v1/erasures/bulk)")
    max_subjects_per_request: int = Field(
        MAX_TARGETS, ge=1, le=MAX_TARGETS, description="subject or sample ids of one erasure request"
    )
    audit_reference_models: int = Field(
        4,
        ge=0,
        le=64,
        description="reference models of the likelihood-ratio audit tier, trained when a model with a recipe is "
        "registered (even; 0: rank tier only)",
    )

    @field_validator("audit_reference_models")
    @classmethod
    def _even(cls, count: int) -> int:
        if count % 2:
            raise ValueError("must be even (the reference models train in complementary pairs)")
        return count

    @field_validator("default_method")
    @classmethod
    def _method(cls, method: str) -> str:
        if not _METHOD.match(method):
            raise ValueError("must be a method name in snake_case (ltu, retrain, salun, ...)")
        return method

    @field_validator("admin_api_key")
    @classmethod
    def _admin_key(cls, key: str | None) -> str | None:
        # Weak keys are refused outside embedded mode by Settings, which knows the ledger.
        if key is not None and not key.strip():
            raise ValueError("must not be blank")
        return key


class WorkerSettings(Section):
    """Read only by job execution (worker/), wherever it runs."""

    queue: str = Field("gpu", description="Celery queue of the erasure task")
    audit_queue: str = Field("audit", description="Celery queue of the audit's reference-model training task")
    device: str = Field("auto", description="torch device of jobs: auto (CUDA when available), cpu, cuda[:N], mps")
    torch_threads: int = Field(0, ge=0, le=1024, description="CPU threads per job process; 0: torch's default")
    retain_fraction: float = Field(
        0.1, gt=0, le=1, allow_inf_nan=False, description="ρ = |D̂_r| / |D_r|, the share of the retained data a job uses"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the retained-data sample and the attackers")
    fallback_to_retrain: bool = Field(True, description="verification failed → exact retraining (given a recipe)")
    audit_alpha: float = Field(
        0.05,
        gt=0,
        le=0.5,
        allow_inf_nan=False,
        description="family-wise level of the erasure audit: its measured false-failure rate on Retrains",
    )
    audit_combine: str = Field("simes", description="per-subject combination of sample p-values: simes or bonferroni")
    audit_control_size: int = Field(
        1000, ge=20, le=1_000_000, description="D_audit control samples drawn per request (all, when fewer exist)"
    )
    audit_refresh_after_erasures: int = Field(
        100, ge=1, le=10_000_000, description="erased samples after which a model's reference models are retrained"
    )
    audit_calibration_file: str = Field(
        "", description="the audit calibration table quoted by verdicts; empty: bench/results/audit-calibration.json"
    )
    verify_max_test_drop: float = Field(
        5.0, ge=-100, le=100, allow_inf_nan=False, description="test-accuracy points an unlearned model may lose"
    )
    max_attempts: int = Field(3, ge=1, le=100, description="executions of one request before it is failed")
    lease_seconds: float = Field(
        300.0, gt=0, le=MAX_PERIOD, allow_inf_nan=False, description="a running job silent this long may be taken over"
    )
    poll_interval: float = Field(
        0.5,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds between outbox polls of the embedded runner and the relay",
    )
    visibility_timeout: int = Field(
        6 * 3600, ge=1, le=int(MAX_PERIOD), description="Redis redelivers an unacknowledged job after this many seconds"
    )
    coalesce_window_seconds: float = Field(
        2.0, ge=0, le=3600, allow_inf_nan=False, description="requests on one model queued this close run as one pass"
    )
    coalesce_max_batch: int = Field(20, ge=1, le=MAX_TARGETS, description="requests one unlearning pass may take")
    reconcile_interval: float = Field(
        30.0,
        gt=0,
        le=MAX_PERIOD,
        allow_inf_nan=False,
        description="seconds between reconciler passes (requeue interrupted work)",
    )
    # A request queued this long is presumed lost by the broker and dispatched again (duplicates are
    # no-ops); the same horizon after which Redis itself would redeliver an unacked message.
    requeue_queued_after: float = Field(
        6 * 3600.0,
        gt=0,
        le=MAX_PERIOD,
        allow_inf_nan=False,
        description="a request queued this long is dispatched again",
    )
    max_transient_retries: int = Field(
        8, ge=0, le=1000, description="times a passing fault may put one request back in the queue before it fails"
    )
    retry_backoff_seconds: float = Field(
        30.0, ge=0, le=MAX_PERIOD, allow_inf_nan=False, description="delay before the first retry after a passing fault"
    )
    retry_backoff_cap_seconds: float = Field(
        1800.0, ge=0, le=MAX_PERIOD, allow_inf_nan=False, description="longest delay between retries (doubling)"
    )
    outbox_retention_hours: float = Field(
        168.0, gt=0, le=MAX_GRACE_HOURS, allow_inf_nan=False, description="dispatched outbox rows are kept this long"
    )
    shutdown_timeout: float = Field(
        30.0,
        ge=0,
        le=3600,
        allow_inf_nan=False,
        description="seconds `ltu serve` waits at shutdown for a running job to give its requests back",
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=300, allow_inf_nan=False, description="seconds one webhook delivery attempt may take"
    )
    webhook_max_attempts: int = Field(10, ge=1, le=100, description="attempts of one webhook delivery before it fails")
    webhook_backoff_seconds: float = Field(
        10.0, ge=0, le=MAX_PERIOD, allow_inf_nan=False, description="delay before a webhook's first retry (doubling)"
    )
    webhook_backoff_cap_seconds: float = Field(
        6 * 3600.0, ge=0, le=MAX_PERIOD, allow_inf_nan=False, description="longest delay between webhook retries"
    )

    @field_validator("queue", "audit_queue")
    @classmethod
    def _queue(cls, queue: str) -> str:
        if not _QUEUE.match(queue):
            raise ValueError("must be a queue name of letters, digits and . _ : @ - (at most 200)")
        return queue

    @field_validator("audit_combine")
    @classmethod
    def _combine(cls, combine: str) -> str:
        if combine not in ("simes", "bonferroni"):
            raise ValueError("must be simes or bonferroni")
        return combine

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError("must be auto, cpu, mps, cuda or cuda:N")
        return device

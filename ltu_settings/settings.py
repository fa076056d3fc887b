"""The root `Settings`: the three sections together, the derived properties and the two ways to build one.

- `Settings.from_env(environ=None)` is the loader of every process (the CLI, `celery -A
  worker.celery_app`): it reads `LTU_*` from `environ` (default os.environ) and, in embedded mode,
  creates LTU_HOME and its generated `secret.key`. Nothing else reads the environment.
- `Settings.build(home=..., **fields)` is for tests and benchmarks: explicit values only (flat
  field names of any section), nothing read, nothing created.
- `settings.replace(**fields)` is a validated copy with some fields changed (CLI flags, tests).

A bad value fails with one ConfigError line naming the variable, e.g. `LTU_PURGE_GRACE_HOURS must be
a finite number >= 0 and <= 876000 (got 'inf')`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ltu_settings.base import Section, read_environ, validated
from ltu_settings.sections import (
    DEFAULT_HOME,
    MIN_SECRET_LENGTH,
    ApiSettings,
    LedgerSettings,
    WorkerSettings,
    resolve,
    sqlite_url,
    weak,
)

SECRET_FILE = "secret.key"  # embedded mode: the generated server secret in LTU_HOME
SECTIONS: dict[str, type[Section]] = {"ledger": LedgerSettings, "api": ApiSettings, "worker": WorkerSettings}


class Settings(BaseModel):
    """Service configuration: `ledger` (every process), `api` (the HTTP edge), `worker` (job execution)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ledger: LedgerSettings
    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)

    @model_validator(mode="after")
    def _admin_key_strength(self) -> Settings:
        # Across sections: the API's bootstrap key may be weak only where the secret may be (embedded mode).
        key = self.api.admin_api_key
        if key is not None and not self.ledger.dev_mode and weak(key):
            raise ValueError(
                f"LTU_ADMIN_API_KEY must be a random string of at least {MIN_SECRET_LENGTH} characters "
                "when the ledger is not the embedded SQLite file"
            )
        return self

    @property
    def dev_mode(self) -> bool:
        """True when the ledger is a local SQLite file: generated secrets are acceptable."""
        return self.ledger.dev_mode

    @property
    def embedded_runner(self) -> bool:
        """True when jobs run in the serving process (no broker configured)."""
        return self.ledger.embedded_runner

    @property
    def signing_key_path(self) -> Path | None:
        """The certificate signing key: LTU_CERTIFICATE_KEY_FILE, else (embedded mode only) LTU_HOME's."""
        return self.ledger.signing_key_path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `LTU_*` variables; creates LTU_HOME and its generated secret when embedded; ConfigError if unusable."""
        env = os.environ if environ is None else environ
        values = {name: read_environ(section, env) for name, section in SECTIONS.items()}
        ledger = values["ledger"]
        home = resolve(ledger.get("home") or DEFAULT_HOME)
        if (ledger.get("database_url") or sqlite_url(home)).startswith("sqlite"):
            home.mkdir(parents=True, exist_ok=True)
            if "secret_key" not in ledger:
                ledger["secret_key"] = _read_or_create(home / SECRET_FILE)
        return _compose(values)

    @classmethod
    def build(cls, *, home: Path | str, **fields: Any) -> Settings:
        """Settings from explicit values only (tests, benchmarks): flat field names of any section.

        `database_url` and `artifacts_dir` default to SQLite and a folder under `home`; `secret_key`
        must be given. Reads no environment and creates no file. ConfigError names a bad value's variable.
        """
        return _compose(_route({"home": home, **fields}))

    def replace(self, **fields: Any) -> Settings:
        """A validated copy with some fields changed (flat names of any section)."""
        values = {name: getattr(self, name).model_dump() for name in SECTIONS}
        for name, changes in _route(fields).items():
            values[name].update(changes)
        return _compose(values)


def _route(fields: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat field names → {section: {field: value}}; TypeError for a name no section has."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for field, value in fields.items():
        owner = next((name for name, section in SECTIONS.items() if field in section.model_fields), None)
        if owner is None:
            raise TypeError(f"unknown setting {field!r}")
        routed[owner][field] = value
    return routed


def _compose(values: Mapping[str, Mapping[str, Any]]) -> Settings:
    sections = {name: validated(section, values[name]) for name, section in SECTIONS.items()}
    return validated(Settings, sections)


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

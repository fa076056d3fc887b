"""Configuration of the erasure service: one frozen pydantic-settings model per concern, composed by `Settings`.

    from ltu_settings import ConfigError, Settings
    settings = Settings.from_env()            # the one reader of LTU_* variables (processes' entry points)
    settings = Settings.build(home=tmp, secret_key=..., audit_alpha=0.01)   # tests: explicit values only
    settings.ledger.database_url, settings.api.max_body_bytes, settings.worker.audit_alpha

Sections (ltu_settings.sections) are split by who reads them: `LedgerSettings` every process,
`ApiSettings` the HTTP edge, `WorkerSettings` job execution. Every field is the variable
`LTU_<FIELD NAME>`. Nothing reads the environment at import time.

Embedded default: with no configuration everything lives under one state directory `LTU_HOME`
(default `./.ltu`): a SQLite ledger, the artifact folder, a generated server secret, the generated
certificate signing key and the first admin key. `LTU_DATABASE_URL` switches the ledger to
Postgres and `LTU_BROKER_URL` switches job execution from the in-process runner to Celery workers.

Imports pydantic, pydantic-settings and ledger.errors (ConfigError, shared with the logging set-up);
never sqlalchemy, the edges or the science.
"""

from ledger.errors import ConfigError
from ltu_settings.base import env_name
from ltu_settings.sections import ApiSettings, LedgerSettings, WorkerSettings
from ltu_settings.settings import Settings

__all__ = ["ApiSettings", "ConfigError", "LedgerSettings", "Settings", "WorkerSettings", "env_name"]

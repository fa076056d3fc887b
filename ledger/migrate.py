"""Schema management through Alembic only: `upgrade` to head, and whether a database is at head.

The migrations live in `migrations/` at the repository root, found relative to this package:
that works from a source checkout and from an editable install (`pip install -e .`, what the
Dockerfile does too). Alembic is configured in code, so no alembic.ini is needed at run time
(the root alembic.ini is for developers running the `alembic` command).
"""

from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str):
    """An Alembic Config for `url` with the project's migrations."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise RuntimeError(
            f"Alembic migrations not found at {MIGRATIONS_DIR}; install the service from a source "
            "checkout (pip install -e .)"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision` (default: the newest)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision(url: str = "sqlite://") -> str:
    """The newest revision the migrations define."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def current_revision(engine) -> str | None:
    """The revision a database is at (None if it was never migrated)."""
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()

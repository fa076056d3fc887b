"""Alembic environment: reads the ledger's metadata and nothing else.

The database URL comes from the Alembic config (set by `ledger.migrate`), else from
`LTU_DATABASE_URL`. SQLite gets batch mode so ALTERs work there too.
"""

from __future__ import annotations

import os

from alembic import context

from ledger.db import make_engine
from ledger.tables import Base, JSONType, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("LTU_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set LTU_DATABASE_URL or sqlalchemy.url")
    return url


def run_migrations_offline() -> None:
    """Emit SQL without a database connection (`alembic upgrade head --sql`)."""
    url = _url()
    context.configure(
        url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=url.startswith("sqlite")
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through a live connection (given by the caller, or made from the URL)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


def _render_item(type_: str, obj, autogen_context):
    # Revisions are snapshots: they spell out plain column types instead of importing ours.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and obj is JSONType:
        return "JSON_TYPE"
    return False


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_item=_render_item,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

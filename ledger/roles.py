"""The Postgres privileges of the application role: what the API and the workers may do, and nothing more.

A deployment has two roles: the migration role owns the schema and runs `ltu migrate`; the
application role (API, workers) owns nothing, so it can neither ALTER a table nor DISABLE the
triggers that keep `audit_events` append-only, and it holds no UPDATE, DELETE or TRUNCATE there.
`ltu migrate --app-role NAME` applies `app_role_grants(NAME)` after every migration (so a new
table is covered the moment it exists); the README quotes the statements, and a test keeps the
two equal.
"""

from __future__ import annotations

import re

from ledger.db import make_engine

WRITE = ("SELECT", "INSERT", "UPDATE")
# What the service does to each table. Every working table gets UPDATE: `SELECT ... FOR UPDATE` (the
# row locks of leases, the rate limiter, publication) needs it even where no column changes.
TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "tenants": WRITE,
    "api_keys": WRITE,
    "datasets": WRITE,
    "dataset_samples": WRITE,
    "models": WRITE,
    "model_versions": WRITE,
    "deletion_requests": WRITE,
    "request_samples": WRITE,
    "rate_limit_buckets": WRITE,
    "audit_reference_sets": WRITE,
    "erasures": WRITE,
    "webhook_endpoints": WRITE,  # deleting one marks it deleted: its deliveries stay in the log
    "webhook_events": WRITE,
    "webhook_deliveries": WRITE,
    "tenant_keys": WRITE,  # destroying a key clears its wrapped material (crypto-shredding)
    "outbox": (*WRITE, "DELETE"),  # dispatched rows are cleaned up
    "audit_events": ("SELECT", "INSERT"),  # append-only
    "server_secret_check": ("SELECT", "INSERT"),  # recorded once; only the owner rotates it
    "alembic_version": ("SELECT",),  # readiness compares the schema revision
}
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def app_role_grants(role: str) -> list[str]:
    """The statements that give `role` exactly the application's privileges (revoking any others first)."""
    if not _ROLE.match(role):
        raise ValueError(f"role name {role!r}: use lower-case letters, digits and _ (at most 63)")
    statements = [
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
        f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
    ]
    statements += [f"GRANT {', '.join(p)} ON {table} TO {role}" for table, p in TABLE_PRIVILEGES.items()]
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    return statements


def grant_app_role(url: str, role: str) -> None:
    """Apply `app_role_grants(role)` to the ledger at `url` in one transaction (Postgres only)."""
    if url.startswith("sqlite"):
        raise ValueError("an application role needs a Postgres ledger: SQLite has no roles")
    statements = app_role_grants(role)
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()

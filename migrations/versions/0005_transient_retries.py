"""transient retries: work put back after a passing fault is counted apart from interruptions

A deletion request or reference set whose execution hit a transient fault (the database briefly
unreachable, a lock timeout, a deadlock, CUDA out of memory, a full disk) goes back to the queue
with a backoff instead of failing. `retries` counts those hand-backs, which do not use up the
`attempts` that count interrupted executions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("deletion_requests", "audit_reference_sets"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in ("deletion_requests", "audit_reference_sets"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("retries")

"""dataset purge: an erased subject's pixels leave the stored dataset

`dataset_samples.purged_at` is set once the sample's pixels were removed from the stored dataset
(every model trained on it erased the subject, or the tenant's policy purges at once);
`tenants.purge_raw_data_at_once` is that policy (false: wait for every model).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: SQLite's batch copy drops and recreates the table, which the
    # foreign keys pointing at `tenants` (and `dataset_samples`) refuse once rows exist.
    op.add_column("dataset_samples", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "tenants", sa.Column("purge_raw_data_at_once", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    for table, column in (("tenants", "purge_raw_data_at_once"), ("dataset_samples", "purged_at")):
        if op.get_bind().dialect.name == "sqlite":  # native DROP COLUMN, for the same reason
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        else:
            op.drop_column(table, column)

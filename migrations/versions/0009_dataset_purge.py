"""dataset purge: an erased subject's pixels leave the stored dataset

`dataset_samples.purged_at` is set once the sample's pixels were removed from the stored dataset
(every model trained on it erased the subject, or the tenant's policy purges at once).

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
    with op.batch_alter_table("dataset_samples") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_samples") as batch:
        batch.drop_column("purged_at")

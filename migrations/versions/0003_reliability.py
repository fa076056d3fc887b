"""reliability: coalesced batches, reconciler requeues, per-key rate-limit buckets

A coalesced run publishes one version for several requests, so the request row now names the
version it produced (`result_version`; backfilled from `model_versions.producing_request_id`,
which keeps naming the request that led the run).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deletion_requests") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("requeues", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("result_version", sa.Integer(), nullable=True))
        batch.create_index("ix_deletion_requests_batch_id", ["batch_id"])
    op.execute(
        "UPDATE deletion_requests SET result_version = (SELECT v.number FROM model_versions v "
        "WHERE v.producing_request_id = deletion_requests.id)"
    )
    op.create_table(
        "rate_limit_buckets",
        sa.Column("api_key_id", sa.String(36), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_limit_buckets")
    with op.batch_alter_table("deletion_requests") as batch:
        batch.drop_index("ix_deletion_requests_batch_id")
        batch.drop_column("result_version")
        batch.drop_column("requeues")
        batch.drop_column("batch_id")

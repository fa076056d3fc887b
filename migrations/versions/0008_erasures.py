"""erasures: one request per person across every affected model

An erasure names data subjects; it holds one deletion request per model of the tenant trained on
them (`deletion_requests.erasure_id`). Its status and deadline are computed from those requests.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on Postgres, JSON elsewhere (ledger.tables.JSONType at the time of this revision).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("subject_hashes", JSON_TYPE, nullable=False),
        sa.Column("subjects_not_found", sa.Integer(), nullable=False),
        sa.Column("model_ids", JSON_TYPE, nullable=True),
        sa.Column("dataset_ids", JSON_TYPE, nullable=True),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("parameters", JSON_TYPE, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_erasures_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasures")),
        sa.UniqueConstraint("tenant_id", "idempotency_key", name=op.f("uq_erasures_tenant_id_idempotency_key")),
    )
    op.create_index("ix_erasures_tenant_received", "erasures", ["tenant_id", "received_at"], unique=False)
    with op.batch_alter_table("deletion_requests") as batch:
        batch.add_column(sa.Column("erasure_id", sa.String(36), nullable=True))
        batch.create_foreign_key(op.f("fk_deletion_requests_erasure_id_erasures"), "erasures", ["erasure_id"], ["id"])
        batch.create_index(op.f("ix_deletion_requests_erasure_id"), ["erasure_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deletion_requests") as batch:
        batch.drop_index(op.f("ix_deletion_requests_erasure_id"))
        batch.drop_constraint(op.f("fk_deletion_requests_erasure_id_erasures"), type_="foreignkey")
        batch.drop_column("erasure_id")
    op.drop_index("ix_erasures_tenant_received", table_name="erasures")
    op.drop_table("erasures")

"""tenant keys: every tenant's keyed hashes are keyed by its own key, wrapped under the server secret

`tenant_keys` holds each tenant's key (AES-256-GCM-wrapped under a key derived from LTU_SECRET_KEY;
`wrapped` is cleared when the key is destroyed, i.e. crypto-shredded). Datasets, deletion requests
and erasures record the key id of their subject and body hashes. Rows written before this revision
keep NULL (keyed by the server secret itself) until their tenant's first key adopts them
(ledger.tenant_keys).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYED_TABLES = ("datasets", "deletion_requests", "erasures")


def upgrade() -> None:
    op.create_table(
        "tenant_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("wrapped", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_keys_tenant_id_tenants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_keys")),
    )
    op.create_index(
        "ux_tenant_keys_live",
        "tenant_keys",
        ["tenant_id"],
        unique=True,
        sqlite_where=sa.text("destroyed_at IS NULL"),
        postgresql_where=sa.text("destroyed_at IS NULL"),
    )
    # Plain ADD COLUMN (no batch copy): these tables are referenced by foreign keys.
    for table in KEYED_TABLES:
        op.add_column(table, sa.Column("tenant_key_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    for table in KEYED_TABLES:
        if op.get_bind().dialect.name == "sqlite":  # native DROP COLUMN (no batch copy)
            op.execute(f"ALTER TABLE {table} DROP COLUMN tenant_key_id")
        else:
            op.drop_column(table, "tenant_key_id")
    op.drop_index("ux_tenant_keys_live", table_name="tenant_keys")
    op.drop_table("tenant_keys")

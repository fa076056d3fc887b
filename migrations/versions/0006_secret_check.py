"""secret check: the ledger remembers which server secret keys its subject hashes

One row holding HMAC-SHA256 of a fixed label under LTU_SECRET_KEY (ledger.secret_check), written
by the first `ltu migrate` or start-up against the ledger. A process started with another secret
refuses to start instead of answering "no such data subject" for every real subject.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "server_secret_check",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("check_value", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_secret_check")),
    )


def downgrade() -> None:
    op.drop_table("server_secret_check")

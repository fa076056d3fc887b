"""tenant audit chains: each tenant's events chained among themselves

Every audit event gets `tenant_seq` (its place among its tenant's events, from 1) and
`tenant_prev_hash` (the hash of the tenant's previous event), unique per tenant; events of no
tenant have neither. Existing events are linked in `seq` order by ledger.audit's own rule
(`TenantHeads`), exactly as sealing would have linked them. Their bodies and hashes stay as they
are, so the deployment's chain and the anchors of issued certificates still hold; events sealed from
now on carry the link in their chained body.

The backfill updates an append-only table: the triggers are set aside for it (the migration role
owns the table) and restored in the same transaction. A downgrade drops the columns; events sealed
meanwhile keep the link in their bodies, which revision 0006's verifier does not know.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

# The link must be the one ledger.audit seals and verifies.
from ledger.audit import TenantHeads

SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CHUNK = 1000

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Revision 0002's update triggers, spelled out here: a revision is a snapshot.
SQLITE_NO_UPDATE = (
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE is not allowed'); END"
)


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: SQLite's batch copy of the table would drop its triggers.
    op.add_column("audit_events", sa.Column("tenant_seq", SEQ_TYPE, nullable=True))
    op.add_column("audit_events", sa.Column("tenant_prev_hash", sa.String(length=64), nullable=True))
    _link_existing_events()
    op.create_index("ix_audit_events_tenant_chain", "audit_events", ["tenant_id", "tenant_seq"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_audit_events_tenant_chain", table_name="audit_events")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("audit_events", "tenant_prev_hash")
        op.drop_column("audit_events", "tenant_seq")
    else:  # SQLite's DROP COLUMN leaves the triggers alone (batch mode would drop them)
        op.execute("ALTER TABLE audit_events DROP COLUMN tenant_prev_hash")
        op.execute("ALTER TABLE audit_events DROP COLUMN tenant_seq")


def _link_existing_events() -> None:
    """Give every tenant's existing events their tenant link, walking the chain in `seq` order."""
    conn = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("seq", SEQ_TYPE),
        sa.column("tenant_id", sa.String()),
        sa.column("hash", sa.String()),
        sa.column("tenant_seq", SEQ_TYPE),
        sa.column("tenant_prev_hash", sa.String()),
    )
    link = (
        events.update()
        .where(events.c.seq == sa.bindparam("at_seq"))
        .values(tenant_seq=sa.bindparam("new_tenant_seq"), tenant_prev_hash=sa.bindparam("new_prev_hash"))
    )
    heads = TenantHeads(lambda _tenant_id: None)  # the walk starts at the first event: every head is in hand
    after = 0
    with _updates_allowed(conn):
        while rows := conn.execute(
            sa.select(events.c.seq, events.c.tenant_id, events.c.hash)
            .where(events.c.seq > after)
            .order_by(events.c.seq)
            .limit(CHUNK)
        ).all():
            updates = []
            for seq, tenant_id, digest in rows:
                if tenant_id is None:
                    continue
                fields = heads.next_link(tenant_id)
                updates.append(
                    {"at_seq": seq, "new_tenant_seq": fields["tenant_seq"], "new_prev_hash": fields["tenant_prev_hash"]}
                )
                heads.advance(tenant_id, fields["tenant_seq"], digest)
            if updates:
                conn.execute(link, updates)
            after = rows[-1].seq


@contextmanager
def _updates_allowed(conn: sa.Connection) -> Iterator[None]:
    """The update trigger set aside, then restored (an error rolls both back with the migration)."""
    postgres = conn.dialect.name == "postgresql"
    op.execute(
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"
        if postgres
        else "DROP TRIGGER audit_events_no_update"
    )
    yield
    op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only" if postgres else SQLITE_NO_UPDATE)

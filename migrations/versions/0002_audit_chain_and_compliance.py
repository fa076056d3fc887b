"""tamper-evident audit chain, deadline extensions

The audit events become a hash chain: `seq` (gap-free, the new primary key), `body` (canonical
JSON of the event, its data included), `prev_hash` and `hash`; existing events are chained in
their `id` order. Triggers make the table append-only on both backends. Deletion requests get
their deadline `extension` and an index for deadline filters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# The chain's format is the ledger's (canonical JSON, SHA-256): the backfill must hash exactly
# as ledger.audit seals and verifies.
from ledger.audit import GENESIS, link

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CHUNK = 1000

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSTGRES_TRIGGERS = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP;
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
"""
SQLITE_TRIGGERS = [
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE is not allowed'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE is not allowed'); END",
]

OLD_INDEXES = {
    "ix_audit_events_action": ["action"],
    "ix_audit_events_model": ["model_id", "id"],
    "ix_audit_events_request": ["request_id", "id"],
    "ix_audit_events_tenant_id_id": ["tenant_id", "id"],
}
NEW_INDEXES = {
    "ix_audit_events_action": ["action"],
    "ix_audit_events_model_seq": ["model_id", "seq"],
    "ix_audit_events_request_seq": ["request_id", "seq"],
    "ix_audit_events_tenant_seq": ["tenant_id", "seq"],
}
CHAIN_FIELDS = ("occurred_at", "tenant_id", "actor", "action", "resource_type", "resource_id", "model_id", "request_id")


def upgrade() -> None:
    with op.batch_alter_table('deletion_requests') as batch:
        batch.add_column(sa.Column('extension', JSON_TYPE, nullable=True))
    op.create_index('ix_deletion_requests_tenant_due', 'deletion_requests', ['tenant_id', 'due_at'], unique=False)

    for name in OLD_INDEXES:
        op.drop_index(name, table_name='audit_events')
    with op.batch_alter_table('audit_events') as batch:
        batch.add_column(sa.Column('seq', SEQ_TYPE, nullable=True))
        batch.add_column(sa.Column('body', sa.Text(), nullable=True))
        batch.add_column(sa.Column('prev_hash', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('hash', sa.String(length=64), nullable=True))
    _chain_existing_events()
    with op.batch_alter_table('audit_events') as batch:
        batch.drop_constraint('pk_audit_events', type_='primary')
        batch.drop_column('data')
        batch.drop_column('id')
        for name, type_ in (('seq', SEQ_TYPE), ('body', sa.Text()), ('prev_hash', sa.String(64)), ('hash', sa.String(64))):
            batch.alter_column(name, existing_type=type_, nullable=False)
        batch.create_primary_key('pk_audit_events', ['seq'])
    for name, columns in NEW_INDEXES.items():
        op.create_index(name, 'audit_events', columns, unique=False)
    _create_triggers()


def downgrade() -> None:
    _drop_triggers()
    for name in NEW_INDEXES:
        op.drop_index(name, table_name='audit_events')
    with op.batch_alter_table('audit_events') as batch:
        batch.add_column(sa.Column('data', JSON_TYPE, nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('ALTER TABLE audit_events ADD COLUMN id BIGSERIAL')
    else:
        op.add_column('audit_events', sa.Column('id', sa.Integer(), nullable=True))
    _unchain_events()
    with op.batch_alter_table('audit_events') as batch:
        batch.drop_constraint('pk_audit_events', type_='primary')
        for name in ('seq', 'body', 'prev_hash', 'hash'):
            batch.drop_column(name)
        batch.alter_column('data', existing_type=JSON_TYPE, nullable=False)
        batch.alter_column('id', existing_type=SEQ_TYPE, nullable=False)
        batch.create_primary_key('pk_audit_events', ['id'])
    for name, columns in OLD_INDEXES.items():
        op.create_index(name, 'audit_events', columns, unique=False)

    op.drop_index('ix_deletion_requests_tenant_due', table_name='deletion_requests')
    with op.batch_alter_table('deletion_requests') as batch:
        batch.drop_column('extension')


def _chain_existing_events() -> None:
    """Chain the events of revision 0001 in the order they were written."""
    conn = op.get_bind()
    events = sa.table('audit_events', sa.column('id', sa.BigInteger()), sa.column('occurred_at', sa.DateTime(timezone=True)),
                      *(sa.column(name, sa.String()) for name in CHAIN_FIELDS[1:]), sa.column('data', JSON_TYPE),
                      sa.column('seq', SEQ_TYPE), sa.column('body', sa.Text()), sa.column('prev_hash', sa.String()),
                      sa.column('hash', sa.String()))
    seq, prev, after = 0, GENESIS, -1
    while rows := conn.execute(sa.select(events).where(events.c.id > after).order_by(events.c.id).limit(CHUNK)).mappings().all():
        for row in rows:
            seq += 1
            fields = {name: row[name] for name in CHAIN_FIELDS}
            if fields['occurred_at'].tzinfo is None:  # SQLite keeps UTC without an offset
                fields['occurred_at'] = fields['occurred_at'].replace(tzinfo=UTC)
            body, digest = link({**fields, 'data': row['data']}, seq=seq, prev_hash=prev)
            conn.execute(events.update().where(events.c.id == row['id'])
                         .values(seq=seq, body=body, prev_hash=prev, hash=digest))
            prev, after = digest, row['id']


def _unchain_events() -> None:
    """Give every event its sequence number as id and its data back as a column."""
    conn = op.get_bind()
    events = sa.table('audit_events', sa.column('id', sa.BigInteger()), sa.column('seq', SEQ_TYPE),
                      sa.column('body', sa.Text()), sa.column('data', JSON_TYPE))
    after = 0
    while rows := conn.execute(sa.select(events.c.seq, events.c.body).where(events.c.seq > after)
                               .order_by(events.c.seq).limit(CHUNK)).all():
        for seq, body in rows:
            conn.execute(events.update().where(events.c.seq == seq).values(id=seq, data=json.loads(body)['data']))
        after = rows[-1].seq
    if conn.dialect.name == 'postgresql':
        op.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM audit_events")


def _create_triggers() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(POSTGRES_TRIGGERS)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def _drop_triggers() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute('DROP TRIGGER audit_events_no_truncate ON audit_events')
        op.execute('DROP TRIGGER audit_events_append_only ON audit_events')
        op.execute('DROP FUNCTION audit_events_append_only()')
    else:
        op.execute('DROP TRIGGER audit_events_no_update')
        op.execute('DROP TRIGGER audit_events_no_delete')

"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on Postgres, JSON elsewhere (ledger.tables.JSONType at the time of this revision).
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('task_name', sa.String(length=100), nullable=False),
    sa.Column('payload', JSON_TYPE, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claim_token', sa.String(length=36), nullable=True),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox'))
    )
    op.create_index('ix_outbox_pending', 'outbox', ['dispatched_at', 'id'], unique=False)

    op.create_table('tenants',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants')),
    sa.UniqueConstraint('name', name=op.f('uq_tenants_name'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('scopes', JSON_TYPE, nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_api_keys_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_index(op.f('ix_api_keys_tenant_id'), 'api_keys', ['tenant_id'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('resource_type', sa.String(length=32), nullable=False),
    sa.Column('resource_id', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.String(length=36), nullable=True),
    sa.Column('request_id', sa.String(length=36), nullable=True),
    sa.Column('data', JSON_TYPE, nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_audit_events_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    op.create_index(op.f('ix_audit_events_action'), 'audit_events', ['action'], unique=False)
    op.create_index('ix_audit_events_model', 'audit_events', ['model_id', 'id'], unique=False)
    op.create_index('ix_audit_events_request', 'audit_events', ['request_id', 'id'], unique=False)
    op.create_index('ix_audit_events_tenant_id_id', 'audit_events', ['tenant_id', 'id'], unique=False)

    op.create_table('datasets',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('format_version', sa.Integer(), nullable=False),
    sa.Column('num_classes', sa.Integer(), nullable=False),
    sa.Column('image_shape', JSON_TYPE, nullable=False),
    sa.Column('num_samples', sa.Integer(), nullable=False),
    sa.Column('archive_sha256', sa.String(length=64), nullable=False),
    sa.Column('storage_key', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_datasets_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets'))
    )
    op.create_index(op.f('ix_datasets_tenant_id'), 'datasets', ['tenant_id'], unique=False)

    op.create_table('models',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('architecture', JSON_TYPE, nullable=False),
    sa.Column('recipe', JSON_TYPE, nullable=True),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_models_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_models_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models'))
    )
    op.create_index(op.f('ix_models_dataset_id'), 'models', ['dataset_id'], unique=False)
    op.create_index(op.f('ix_models_tenant_id'), 'models', ['tenant_id'], unique=False)

    op.create_table('deletion_requests',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('model_id', sa.String(length=36), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('phase', sa.String(length=32), nullable=True),
    sa.Column('progress_step', sa.Integer(), nullable=False),
    sa.Column('progress_total', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('lease_token', sa.String(length=36), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.Column('target_kind', sa.String(length=16), nullable=False),
    sa.Column('subject_hashes', JSON_TYPE, nullable=False),
    sa.Column('num_targets', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('parameters', JSON_TYPE, nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('base_version', sa.Integer(), nullable=True),
    sa.Column('metrics_before', JSON_TYPE, nullable=True),
    sa.Column('metrics_after', JSON_TYPE, nullable=True),
    sa.Column('verification', JSON_TYPE, nullable=True),
    sa.Column('details', JSON_TYPE, nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_deletion_requests_model_id_models')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_deletion_requests_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deletion_requests')),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name=op.f('uq_deletion_requests_tenant_id_idempotency_key'))
    )
    op.create_index('ix_deletion_requests_model_status', 'deletion_requests', ['model_id', 'status'], unique=False)
    op.create_index('ix_deletion_requests_tenant_received', 'deletion_requests', ['tenant_id', 'received_at'], unique=False)

    op.create_table('dataset_samples',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dataset_id', sa.String(length=36), nullable=False),
    sa.Column('row', sa.Integer(), nullable=False),
    sa.Column('sample_id', sa.String(length=255), nullable=False),
    sa.Column('subject_hash', sa.String(length=64), nullable=False),
    sa.Column('label', sa.Integer(), nullable=False),
    sa.Column('split', sa.String(length=16), nullable=False),
    sa.Column('erased_by_request_id', sa.String(length=36), nullable=True),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], name=op.f('fk_dataset_samples_dataset_id_datasets')),
    sa.ForeignKeyConstraint(['erased_by_request_id'], ['deletion_requests.id'], name=op.f('fk_dataset_samples_erased_by_request_id_deletion_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_samples')),
    sa.UniqueConstraint('dataset_id', 'row', name=op.f('uq_dataset_samples_dataset_id_row')),
    sa.UniqueConstraint('dataset_id', 'sample_id', name=op.f('uq_dataset_samples_dataset_id_sample_id'))
    )
    op.create_index('ix_dataset_samples_dataset_subject', 'dataset_samples', ['dataset_id', 'subject_hash'], unique=False)
    op.create_index(op.f('ix_dataset_samples_erased_by_request_id'), 'dataset_samples', ['erased_by_request_id'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('model_id', sa.String(length=36), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('parent_id', sa.String(length=36), nullable=True),
    sa.Column('producing_request_id', sa.String(length=36), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('storage_key', sa.String(length=500), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('metrics', JSON_TYPE, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_versions_model_id_models')),
    sa.ForeignKeyConstraint(['parent_id'], ['model_versions.id'], name=op.f('fk_model_versions_parent_id_model_versions')),
    sa.ForeignKeyConstraint(['producing_request_id'], ['deletion_requests.id'], name=op.f('fk_model_versions_producing_request_id_deletion_requests')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('model_id', 'number', name=op.f('uq_model_versions_model_id_number')),
    sa.UniqueConstraint('producing_request_id', name=op.f('uq_model_versions_producing_request_id'))
    )
    op.create_table('request_samples',
    sa.Column('request_id', sa.String(length=36), nullable=False),
    sa.Column('sample_pk', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['deletion_requests.id'], name=op.f('fk_request_samples_request_id_deletion_requests')),
    sa.ForeignKeyConstraint(['sample_pk'], ['dataset_samples.id'], name=op.f('fk_request_samples_sample_pk_dataset_samples')),
    sa.PrimaryKeyConstraint('request_id', 'sample_pk', name=op.f('pk_request_samples'))
    )
    op.create_index(op.f('ix_request_samples_sample_pk'), 'request_samples', ['sample_pk'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_request_samples_sample_pk'), table_name='request_samples')

    op.drop_table('request_samples')
    op.drop_table('model_versions')
    op.drop_index(op.f('ix_dataset_samples_erased_by_request_id'), table_name='dataset_samples')
    op.drop_index('ix_dataset_samples_dataset_subject', table_name='dataset_samples')

    op.drop_table('dataset_samples')
    op.drop_index('ix_deletion_requests_tenant_received', table_name='deletion_requests')
    op.drop_index('ix_deletion_requests_model_status', table_name='deletion_requests')

    op.drop_table('deletion_requests')
    op.drop_index(op.f('ix_models_tenant_id'), table_name='models')
    op.drop_index(op.f('ix_models_dataset_id'), table_name='models')

    op.drop_table('models')
    op.drop_index(op.f('ix_datasets_tenant_id'), table_name='datasets')

    op.drop_table('datasets')
    op.drop_index('ix_audit_events_tenant_id_id', table_name='audit_events')
    op.drop_index('ix_audit_events_request', table_name='audit_events')
    op.drop_index('ix_audit_events_model', table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_action'), table_name='audit_events')

    op.drop_table('audit_events')
    op.drop_index(op.f('ix_api_keys_tenant_id'), table_name='api_keys')

    op.drop_table('api_keys')
    op.drop_table('tenants')
    op.drop_index('ix_outbox_pending', table_name='outbox')

    op.drop_table('outbox')

"""audit pending: events committed with their request (no head lock), chained later in batches by the sequencer;
audit_events.origin names the shard row a chained event came from

Revision ID: fe50344f47b9
Revises: 29fa3c941d6a
Create Date: 2026-11-30 19:02:06.000000
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = 'fe50344f47b9'
down_revision = '29fa3c941d6a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_pending',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('occurred_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('username', sa.String(length=64), nullable=True),
    sa.Column('role', sa.String(length=200), nullable=True),
    sa.Column('institution_id', sa.Integer(), nullable=True),
    sa.Column('tenant_code', sa.String(length=32), nullable=True),
    sa.Column('patient', sa.String(length=80), nullable=True),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('resource_type', sa.String(length=64), nullable=True),
    sa.Column('resource_id', sa.String(length=80), nullable=True),
    sa.Column('purpose', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('break_glass', sa.Boolean(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('source_ip', sa.String(length=45), nullable=True),
    sa.Column('request_id', sa.String(length=64), nullable=True),
    sa.Column('mac', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_pending'))
    )
    with op.batch_alter_table('audit_events') as batch:
        batch.add_column(sa.Column('origin', sa.String(length=80), nullable=True))
        batch.create_unique_constraint(batch.f('uq_audit_events_origin'), ['origin'])


def downgrade() -> None:
    with op.batch_alter_table('audit_events') as batch:
        batch.drop_constraint(batch.f('uq_audit_events_origin'), type_='unique')
        batch.drop_column('origin')
    op.drop_table('audit_pending')

"""shard audit pending: a shard write's audit events commit in the shard's transaction, chained later by the sequencer

Revision ID: 3a9d5c7e1f20
Revises: d41c8e2f6a17
Create Date: 2026-11-30 20:45:00.000000
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = '3a9d5c7e1f20'
down_revision = 'd41c8e2f6a17'
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


def downgrade() -> None:
    op.drop_table('audit_pending')

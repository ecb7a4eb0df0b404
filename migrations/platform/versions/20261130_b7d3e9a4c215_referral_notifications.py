"""referral notifications, their per-user reads, institution webhooks and webhook deliveries

Revision ID: b7d3e9a4c215
Revises: a1c0f5e2d7b4
Create Date: 2026-11-30 16:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = 'b7d3e9a4c215'
down_revision = 'a1c0f5e2d7b4'
branch_labels = None
depends_on = None

KINDS = ('new_referral', 'accepted', 'declined', 'arrived', 'completed', 'cancelled', 'no_show', 'overdue_reminder',
         'overdue_escalation')


def upgrade() -> None:
    op.create_table('notifications',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=True),
    sa.Column('role', sa.String(length=32), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('referral_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.Enum(*KINDS, name='notificationkind', native_enum=False, length=20), nullable=False),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_notifications_institution_id_institutions')),
    sa.ForeignKeyConstraint(['referral_id'], ['referrals.id'], name=op.f('fk_notifications_referral_id_referrals'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_notifications_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
    sa.UniqueConstraint('referral_id', 'kind', name='uq_notifications_referral_kind')
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_inbox', ['tenant_id', 'institution_id', 'created_at'], unique=False)

    op.create_table('notification_reads',
    sa.Column('notification_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('read_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_notification_reads_notification_id_notifications'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('notification_id', 'user_id', name=op.f('pk_notification_reads'))
    )
    op.create_table('institution_webhooks',
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=500), nullable=False),
    sa.Column('secret_enc', sa.Text(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('updated_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_institution_webhooks_institution_id_institutions')),
    sa.PrimaryKeyConstraint('institution_id', name=op.f('pk_institution_webhooks'))
    )
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('notification_id', sa.String(length=36), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('delivered_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_webhook_deliveries_institution_id_institutions')),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'], name=op.f('fk_webhook_deliveries_notification_id_notifications'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('notification_id', name=op.f('uq_webhook_deliveries_notification_id'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_due', ['delivered_at', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_due')

    op.drop_table('webhook_deliveries')
    op.drop_table('institution_webhooks')
    op.drop_table('notification_reads')
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('ix_notifications_inbox')

    op.drop_table('notifications')

"""login throttle and alerts instead of account lockout

Revision ID: 7b2e4c9d1a05
Revises: 5d1f0b7a9c3e
Create Date: 2026-11-30 15:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = '7b2e4c9d1a05'
down_revision = '5d1f0b7a9c3e'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('login_throttle',
    sa.Column('username_index', sa.String(length=32), nullable=False),
    sa.Column('source_ip', sa.String(length=45), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('last_failure_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('blocked_until', hie.platform.db.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('username_index', 'source_ip', name=op.f('pk_login_throttle'))
    )
    op.create_table('login_alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('raised_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('source_addresses', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'],
                            name=op.f('fk_login_alerts_institution_id_institutions')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_login_alerts_user_id_users'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_alerts'))
    )
    with op.batch_alter_table('login_alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_alerts_institution_id'), ['institution_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_login_alerts_user_id'), ['user_id'], unique=False)
    # Accounts are no longer locked: failed logins are throttled per (username, source address). users.failed_logins
    # and users.locked_until stay for one release (additive first): processes of the previous release still write
    # them during a rolling upgrade.


def downgrade() -> None:
    with op.batch_alter_table('login_alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_alerts_user_id'))
        batch_op.drop_index(batch_op.f('ix_login_alerts_institution_id'))
    op.drop_table('login_alerts')
    op.drop_table('login_throttle')

"""referrals, their steps and per-tenant answer deadlines

Revision ID: 9c4d2e7f1b36
Revises: 7b2e4c9d1a05
Create Date: 2026-11-30 15:52:37.889713
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = '9c4d2e7f1b36'
down_revision = '7b2e4c9d1a05'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('referral_deadlines',
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('urgency', sa.Enum('routine', 'urgent', 'emergency', name='urgency', native_enum=False, length=10), nullable=False),
    sa.Column('minutes', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_referral_deadlines_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', 'urgency', name=op.f('pk_referral_deadlines'))
    )
    op.create_table('referrals',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('direction', sa.Enum('up', 'down', 'lateral', name='direction', native_enum=False, length=10), nullable=False),
    sa.Column('urgency', sa.Enum('routine', 'urgent', 'emergency', name='urgency', native_enum=False, length=10), nullable=False),
    sa.Column('status', sa.Enum('requested', 'accepted', 'declined', 'arrived', 'completed', 'cancelled', 'no_show', name='referralstatus', native_enum=False, length=12), nullable=False),
    sa.Column('sender_institution_id', sa.Integer(), nullable=False),
    sa.Column('sender_tenant_code', sa.String(length=32), nullable=False),
    sa.Column('sender_patient_id', sa.String(length=36), nullable=False),
    sa.Column('master_person_id', sa.String(length=36), nullable=False),
    sa.Column('receiver_institution_id', sa.Integer(), nullable=False),
    sa.Column('receiver_department', sa.String(length=100), nullable=True),
    sa.Column('receiver_patient_id', sa.String(length=36), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('diagnoses', sa.JSON(), nullable=False),
    sa.Column('clinical_summary', sa.Text(), nullable=True),
    sa.Column('records', sa.JSON(), nullable=False),
    sa.Column('appointment_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('discharge_summary', sa.Text(), nullable=True),
    sa.Column('follow_up_of', sa.String(length=36), nullable=True),
    sa.Column('requested_by', sa.Integer(), nullable=False),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('due_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('answered_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['follow_up_of'], ['referrals.id'], name=op.f('fk_referrals_follow_up_of_referrals')),
    sa.ForeignKeyConstraint(['receiver_institution_id'], ['institutions.id'], name=op.f('fk_referrals_receiver_institution_id_institutions')),
    sa.ForeignKeyConstraint(['sender_institution_id'], ['institutions.id'], name=op.f('fk_referrals_sender_institution_id_institutions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_referrals'))
    )
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referrals_follow_up_of'), ['follow_up_of'], unique=False)
        batch_op.create_index(batch_op.f('ix_referrals_master_person_id'), ['master_person_id'], unique=False)
        batch_op.create_index('ix_referrals_receiver_box', ['receiver_institution_id', 'status', 'created_at'], unique=False)
        batch_op.create_index('ix_referrals_sender_box', ['sender_institution_id', 'status', 'created_at'], unique=False)
        batch_op.create_index('ix_referrals_status_due', ['status', 'due_at'], unique=False)

    op.create_table('referral_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('referral_id', sa.String(length=36), nullable=False),
    sa.Column('from_status', sa.Enum('requested', 'accepted', 'declined', 'arrived', 'completed', 'cancelled', 'no_show', name='referralstatus', native_enum=False, length=12), nullable=True),
    sa.Column('to_status', sa.Enum('requested', 'accepted', 'declined', 'arrived', 'completed', 'cancelled', 'no_show', name='referralstatus', native_enum=False, length=12), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=80), nullable=False),
    sa.Column('role', sa.String(length=200), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_referral_steps_institution_id_institutions')),
    sa.ForeignKeyConstraint(['referral_id'], ['referrals.id'], name=op.f('fk_referral_steps_referral_id_referrals'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_referral_steps'))
    )
    with op.batch_alter_table('referral_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referral_steps_referral_id'), ['referral_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('referral_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_referral_steps_referral_id'))

    op.drop_table('referral_steps')
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.drop_index('ix_referrals_status_due')
        batch_op.drop_index('ix_referrals_sender_box')
        batch_op.drop_index('ix_referrals_receiver_box')
        batch_op.drop_index(batch_op.f('ix_referrals_master_person_id'))
        batch_op.drop_index(batch_op.f('ix_referrals_follow_up_of'))

    op.drop_table('referrals')
    op.drop_table('referral_deadlines')

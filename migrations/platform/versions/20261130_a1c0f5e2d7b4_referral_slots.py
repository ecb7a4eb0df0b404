"""referral slots: each receiving department's capacity per day, and how much of it is booked

Revision ID: a1c0f5e2d7b4
Revises: 9c4d2e7f1b36
Create Date: 2026-11-30 16:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = 'a1c0f5e2d7b4'
down_revision = '9c4d2e7f1b36'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('referral_slots',
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('department', sa.String(length=100), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('booked', sa.Integer(), nullable=False),
    sa.Column('updated_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.CheckConstraint('booked >= 0 AND booked <= capacity', name=op.f('ck_referral_slots_within_capacity')),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'],
                            name=op.f('fk_referral_slots_institution_id_institutions')),
    sa.PrimaryKeyConstraint('institution_id', 'department', 'day', name=op.f('pk_referral_slots'))
    )
    with op.batch_alter_table('referral_slots', schema=None) as batch_op:
        batch_op.create_index('ix_referral_slots_department_day', ['department', 'day'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('referral_slots', schema=None) as batch_op:
        batch_op.drop_index('ix_referral_slots_department_day')

    op.drop_table('referral_slots')

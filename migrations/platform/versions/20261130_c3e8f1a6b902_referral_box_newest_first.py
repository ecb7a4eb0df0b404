"""referral boxes newest first: an index per side on (institution, created_at), so the unfiltered inbox needs no sort

Revision ID: c3e8f1a6b902
Revises: b7d3e9a4c215
Create Date: 2026-11-30 17:10:00.000000
"""

from alembic import op

revision = 'c3e8f1a6b902'
down_revision = 'b7d3e9a4c215'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.create_index('ix_referrals_receiver_newest', ['receiver_institution_id', 'created_at'], unique=False)
        batch_op.create_index('ix_referrals_sender_newest', ['sender_institution_id', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('referrals', schema=None) as batch_op:
        batch_op.drop_index('ix_referrals_sender_newest')
        batch_op.drop_index('ix_referrals_receiver_newest')

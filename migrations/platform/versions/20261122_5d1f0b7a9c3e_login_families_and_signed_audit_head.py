"""login families and signed audit head

Revision ID: 5d1f0b7a9c3e
Revises: ac39540010d2
Create Date: 2026-11-22 22:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '5d1f0b7a9c3e'
down_revision = 'ac39540010d2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('audit_chain_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('signed_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
                                      nullable=True))
        batch_op.add_column(sa.Column('signed_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('signature', sa.String(length=64), nullable=True))
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('family_id', sa.String(length=36), nullable=True))
    op.execute("UPDATE auth_sessions SET family_id = id")
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.alter_column('family_id', existing_type=sa.String(length=36), nullable=False)
        batch_op.create_index(batch_op.f('ix_auth_sessions_family_id'), ['family_id'], unique=False)
    # Resident accounts no longer carry the patient's name in plaintext.
    op.execute("UPDATE users SET display_name = username WHERE id IN "
               "(SELECT user_id FROM user_roles WHERE role = 'resident')")


def downgrade() -> None:
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auth_sessions_family_id'))
        batch_op.drop_column('family_id')
    with op.batch_alter_table('audit_chain_head', schema=None) as batch_op:
        batch_op.drop_column('signature')
        batch_op.drop_column('signed_hash')
        batch_op.drop_column('signed_seq')

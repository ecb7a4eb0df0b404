"""consultations: requests, steps, participants, attachments, signing keys, opinions, teleteaching

Revision ID: 29fa3c941d6a
Revises: 309c1c34b8aa
Create Date: 2026-11-30 18:18:56.629152
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = '29fa3c941d6a'
down_revision = '309c1c34b8aa'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('consultations',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.Enum('consultation', 'mdt', 'imaging_read', 'ecg_read', name='kind', native_enum=False, length=16), nullable=False),
    sa.Column('urgency', sa.Enum('routine', 'urgent', name='urgency', native_enum=False, length=10), nullable=False),
    sa.Column('status', sa.Enum('requested', 'accepted', 'declined', 'in_session', 'opinion_given', 'acknowledged', 'closed', 'cancelled', name='consultstatus', native_enum=False, length=16), nullable=False),
    sa.Column('requester_institution_id', sa.Integer(), nullable=False),
    sa.Column('requester_user_id', sa.Integer(), nullable=False),
    sa.Column('requester_tenant_code', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('master_person_id', sa.String(length=36), nullable=False),
    sa.Column('consultant_institution_id', sa.Integer(), nullable=False),
    sa.Column('department', sa.String(length=100), nullable=False),
    sa.Column('consultant_user_id', sa.Integer(), nullable=True),
    sa.Column('question', sa.Text(), nullable=False),
    sa.Column('records', sa.JSON(), nullable=False),
    sa.Column('scheduled_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('duration_minutes', sa.Integer(), nullable=True),
    sa.Column('video_room', sa.String(length=80), nullable=True),
    sa.Column('claimed_by', sa.Integer(), nullable=True),
    sa.Column('claim_expires_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('due_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('overdue_flagged_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('answered_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('opinion_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('closed_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['consultant_institution_id'], ['institutions.id'], name=op.f('fk_consultations_consultant_institution_id_institutions')),
    sa.ForeignKeyConstraint(['requester_institution_id'], ['institutions.id'], name=op.f('fk_consultations_requester_institution_id_institutions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consultations'))
    )
    with op.batch_alter_table('consultations', schema=None) as batch_op:
        batch_op.create_index('ix_consultations_consultant_box', ['consultant_institution_id', 'status', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_consultations_master_person_id'), ['master_person_id'], unique=False)
        batch_op.create_index('ix_consultations_queue', ['consultant_institution_id', 'kind', 'status', 'urgency', 'created_at'], unique=False)
        batch_op.create_index('ix_consultations_requester_box', ['requester_institution_id', 'status', 'created_at'], unique=False)
        batch_op.create_index('ix_consultations_status_due', ['status', 'due_at'], unique=False)
        batch_op.create_index('ix_consultations_queue_department', ['consultant_institution_id', 'kind', 'department', 'status', 'urgency', 'created_at'], unique=False)
        batch_op.create_index('ix_consultations_claim_expiry', ['claim_expires_at'], unique=False)

    op.create_table('consultation_attachments',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('filename', sa.String(length=200), nullable=False),
    sa.Column('media_type', sa.String(length=80), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content_enc', sa.LargeBinary(length=4294967295), nullable=False),
    sa.Column('uploaded_by', sa.Integer(), nullable=False),
    sa.Column('uploaded_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], name=op.f('fk_consultation_attachments_consultation_id_consultations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consultation_attachments'))
    )
    with op.batch_alter_table('consultation_attachments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consultation_attachments_consultation_id'), ['consultation_id'], unique=False)

    op.create_table('consultation_participants',
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.Enum('requester', 'consultant', 'patient', name='participantrole', native_enum=False, length=12), nullable=False),
    sa.Column('invited_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], name=op.f('fk_consultation_participants_consultation_id_consultations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_consultation_participants_user_id_users')),
    sa.PrimaryKeyConstraint('consultation_id', 'user_id', name=op.f('pk_consultation_participants'))
    )
    with op.batch_alter_table('consultation_participants', schema=None) as batch_op:
        batch_op.create_index('ix_consultation_participants_user', ['user_id'], unique=False)

    op.create_table('consultation_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('from_status', sa.Enum('requested', 'accepted', 'declined', 'in_session', 'opinion_given', 'acknowledged', 'closed', 'cancelled', name='consultstatus', native_enum=False, length=16), nullable=True),
    sa.Column('to_status', sa.Enum('requested', 'accepted', 'declined', 'in_session', 'opinion_given', 'acknowledged', 'closed', 'cancelled', name='consultstatus', native_enum=False, length=16), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=80), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], name=op.f('fk_consultation_steps_consultation_id_consultations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_consultation_steps_institution_id_institutions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consultation_steps'))
    )
    with op.batch_alter_table('consultation_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consultation_steps_consultation_id'), ['consultation_id'], unique=False)

    op.create_table('signing_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('private_key_enc', sa.Text(), nullable=False),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('retired_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_signing_keys_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_keys'))
    )
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signing_keys_user_id'), ['user_id'], unique=False)

    op.create_table('teaching_sessions',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('lecturer_user_id', sa.Integer(), nullable=False),
    sa.Column('host_institution_id', sa.Integer(), nullable=False),
    sa.Column('starts_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('ends_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('credits', sa.Float(), nullable=False),
    sa.Column('materials', sa.JSON(), nullable=False),
    sa.Column('recording_url', sa.String(length=500), nullable=True),
    sa.Column('video_room', sa.String(length=80), nullable=True),
    sa.Column('cancelled', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.Integer(), nullable=False),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['host_institution_id'], ['institutions.id'], name=op.f('fk_teaching_sessions_host_institution_id_institutions')),
    sa.ForeignKeyConstraint(['lecturer_user_id'], ['users.id'], name=op.f('fk_teaching_sessions_lecturer_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_teaching_sessions'))
    )
    with op.batch_alter_table('teaching_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_teaching_sessions_starts', ['starts_at'], unique=False)

    op.create_table('consultation_opinions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('consultation_id', sa.String(length=36), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.Column('canonical', sa.Text(), nullable=False),
    sa.Column('signature', sa.String(length=100), nullable=False),
    sa.Column('signing_key_id', sa.Integer(), nullable=False),
    sa.Column('signed_by', sa.Integer(), nullable=False),
    sa.Column('signed_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('fhir_reference', sa.String(length=120), nullable=True),
    sa.ForeignKeyConstraint(['consultation_id'], ['consultations.id'], name=op.f('fk_consultation_opinions_consultation_id_consultations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['signing_key_id'], ['signing_keys.id'], name=op.f('fk_consultation_opinions_signing_key_id_signing_keys')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consultation_opinions')),
    sa.UniqueConstraint('consultation_id', 'version', name='uq_consultation_opinion_version')
    )
    with op.batch_alter_table('consultation_opinions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_consultation_opinions_consultation_id'), ['consultation_id'], unique=False)

    op.create_table('teaching_invites',
    sa.Column('session_id', sa.String(length=36), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_teaching_invites_institution_id_institutions')),
    sa.ForeignKeyConstraint(['session_id'], ['teaching_sessions.id'], name=op.f('fk_teaching_invites_session_id_teaching_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'institution_id', name=op.f('pk_teaching_invites'))
    )
    op.create_table('teaching_registrations',
    sa.Column('session_id', sa.String(length=36), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('registered_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('joined_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('left_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('credits', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_teaching_registrations_institution_id_institutions')),
    sa.ForeignKeyConstraint(['session_id'], ['teaching_sessions.id'], name=op.f('fk_teaching_registrations_session_id_teaching_sessions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_teaching_registrations_user_id_users')),
    sa.PrimaryKeyConstraint('session_id', 'user_id', name=op.f('pk_teaching_registrations'))
    )
    with op.batch_alter_table('teaching_registrations', schema=None) as batch_op:
        batch_op.create_index('ix_teaching_registrations_user', ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('teaching_registrations', schema=None) as batch_op:
        batch_op.drop_index('ix_teaching_registrations_user')

    op.drop_table('teaching_registrations')
    op.drop_table('teaching_invites')
    with op.batch_alter_table('consultation_opinions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consultation_opinions_consultation_id'))

    op.drop_table('consultation_opinions')
    with op.batch_alter_table('teaching_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_teaching_sessions_starts')

    op.drop_table('teaching_sessions')
    with op.batch_alter_table('signing_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signing_keys_user_id'))

    op.drop_table('signing_keys')
    with op.batch_alter_table('consultation_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consultation_steps_consultation_id'))

    op.drop_table('consultation_steps')
    with op.batch_alter_table('consultation_participants', schema=None) as batch_op:
        batch_op.drop_index('ix_consultation_participants_user')

    op.drop_table('consultation_participants')
    with op.batch_alter_table('consultation_attachments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_consultation_attachments_consultation_id'))

    op.drop_table('consultation_attachments')
    with op.batch_alter_table('consultations', schema=None) as batch_op:
        batch_op.drop_index('ix_consultations_claim_expiry')
        batch_op.drop_index('ix_consultations_queue_department')
        batch_op.drop_index('ix_consultations_status_due')
        batch_op.drop_index('ix_consultations_requester_box')
        batch_op.drop_index('ix_consultations_queue')
        batch_op.drop_index(batch_op.f('ix_consultations_master_person_id'))
        batch_op.drop_index('ix_consultations_consultant_box')

    op.drop_table('consultations')

"""family doctor: teams, contracts, the readings index, follow-ups, alerts, health education

Revision ID: 309c1c34b8aa
Revises: c3e8f1a6b902
Create Date: 2026-11-30 17:38:56.464657
"""

import sqlalchemy as sa
from alembic import op

import hie.platform.db

revision = '309c1c34b8aa'
down_revision = 'c3e8f1a6b902'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fd_articles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('author_id', sa.Integer(), nullable=False),
    sa.Column('published_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_fd_articles_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fd_articles'))
    )
    with op.batch_alter_table('fd_articles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fd_articles_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('fd_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.Column('master_person_id', sa.String(length=36), nullable=False),
    sa.Column('delivered_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('read_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['article_id'], ['fd_articles.id'], name=op.f('fk_fd_deliveries_article_id_fd_articles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fd_deliveries')),
    sa.UniqueConstraint('article_id', 'master_person_id', name='uq_fd_delivery')
    )
    with op.batch_alter_table('fd_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fd_deliveries_master_person_id'), ['master_person_id'], unique=False)

    op.create_table('fd_teams',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_fd_teams_institution_id_institutions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fd_teams')),
    sa.UniqueConstraint('code', name=op.f('uq_fd_teams_code'))
    )
    with op.batch_alter_table('fd_teams', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fd_teams_institution_id'), ['institution_id'], unique=False)

    op.create_table('fd_contracts',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('tenant_code', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('master_person_id', sa.String(length=36), nullable=False),
    sa.Column('active_person_id', sa.String(length=36), nullable=True),
    sa.Column('packages', sa.JSON(), nullable=False),
    sa.Column('priority_groups', sa.JSON(), nullable=False),
    sa.Column('region_code', sa.String(length=12), nullable=True),
    sa.Column('status', sa.Enum('active', 'expired', 'renewed', 'terminated', 'transferred', name='contractstatus', native_enum=False, length=12), nullable=False),
    sa.Column('starts_on', sa.Date(), nullable=False),
    sa.Column('ends_on', sa.Date(), nullable=False),
    sa.Column('signed_by', sa.Integer(), nullable=False),
    sa.Column('signed_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('ended_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('ended_by', sa.Integer(), nullable=True),
    sa.Column('end_reason', sa.Text(), nullable=True),
    sa.Column('previous_id', sa.String(length=36), nullable=True),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_fd_contracts_institution_id_institutions')),
    sa.ForeignKeyConstraint(['previous_id'], ['fd_contracts.id'], name=op.f('fk_fd_contracts_previous_id_fd_contracts')),
    sa.ForeignKeyConstraint(['team_id'], ['fd_teams.id'], name=op.f('fk_fd_contracts_team_id_fd_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fd_contracts')),
    sa.UniqueConstraint('active_person_id', name=op.f('uq_fd_contracts_active_person_id'))
    )
    with op.batch_alter_table('fd_contracts', schema=None) as batch_op:
        batch_op.create_index('ix_fd_contracts_institution_status', ['institution_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_fd_contracts_master_person_id'), ['master_person_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_fd_contracts_previous_id'), ['previous_id'], unique=False)
        batch_op.create_index('ix_fd_contracts_team_status_end', ['team_id', 'status', 'ends_on'], unique=False)

    op.create_table('fd_team_areas',
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('region_code', sa.String(length=12), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['fd_teams.id'], name=op.f('fk_fd_team_areas_team_id_fd_teams'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('team_id', 'region_code', name=op.f('pk_fd_team_areas'))
    )
    op.create_table('fd_team_members',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('team_role', sa.Enum('lead_doctor', 'doctor', 'nurse', 'public_health', 'village_doctor', name='teamrole', native_enum=False, length=20), nullable=False),
    sa.Column('joined_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['fd_teams.id'], name=op.f('fk_fd_team_members_team_id_fd_teams'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_fd_team_members_user_id_users')),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_fd_team_members'))
    )
    with op.batch_alter_table('fd_team_members', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fd_team_members_team_id'), ['team_id'], unique=False)

    op.create_table('fd_vitals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('master_person_id', sa.String(length=36), nullable=False),
    sa.Column('tenant_code', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=36), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('contract_id', sa.String(length=36), nullable=True),
    sa.Column('taken_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('setting', sa.Enum('clinic', 'home_visit', 'self_device', name='setting', native_enum=False, length=12), nullable=False),
    sa.Column('self_reported', sa.Boolean(), nullable=False),
    sa.Column('systolic', sa.Float(), nullable=True),
    sa.Column('diastolic', sa.Float(), nullable=True),
    sa.Column('heart_rate', sa.Float(), nullable=True),
    sa.Column('fasting_glucose', sa.Float(), nullable=True),
    sa.Column('random_glucose', sa.Float(), nullable=True),
    sa.Column('weight', sa.Float(), nullable=True),
    sa.Column('height', sa.Float(), nullable=True),
    sa.Column('bmi', sa.Float(), nullable=True),
    sa.Column('waist', sa.Float(), nullable=True),
    sa.Column('spo2', sa.Float(), nullable=True),
    sa.Column('temperature', sa.Float(), nullable=True),
    sa.Column('observations', sa.JSON(), nullable=False),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['contract_id'], ['fd_contracts.id'], name=op.f('fk_fd_vitals_contract_id_fd_contracts')),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_fd_vitals_institution_id_institutions')),
    sa.ForeignKeyConstraint(['team_id'], ['fd_teams.id'], name=op.f('fk_fd_vitals_team_id_fd_teams')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fd_vitals')),
    sa.UniqueConstraint('user_id', 'client_id', name='uq_fd_vitals_client')
    )
    with op.batch_alter_table('fd_vitals', schema=None) as batch_op:
        batch_op.create_index('ix_fd_vitals_person_taken', ['master_person_id', 'taken_at'], unique=False)
        batch_op.create_index('ix_fd_vitals_team_taken', ['team_id', 'taken_at'], unique=False)

    op.create_table('fd_follow_ups',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('contract_id', sa.String(length=36), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=False),
    sa.Column('institution_id', sa.Integer(), nullable=False),
    sa.Column('master_person_id', sa.String(length=36), nullable=False),
    sa.Column('condition', sa.Enum('hypertension', 'diabetes', name='condition', native_enum=False, length=16), nullable=False),
    sa.Column('status', sa.Enum('scheduled', 'done', 'cancelled', name='followupstatus', native_enum=False, length=12), nullable=False),
    sa.Column('due_on', sa.Date(), nullable=False),
    sa.Column('done_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('done_by', sa.Integer(), nullable=True),
    sa.Column('face_to_face', sa.Boolean(), nullable=True),
    sa.Column('form', sa.JSON(), nullable=True),
    sa.Column('systolic', sa.Float(), nullable=True),
    sa.Column('diastolic', sa.Float(), nullable=True),
    sa.Column('fasting_glucose', sa.Float(), nullable=True),
    sa.Column('classification', sa.Enum('controlled', 'not_controlled', 'urgent', name='classification', native_enum=False, length=16), nullable=True),
    sa.Column('vitals_id', sa.Integer(), nullable=True),
    sa.Column('referral_id', sa.String(length=36), nullable=True),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['contract_id'], ['fd_contracts.id'], name=op.f('fk_fd_follow_ups_contract_id_fd_contracts')),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_fd_follow_ups_institution_id_institutions')),
    sa.ForeignKeyConstraint(['team_id'], ['fd_teams.id'], name=op.f('fk_fd_follow_ups_team_id_fd_teams')),
    sa.ForeignKeyConstraint(['vitals_id'], ['fd_vitals.id'], name=op.f('fk_fd_follow_ups_vitals_id_fd_vitals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fd_follow_ups'))
    )
    with op.batch_alter_table('fd_follow_ups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fd_follow_ups_contract_id'), ['contract_id'], unique=False)
        batch_op.create_index('ix_fd_follow_ups_person_condition', ['master_person_id', 'condition', 'done_at'], unique=False)
        batch_op.create_index('ix_fd_follow_ups_team_due', ['team_id', 'status', 'due_on'], unique=False)

    op.create_table('fd_alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('contract_id', sa.String(length=36), nullable=True),
    sa.Column('master_person_id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('message', sa.String(length=500), nullable=False),
    sa.Column('vitals_id', sa.Integer(), nullable=True),
    sa.Column('follow_up_id', sa.String(length=36), nullable=True),
    sa.Column('draft_referral', sa.JSON(), nullable=True),
    sa.Column('created_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.Column('resolved_at', hie.platform.db.UTCDateTime(), nullable=True),
    sa.Column('resolved_by', sa.Integer(), nullable=True),
    sa.Column('resolution', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['contract_id'], ['fd_contracts.id'], name=op.f('fk_fd_alerts_contract_id_fd_contracts')),
    sa.ForeignKeyConstraint(['follow_up_id'], ['fd_follow_ups.id'], name=op.f('fk_fd_alerts_follow_up_id_fd_follow_ups')),
    sa.ForeignKeyConstraint(['team_id'], ['fd_teams.id'], name=op.f('fk_fd_alerts_team_id_fd_teams')),
    sa.ForeignKeyConstraint(['vitals_id'], ['fd_vitals.id'], name=op.f('fk_fd_alerts_vitals_id_fd_vitals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fd_alerts'))
    )
    with op.batch_alter_table('fd_alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fd_alerts_master_person_id'), ['master_person_id'], unique=False)
        batch_op.create_index('ix_fd_alerts_team_open', ['team_id', 'resolved_at'], unique=False)

    op.create_table('fd_populations',
    sa.Column('region_code', sa.String(length=12), nullable=False),
    sa.Column('priority_group', sa.String(length=40), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('persons', sa.Integer(), nullable=False),
    sa.Column('loaded_at', hie.platform.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['region_code'], ['regions.code'], name=op.f('fk_fd_populations_region_code_regions')),
    sa.PrimaryKeyConstraint('region_code', 'priority_group', 'year', name=op.f('pk_fd_populations'))
    )



def downgrade() -> None:
    op.drop_table('fd_populations')
    with op.batch_alter_table('fd_alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_fd_alerts_team_open')
        batch_op.drop_index(batch_op.f('ix_fd_alerts_master_person_id'))

    op.drop_table('fd_alerts')
    with op.batch_alter_table('fd_follow_ups', schema=None) as batch_op:
        batch_op.drop_index('ix_fd_follow_ups_team_due')
        batch_op.drop_index('ix_fd_follow_ups_person_condition')
        batch_op.drop_index(batch_op.f('ix_fd_follow_ups_contract_id'))

    op.drop_table('fd_follow_ups')
    with op.batch_alter_table('fd_vitals', schema=None) as batch_op:
        batch_op.drop_index('ix_fd_vitals_team_taken')
        batch_op.drop_index('ix_fd_vitals_person_taken')

    op.drop_table('fd_vitals')
    with op.batch_alter_table('fd_team_members', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fd_team_members_team_id'))

    op.drop_table('fd_team_members')
    op.drop_table('fd_team_areas')
    with op.batch_alter_table('fd_contracts', schema=None) as batch_op:
        batch_op.drop_index('ix_fd_contracts_team_status_end')
        batch_op.drop_index(batch_op.f('ix_fd_contracts_previous_id'))
        batch_op.drop_index(batch_op.f('ix_fd_contracts_master_person_id'))
        batch_op.drop_index('ix_fd_contracts_institution_status')

    op.drop_table('fd_contracts')
    with op.batch_alter_table('fd_teams', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fd_teams_institution_id'))

    op.drop_table('fd_teams')
    with op.batch_alter_table('fd_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fd_deliveries_master_person_id'))

    op.drop_table('fd_deliveries')
    with op.batch_alter_table('fd_articles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fd_articles_tenant_id'))

    op.drop_table('fd_articles')

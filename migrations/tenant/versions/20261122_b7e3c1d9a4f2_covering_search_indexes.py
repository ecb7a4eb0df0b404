"""covering search indexes: institution_id on the patient index, resource_id on the token lookup index

Revision ID: b7e3c1d9a4f2
Revises: 6c4b0bd97074
Create Date: 2026-11-22 09:25:00.000000
"""

from alembic import op

revision = 'b7e3c1d9a4f2'
down_revision = '6c4b0bd97074'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_fhir_resources_patient', table_name='fhir_resources')
    op.create_index('ix_fhir_resources_patient', 'fhir_resources',
                    ['patient_id', 'resource_type', 'date', 'institution_id'], unique=False)
    op.drop_index('ix_fhir_tokens_lookup', table_name='fhir_tokens')
    op.create_index('ix_fhir_tokens_lookup', 'fhir_tokens', ['resource_type', 'param', 'code', 'system', 'resource_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_fhir_tokens_lookup', table_name='fhir_tokens')
    op.create_index('ix_fhir_tokens_lookup', 'fhir_tokens', ['resource_type', 'param', 'code', 'system'], unique=False)
    op.drop_index('ix_fhir_resources_patient', table_name='fhir_resources')
    op.create_index('ix_fhir_resources_patient', 'fhir_resources', ['patient_id', 'resource_type', 'date'],
                    unique=False)

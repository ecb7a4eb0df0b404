"""patient index covers last_updated: a search by patient reads its sort keys from the index alone

Revision ID: d41c8e2f6a17
Revises: b7e3c1d9a4f2
Create Date: 2026-11-22 23:40:00.000000
"""

from alembic import op

revision = 'd41c8e2f6a17'
down_revision = 'b7e3c1d9a4f2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_fhir_resources_patient', table_name='fhir_resources')
    op.create_index('ix_fhir_resources_patient', 'fhir_resources',
                    ['patient_id', 'resource_type', 'date', 'institution_id', 'last_updated'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_fhir_resources_patient', table_name='fhir_resources')
    op.create_index('ix_fhir_resources_patient', 'fhir_resources',
                    ['patient_id', 'resource_type', 'date', 'institution_id'], unique=False)

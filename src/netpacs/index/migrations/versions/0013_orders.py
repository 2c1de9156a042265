"""Orders (issue 15): HL7 ORM/OMI orders kept per trust and accession number, answered
as the Modality Worklist and updated by MPPS.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_UID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "imaging_order",
        sa.Column("id", _PK, nullable=False),
        sa.Column("trust", sa.String(), nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=False),
        sa.Column("placer_order_number", sa.String(), server_default="", nullable=False),
        sa.Column("filler_order_number", sa.String(), server_default="", nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("nhs_number", sa.String(10), nullable=True),
        sa.Column("patient_name", sa.String(), server_default="", nullable=False),
        sa.Column("patient_birth_date", sa.String(), server_default="", nullable=False),
        sa.Column("patient_sex", sa.String(), server_default="", nullable=False),
        sa.Column("study_instance_uid", _UID, nullable=False),
        sa.Column("requested_procedure_id", sa.String(16), nullable=False),
        sa.Column("scheduled_step_id", sa.String(16), nullable=False),
        sa.Column("procedure_code", sa.String(), server_default="", nullable=False),
        sa.Column("procedure_scheme", sa.String(), server_default="", nullable=False),
        sa.Column("procedure_text", sa.String(), server_default="", nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(), nullable=False),
        sa.Column("requesting_clinician", sa.String(), server_default="", nullable=False),
        sa.Column("requesting_location", sa.String(), server_default="", nullable=False),
        sa.Column("patient_class", sa.String(), server_default="", nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("scheduled_at", sa.String(14), nullable=False),
        sa.Column("scheduled_station_ae", sa.String(16), server_default="", nullable=False),
        sa.Column("mpps_uid", _UID, nullable=True),
        sa.Column("mpps_status", sa.String(), nullable=True),
        sa.Column("performed_series_json", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("last_control_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_order")),
        sa.UniqueConstraint(
            "trust", "accession_number", name=op.f("uq_imaging_order_trust_accession_number")
        ),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_imaging_order_study_instance_uid")),
        sa.UniqueConstraint("mpps_uid", name=op.f("uq_imaging_order_mpps_uid")),
    )
    op.create_index(
        op.f("ix_imaging_order_site_modality_scheduled_at"),
        "imaging_order",
        ["site", "modality", "scheduled_at"],
    )
    op.create_index(
        op.f("ix_imaging_order_status_scheduled_at"), "imaging_order", ["status", "scheduled_at"]
    )


def downgrade() -> None:
    op.drop_table("imaging_order")

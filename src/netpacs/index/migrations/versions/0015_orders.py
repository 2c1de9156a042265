"""Orders (issue 15): HL7 ORM/OMI orders kept per trust and accession number, answered
as the Modality Worklist and updated by MPPS.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
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
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("last_control_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_order")),
        sa.UniqueConstraint(
            "trust", "accession_number", name=op.f("uq_imaging_order_trust_accession_number")
        ),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_imaging_order_study_instance_uid")),
    )
    op.create_index(
        op.f("ix_imaging_order_site_modality_scheduled_at"),
        "imaging_order",
        ["site", "modality", "scheduled_at"],
    )
    op.create_index(
        op.f("ix_imaging_order_status_scheduled_at"), "imaging_order", ["status", "scheduled_at"]
    )

    op.create_table(
        "performed_step",
        sa.Column("id", _PK, nullable=False),
        sa.Column("sop_instance_uid", _UID, nullable=False),
        sa.Column("trust", sa.String(), nullable=False),
        sa.Column("performed_station_ae", sa.String(16), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("order_fk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("study_instance_uid", _UID, server_default="", nullable=False),
        sa.Column("accession_number", sa.String(16), server_default="", nullable=False),
        sa.Column("modality", sa.String(16), server_default="", nullable=False),
        sa.Column("performed_series_json", sa.Text(), server_default="[]", nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["order_fk"],
            ["imaging_order.id"],
            name=op.f("fk_performed_step_order_fk_imaging_order"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_performed_step")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_performed_step_sop_instance_uid")),
    )
    op.create_index(op.f("ix_performed_step_order_fk"), "performed_step", ["order_fk"])
    op.create_index(
        op.f("ix_performed_step_study_instance_uid"), "performed_step", ["study_instance_uid"]
    )


def downgrade() -> None:
    op.drop_table("performed_step")
    op.drop_table("imaging_order")

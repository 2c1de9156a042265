"""HL7 ADT: message control ids and their ACKs, ADT identities, patient merge history.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "hl7_message",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sending_application", sa.String(), nullable=False),
        sa.Column("sending_facility", sa.String(), nullable=False),
        sa.Column("message_control_id", sa.String(), nullable=False),
        sa.Column("message_type", sa.String(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("ack_text", sa.Text(), nullable=False),
        sa.Column("ack_message", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_message")),
        sa.UniqueConstraint(
            "sending_application",
            "sending_facility",
            "message_control_id",
            name="uq_hl7_message_sender_control_id",
        ),
    )

    op.create_table(
        "adt_identity",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("patient_name", sa.String(), server_default="", nullable=False),
        sa.Column("patient_birth_date", sa.String(), server_default="", nullable=False),
        sa.Column("patient_sex", sa.String(), server_default="", nullable=False),
        sa.Column("nhs_number", sa.String(), nullable=True),
        sa.Column("nhs_number_problem", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_control_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adt_identity")),
        sa.UniqueConstraint("patient_id", "issuer", name=op.f("uq_adt_identity_patient_id_issuer")),
    )
    with op.batch_alter_table("adt_identity", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_adt_identity_nhs_number"), ["nhs_number"], unique=False
        )

    op.create_table(
        "patient_merge",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("prior_patient_id", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("prior_patient_fk", sa.BigInteger(), nullable=False),
        sa.Column("patient_fk", sa.BigInteger(), nullable=False),
        sa.Column("message_control_id", sa.String(), nullable=False),
        sa.Column("snapshot_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_merge")),
    )
    with op.batch_alter_table("patient_merge", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patient_merge_patient_fk"), ["patient_fk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_patient_merge_prior_patient_fk"), ["prior_patient_fk"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("patient_merge", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_merge_prior_patient_fk"))
        batch_op.drop_index(batch_op.f("ix_patient_merge_patient_fk"))

    op.drop_table("patient_merge")
    with op.batch_alter_table("adt_identity", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adt_identity_nhs_number"))

    op.drop_table("adt_identity")
    op.drop_table("hl7_message")

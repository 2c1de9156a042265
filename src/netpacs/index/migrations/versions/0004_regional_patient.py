"""Regional patient record: the NHS number that links a local identity; reconciliation.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.add_column(sa.Column("nhs_number", sa.String(length=10), nullable=True))
        batch_op.create_index(batch_op.f("ix_patient_nhs_number"), ["nhs_number"], unique=False)

    op.create_table(
        "reconciliation",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("nhs_number", sa.String(), nullable=True),
        sa.Column("other_patient_id", sa.String(), nullable=True),
        sa.Column("other_issuer", sa.String(), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("dedup_key", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolution", sa.String(), nullable=True),
        sa.Column("resolution_note", sa.Text(), nullable=True),
        sa.Column("resolved_by", sa.String(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("merge_fk", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_reconciliation_dedup_key")),
    )
    with op.batch_alter_table("reconciliation", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reconciliation_status_created_at"), ["status", "created_at"]
        )
        batch_op.create_index(
            batch_op.f("ix_reconciliation_patient_id_issuer"), ["patient_id", "issuer"]
        )


def downgrade() -> None:
    with op.batch_alter_table("reconciliation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reconciliation_patient_id_issuer"))
        batch_op.drop_index(batch_op.f("ix_reconciliation_status_created_at"))
    op.drop_table("reconciliation")
    with op.batch_alter_table("patient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_nhs_number"))
        batch_op.drop_column("nhs_number")

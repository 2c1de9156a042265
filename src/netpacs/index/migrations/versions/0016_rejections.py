"""IHE IOCM rejection notes (issue 15): the rejections received and the index rows
they took out of ``instance`` (services/rejection.py). Additive only.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "rejection",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("note_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("code_value", sa.String(16), nullable=False),
        sa.Column("code_meaning", sa.String(), nullable=False, server_default=""),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, server_default=""),
        sa.Column("patient_id", sa.String(), nullable=False, server_default=""),
        sa.Column("issuer", sa.String(), nullable=False, server_default=""),
        sa.Column("sender", sa.String(), nullable=False, server_default=""),
        sa.Column("sender_trust", sa.String(), nullable=True),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("referenced", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("undone_at", _TS, nullable=True),
        sa.Column("undone_by", sa.String(), nullable=True),
        sa.Column("purged_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rejection"),
        sa.UniqueConstraint("note_sop_instance_uid", name="uq_rejection_note_sop_instance_uid"),
    )
    op.create_index("ix_rejection_received_at", "rejection", ["received_at"])
    op.create_table(
        "rejected_instance",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("rejection_fk", _ID, nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(), nullable=False),
        sa.Column("is_note", sa.Boolean(), nullable=False),
        sa.Column("instance_row", sa.Text(), nullable=False),
        sa.Column("series_row", sa.Text(), nullable=False),
        sa.Column("study_row", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_instance"),
        sa.ForeignKeyConstraint(
            ["rejection_fk"], ["rejection.id"], name="fk_rejected_instance_rejection_fk_rejection"
        ),
        sa.UniqueConstraint("sop_instance_uid", name="uq_rejected_instance_sop_instance_uid"),
        sa.UniqueConstraint("blob_key", name="uq_rejected_instance_blob_key"),
    )
    op.create_index("ix_rejected_instance_rejection_fk", "rejected_instance", ["rejection_fk"])


def downgrade() -> None:
    op.drop_table("rejected_instance")
    op.drop_table("rejection")

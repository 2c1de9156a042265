"""Store audits survive their process: the tally of each running store batch.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_tally",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("batch", sa.String(32), nullable=False),
        sa.Column("study_instance_uid", sa.String(), nullable=False),
        sa.Column("actor_json", sa.Text(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("patients_json", sa.Text(), nullable=False),
        sa.Column("stored", sa.Integer(), nullable=False),
        sa.Column("refused_json", sa.Text(), nullable=False),
        sa.Column("touched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_tally")),
        sa.UniqueConstraint(
            "batch", "study_instance_uid", name=op.f("uq_store_tally_batch_study_instance_uid")
        ),
    )
    op.create_index(op.f("ix_store_tally_touched_at"), "store_tally", ["touched_at"])


def downgrade() -> None:
    op.drop_table("store_tally")

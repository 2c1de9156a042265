"""MPPS at an edge node (issues 13 and 15): the N-CREATE and N-SET messages it accepted,
waiting to reach the core in order (services/edge/mpps.py). Additive only.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "edge_mpps_outbox",
        sa.Column("id", _ID, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(8), nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("values_json", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_edge_mpps_outbox"),
    )


def downgrade() -> None:
    op.drop_table("edge_mpps_outbox")

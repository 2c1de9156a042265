"""Edge node (issue 13, edge-fwd): the link state, the forward queue, the core's record
of its edge nodes.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "edge_link",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("down_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_contact", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edge_link")),
    )
    op.create_table(
        "edge_forward",
        sa.Column("id", _ID, nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("forwarded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("how", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edge_forward")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_edge_forward_sop_instance_uid")),
    )
    op.create_index(
        op.f("ix_edge_forward_study_instance_uid"), "edge_forward", ["study_instance_uid"]
    )
    op.create_index(
        op.f("ix_edge_forward_forwarded_at_enqueued_at"),
        "edge_forward",
        ["forwarded_at", "enqueued_at"],
    )
    op.create_table(
        "edge_node_status",
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("last_contact", sa.DateTime(timezone=True), nullable=False),
        sa.Column("address", sa.String(), nullable=True),
        sa.Column("report_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_edge_node_status")),
    )


def downgrade() -> None:
    op.drop_table("edge_node_status")
    op.drop_table("edge_forward")
    op.drop_table("edge_link")

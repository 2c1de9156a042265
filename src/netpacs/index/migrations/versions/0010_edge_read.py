"""Edge read-through: sign-in confirmed by the core, audit records sent to the core.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edge_signin",
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("username", name=op.f("pk_edge_signin")),
    )
    op.create_table(
        "edge_audit_mark",
        sa.Column("sender", sa.String(100), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sender", name=op.f("pk_edge_audit_mark")),
    )


def downgrade() -> None:
    op.drop_table("edge_audit_mark")
    op.drop_table("edge_signin")

"""Federation, inbound (issue 14): the studies a partner network found, per access token.

Additive only (a new table).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partner_found",
        sa.Column("session", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session", "study_instance_uid", name=op.f("pk_partner_found")),
    )
    op.create_index(op.f("ix_partner_found_expires_at"), "partner_found", ["expires_at"])


def downgrade() -> None:
    op.drop_table("partner_found")

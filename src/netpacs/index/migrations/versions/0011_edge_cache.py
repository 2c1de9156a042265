"""Edge prefetch and catch-up (issue 13): the change feed a cache follows, an edge's
prefetch requests, its cache bookkeeping and cursors.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "change_feed",
        sa.Column("id", _ID, nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False, server_default=""),
        sa.Column("issuer", sa.String(), nullable=False, server_default=""),
        sa.Column("nhs_number", sa.String(), nullable=True),
        sa.Column("prior_patient_id", sa.String(), nullable=True),
        sa.Column("study_uids", sa.Text(), nullable=False, server_default=""),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_feed")),
    )
    op.create_index(op.f("ix_change_feed_at"), "change_feed", ["at"])
    op.create_table(
        "edge_prefetch",
        sa.Column("id", _ID, nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("nhs_number", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_at", _TS, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started_at", _TS, nullable=True),
        sa.Column("finished_at", _TS, nullable=True),
        sa.Column("studies_found", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("studies_cached", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("instances_fetched", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("bytes_fetched", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edge_prefetch")),
        sa.UniqueConstraint(
            "patient_id", "issuer", name=op.f("uq_edge_prefetch_patient_id_issuer")
        ),
    )
    op.create_index(
        op.f("ix_edge_prefetch_status_next_attempt_at"),
        "edge_prefetch",
        ["status", "next_attempt_at"],
    )
    op.create_table(
        "edge_cached_study",
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("prefetched_at", _TS, nullable=True),
        sa.Column("last_access_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("study_instance_uid", name=op.f("pk_edge_cached_study")),
    )
    op.create_index(
        op.f("ix_edge_cached_study_last_access_at"), "edge_cached_study", ["last_access_at"]
    )
    op.create_table(
        "edge_cursor",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_edge_cursor")),
    )


def downgrade() -> None:
    op.drop_table("edge_cursor")
    op.drop_table("edge_cached_study")
    op.drop_table("edge_prefetch")
    op.drop_table("change_feed")

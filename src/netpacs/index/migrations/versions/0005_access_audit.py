"""Access and audit: user accounts, break-glass grants, audit events (IHE ATNA).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "user_account",
        sa.Column("id", _PK, nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("password_hash", sa.String(), nullable=True),
        sa.Column("trust", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("display_name", sa.String(), server_default="", nullable=False),
        sa.Column("demo", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_account")),
        sa.UniqueConstraint("username", name=op.f("uq_user_account_username")),
    )
    op.create_table(
        "break_glass",
        sa.Column("id", _PK, nullable=False),
        sa.Column("username", sa.String(), nullable=False),
        sa.Column("trust", sa.String(), nullable=False),
        sa.Column("patient_id", sa.String(), nullable=False),
        sa.Column("issuer", sa.String(), nullable=False),
        sa.Column("nhs_number", sa.String(length=10), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_break_glass")),
    )
    op.create_index(
        op.f("ix_break_glass_username_expires_at"), "break_glass", ["username", "expires_at"]
    )
    op.create_table(
        "audit_event",
        sa.Column("id", _PK, nullable=False),
        sa.Column("event_time", _TS, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=True),
        sa.Column("action", sa.String(length=1), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("trust", sa.String(), nullable=True),
        sa.Column("role", sa.String(), nullable=True),
        sa.Column("purpose_of_use", sa.String(), nullable=True),
        sa.Column("source", sa.String(), nullable=True),
        sa.Column("patient_id", sa.String(), nullable=True),
        sa.Column("issuer", sa.String(), nullable=True),
        sa.Column("study_uids", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.Column("message_xml", sa.Text(), nullable=False),
        sa.Column("forwarded_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_event")),
    )
    op.create_index(
        op.f("ix_audit_event_patient_id_issuer"), "audit_event", ["patient_id", "issuer"]
    )
    op.create_index(op.f("ix_audit_event_event_time"), "audit_event", ["event_time"])
    op.create_index(op.f("ix_audit_event_trust_event_time"), "audit_event", ["trust", "event_time"])
    op.create_index(op.f("ix_audit_event_forwarded_at_id"), "audit_event", ["forwarded_at", "id"])


def downgrade() -> None:
    op.drop_table("audit_event")
    op.drop_table("break_glass")
    op.drop_table("user_account")

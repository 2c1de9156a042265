"""Networked reporting: worklist items, reports and their history, the ORU outbox; and
the index epoch that tells index writers their cached ids may be stale.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_UID = sa.String(64)


def upgrade() -> None:
    epoch = op.create_table(
        "index_epoch",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_index_epoch")),
    )
    op.bulk_insert(epoch, [{"id": 1, "epoch": 0}])
    op.create_table(
        "worklist_item",
        sa.Column("id", _PK, nullable=False),
        sa.Column("study_instance_uid", _UID, nullable=False),
        sa.Column("requesting_trust", sa.String(), nullable=False),
        sa.Column("requesting_site", sa.String(), nullable=True),
        sa.Column("modality", sa.String(), server_default="", nullable=False),
        sa.Column("body_part", sa.String(), server_default="", nullable=False),
        sa.Column("study_description", sa.String(), server_default="", nullable=False),
        sa.Column("subspecialty", sa.String(), nullable=False),
        sa.Column("priority", sa.String(), nullable=False),
        sa.Column("arrived_at", _TS, nullable=False),
        sa.Column("due_at", _TS, nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("claimed_by_name", sa.String(), nullable=True),
        sa.Column("claimed_by_trust", sa.String(), nullable=True),
        sa.Column("claimed_at", _TS, nullable=True),
        sa.Column("claim_expires_at", _TS, nullable=True),
        sa.Column("reported_at", _TS, nullable=True),
        sa.Column("reported_by", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worklist_item")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_worklist_item_study_instance_uid")),
    )
    op.create_index(op.f("ix_worklist_item_status_due_at"), "worklist_item", ["status", "due_at"])
    op.create_index(
        op.f("ix_worklist_item_requesting_trust_status"),
        "worklist_item",
        ["requesting_trust", "status"],
    )
    op.create_table(
        "report",
        sa.Column("id", _PK, nullable=False),
        sa.Column("study_instance_uid", _UID, nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("template", sa.String(), nullable=True),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("author_name", sa.String(), server_default="", nullable=False),
        sa.Column("author_trust", sa.String(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("preliminary_at", _TS, nullable=True),
        sa.Column("signed_at", _TS, nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("second_opinion_requested_by", sa.String(), nullable=True),
        sa.Column("second_opinion_reason", sa.Text(), nullable=True),
        sa.Column("discrepancy", sa.Text(), nullable=True),
        sa.Column("discrepancy_by", sa.String(), nullable=True),
        sa.Column("sr_sop_instance_uid", _UID, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_report_study_instance_uid")),
    )
    op.create_table(
        "report_event",
        sa.Column("id", _PK, nullable=False),
        sa.Column("report_fk", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("author_name", sa.String(), server_default="", nullable=False),
        sa.Column("author_trust", sa.String(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["report_fk"], ["report.id"], name=op.f("fk_report_event_report_fk_report")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_event")),
    )
    op.create_index(op.f("ix_report_event_report_fk"), "report_event", ["report_fk"])
    op.create_table(
        "result_outbox",
        sa.Column("id", _PK, nullable=False),
        sa.Column("trust", sa.String(), nullable=False),
        sa.Column("study_instance_uid", _UID, nullable=False),
        sa.Column("report_event_fk", sa.BigInteger(), nullable=False),
        sa.Column("control_id", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["report_event_fk"],
            ["report_event.id"],
            name=op.f("fk_result_outbox_report_event_fk_report_event"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_outbox")),
        sa.UniqueConstraint("control_id", name=op.f("uq_result_outbox_control_id")),
    )
    op.create_index(
        op.f("ix_result_outbox_sent_at_trust_id"), "result_outbox", ["sent_at", "trust", "id"]
    )


def downgrade() -> None:
    op.drop_table("result_outbox")
    op.drop_table("report_event")
    op.drop_table("report")
    op.drop_table("worklist_item")
    op.drop_table("index_epoch")

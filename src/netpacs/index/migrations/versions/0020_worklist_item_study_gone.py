"""Whether a worklist item's study is out of the index, on the item itself (issue 16).

The worklist counts a reporter's open items per requesting trust and priority. An item
whose study row has gone (a rejection hides the whole study, an edge node evicts it)
is neither listed nor counted, so the counts looked every open item up in the study
index: 29 ms at 8,082 open items and three million instances, most of a worklist
page's time in the database, and growing with the backlog and the archive. With
``study_gone`` on the item, the counts read one index of the open items alone.

``study_gone`` is kept by the database itself, as 0018 keeps ``study.patient_name``,
so that no writer (this release's, the one before during a rolling upgrade, a
rejection, its undo, an eviction, a reindex) can leave it behind: deleting a study
row marks its item gone, inserting one marks it back, changing a study's UID moves the
mark. A new item starts with its study present: every path that makes an item reads
its study in the same transaction (services.reporting.worklist). The existing items
whose study has gone are marked here, one statement that reads the worklist and
writes only those. PostgreSQL gets an index of the open items whose study is present,
in the counts' grouping (with the subspecialty that reporting agreements filter on);
SQLite plans before it sees the statuses, would not use a partial index, and gets
none. Additive only.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

_OPEN = "'unreported', 'draft', 'preliminary'"
# The column starts false: only the items whose study has gone are written.
_MARK = """
    UPDATE worklist_item SET study_gone = true WHERE NOT EXISTS (
        SELECT 1 FROM study WHERE study.study_instance_uid = worklist_item.study_instance_uid
    )
"""
_POSTGRESQL = [
    """
    CREATE FUNCTION netpacs_worklist_item_study_gone() RETURNS trigger AS $$
    BEGIN
        IF TG_OP IN ('DELETE', 'UPDATE') THEN
            UPDATE worklist_item SET study_gone = true
            WHERE study_instance_uid = OLD.study_instance_uid AND NOT study_gone;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            UPDATE worklist_item SET study_gone = false
            WHERE study_instance_uid = NEW.study_instance_uid AND study_gone;
        END IF;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER worklist_item_study_gone
    AFTER INSERT OR DELETE OR UPDATE OF study_instance_uid ON study
    FOR EACH ROW EXECUTE FUNCTION netpacs_worklist_item_study_gone()
    """,
    _MARK,
    "CREATE INDEX IF NOT EXISTS ix_worklist_item_open_counts ON worklist_item "
    f"(requesting_trust, priority, subspecialty) WHERE status IN ({_OPEN}) AND NOT study_gone",
]
_SQLITE = [
    """
    CREATE TRIGGER worklist_item_study_deleted AFTER DELETE ON study FOR EACH ROW
    BEGIN
        UPDATE worklist_item SET study_gone = 1
        WHERE study_instance_uid = OLD.study_instance_uid AND NOT study_gone;
    END
    """,
    """
    CREATE TRIGGER worklist_item_study_inserted AFTER INSERT ON study FOR EACH ROW
    BEGIN
        UPDATE worklist_item SET study_gone = 0
        WHERE study_instance_uid = NEW.study_instance_uid AND study_gone;
    END
    """,
    """
    CREATE TRIGGER worklist_item_study_moved AFTER UPDATE OF study_instance_uid ON study
    FOR EACH ROW BEGIN
        UPDATE worklist_item SET study_gone = 1
        WHERE study_instance_uid = OLD.study_instance_uid AND NOT study_gone;
        UPDATE worklist_item SET study_gone = 0
        WHERE study_instance_uid = NEW.study_instance_uid AND study_gone;
    END
    """,
    _MARK,
]
_SQLITE_TRIGGERS = (
    "worklist_item_study_deleted",
    "worklist_item_study_inserted",
    "worklist_item_study_moved",
)


def upgrade() -> None:
    op.add_column(
        "worklist_item",
        sa.Column("study_gone", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    for statement in _POSTGRESQL if dialect == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS worklist_item_study_gone ON study")
        op.execute("DROP FUNCTION IF EXISTS netpacs_worklist_item_study_gone()")
        op.execute("DROP INDEX IF EXISTS ix_worklist_item_open_counts")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    with op.batch_alter_table("worklist_item") as batch_op:
        batch_op.drop_column("study_gone")

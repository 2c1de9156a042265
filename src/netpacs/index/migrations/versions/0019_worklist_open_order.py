"""An index in the order a reporter's worklist lists its open items (issue 16).

The worklist shows the open items by priority, then time to breach, then arrival: the
first 500 of them. Without an index in that order PostgreSQL read and sorted every open
item for each page (29 ms at 8,082 open items, three million instances); with this one
it reads the first 500 in order and stops (under a millisecond).

The expression is the worklist's ORDER BY (``services.reporting.worklist.open_order``):
the priorities' ranks in ``Priority``'s order, 99 for any other; a change there needs a
migration that makes this index again. PostgreSQL matches it because a one-off
statement is planned with its parameters' values. SQLite plans a statement before its
parameters are bound, so it would not use the index: it gets none. Additive only.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_RANKS = ("emergency", "inpatient", "cancer-2ww", "outpatient", "gp")
_RANK = " ".join(f"WHEN '{p}' THEN {i}" for i, p in enumerate(_RANKS))
_OPEN = "'unreported', 'draft', 'preliminary'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_worklist_item_open_order ON worklist_item "
        f"((CASE priority {_RANK} ELSE 99 END), due_at, id) WHERE status IN ({_OPEN})"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_worklist_item_open_order")

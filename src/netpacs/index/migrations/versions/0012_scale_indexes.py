"""Indexes for the region's scale (issue 16): an entity's lowest instance from an index.

Additive only (docs/operations.md, rolling upgrade). ``IF NOT EXISTS``: on a large
PostgreSQL index, where a plain CREATE INDEX holds back writes while it builds, an
operator builds it beforehand with ``CREATE INDEX CONCURRENTLY`` under the same name and
this migration then finds it there.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_INDEXES = {
    # C-FIND / QIDO-RS answer keys kept only in the header from the lowest instance of
    # each study or series (PS3.4 C.4.1.1.3.2): min(id) per series from this index.
    "ix_instance_series_fk_id": "instance (series_fk, id)",
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {columns}")


def downgrade() -> None:
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")

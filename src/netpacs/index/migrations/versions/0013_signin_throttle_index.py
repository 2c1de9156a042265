"""An index for the sign-in throttle: a user's failed sign-ins within the window.

Without it the throttle (services.accounts) reads every audit event of the window, and
at the region's scale every query is audited. Additive only; ``IF NOT EXISTS`` as in
0012, so that an operator may build it beforehand with ``CREATE INDEX CONCURRENTLY``.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_INDEXES = {"ix_audit_event_user_id_event_time": "audit_event (user_id, event_time)"}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {columns}")


def downgrade() -> None:
    for name in _INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")

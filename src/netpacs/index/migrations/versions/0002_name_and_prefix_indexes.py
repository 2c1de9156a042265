"""Case-insensitive person name and prefix-match indexes for C-FIND and QIDO-RS.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SQLITE = [
    "CREATE INDEX ix_patient_patient_name_nocase ON patient (patient_name COLLATE NOCASE)",
    "CREATE INDEX ix_study_referring_physician_name_nocase "
    "ON study (referring_physician_name COLLATE NOCASE)",
]
# The C.UTF-8 collation cannot serve LIKE 'prefix%' from a plain B-tree: pattern ops can.
_POSTGRESQL = [
    "CREATE INDEX ix_patient_patient_name_lower ON patient (lower(patient_name) text_pattern_ops)",
    "CREATE INDEX ix_study_referring_physician_name_lower "
    "ON study (lower(referring_physician_name) text_pattern_ops)",
    "CREATE INDEX ix_study_accession_number_pattern "
    "ON study (accession_number varchar_pattern_ops)",
    "CREATE INDEX ix_patient_patient_id_pattern ON patient (patient_id varchar_pattern_ops)",
]
_NAMES = {
    "sqlite": ["ix_patient_patient_name_nocase", "ix_study_referring_physician_name_nocase"],
    "postgresql": [
        "ix_patient_patient_name_lower",
        "ix_study_referring_physician_name_lower",
        "ix_study_accession_number_pattern",
        "ix_patient_patient_id_pattern",
    ],
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in _POSTGRESQL if dialect == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in _NAMES["postgresql" if dialect == "postgresql" else "sqlite"]:
        op.execute(f"DROP INDEX IF EXISTS {name}")

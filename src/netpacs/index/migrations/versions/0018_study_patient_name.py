"""The patient's name on the study row, for a name-and-date search that reads one index
(issue 16).

A QIDO-RS or C-FIND search by name prefix and study date used to find every patient
whose name starts with the prefix, then each one's studies: work that grows with the
archive (1.5-5.9 ms at a million instances, ten times the figure at a hundred thousand).
With the name beside the date on the study row, one index range (name prefix, then the
date within it) answers.

``study.patient_name`` is kept equal to its patient's ``patient_name`` by the database
itself, so that no writer (this release's, the previous release's during a rolling
upgrade, an ADT update, a merge that moves studies) can leave it behind: a study row
takes its patient's name when it is inserted or moved to another patient, and a
patient's new name is written to its studies. The existing rows are filled here, one
UPDATE of every study row, which holds back writes to the study table while it runs
(its time on a large archive was not measured). Additive only.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

_POSTGRESQL = [
    """
    CREATE FUNCTION netpacs_study_patient_name() RETURNS trigger AS $$
    BEGIN
        SELECT patient_name INTO NEW.patient_name FROM patient WHERE id = NEW.patient_fk;
        RETURN NEW;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER study_patient_name BEFORE INSERT OR UPDATE OF patient_fk, patient_name
    ON study FOR EACH ROW EXECUTE FUNCTION netpacs_study_patient_name()
    """,
    """
    CREATE FUNCTION netpacs_patient_name_to_studies() RETURNS trigger AS $$
    BEGIN
        UPDATE study SET patient_name = NEW.patient_name WHERE patient_fk = NEW.id;
        RETURN NULL;
    END $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER patient_name_to_studies AFTER UPDATE OF patient_name ON patient
    FOR EACH ROW WHEN (OLD.patient_name IS DISTINCT FROM NEW.patient_name)
    EXECUTE FUNCTION netpacs_patient_name_to_studies()
    """,
    """
    UPDATE study SET patient_name = patient.patient_name
    FROM patient WHERE patient.id = study.patient_fk AND patient.patient_name != ''
    """,
    # As ix_patient_patient_name_lower (0002): LIKE 'prefix%' needs the pattern ops.
    "CREATE INDEX IF NOT EXISTS ix_study_patient_name_date "
    "ON study (lower(patient_name) text_pattern_ops, study_date)",
]
# SQLite's triggers cannot set NEW: the row is corrected right after it is written.
_SQLITE = [
    """
    CREATE TRIGGER study_patient_name_insert AFTER INSERT ON study FOR EACH ROW
    BEGIN
        UPDATE study SET patient_name =
            (SELECT patient_name FROM patient WHERE id = NEW.patient_fk)
        WHERE id = NEW.id;
    END
    """,
    """
    CREATE TRIGGER study_patient_name_update AFTER UPDATE OF patient_fk, patient_name ON study
    FOR EACH ROW WHEN NEW.patient_name IS NOT
        (SELECT patient_name FROM patient WHERE id = NEW.patient_fk)
    BEGIN
        UPDATE study SET patient_name =
            (SELECT patient_name FROM patient WHERE id = NEW.patient_fk)
        WHERE id = NEW.id;
    END
    """,
    """
    CREATE TRIGGER patient_name_to_studies AFTER UPDATE OF patient_name ON patient
    FOR EACH ROW WHEN OLD.patient_name IS NOT NEW.patient_name
    BEGIN
        UPDATE study SET patient_name = NEW.patient_name WHERE patient_fk = NEW.id;
    END
    """,
    """
    UPDATE study SET patient_name =
        (SELECT patient_name FROM patient WHERE patient.id = study.patient_fk)
    """,
    # As ix_patient_patient_name_nocase (0002): SQLite's LIKE folds ASCII case.
    "CREATE INDEX IF NOT EXISTS ix_study_patient_name_date "
    "ON study (patient_name COLLATE NOCASE, study_date)",
]


def upgrade() -> None:
    op.add_column(
        "study", sa.Column("patient_name", sa.String(), server_default="", nullable=False)
    )
    dialect = op.get_bind().dialect.name
    for statement in _POSTGRESQL if dialect == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS study_patient_name ON study")
        op.execute("DROP TRIGGER IF EXISTS patient_name_to_studies ON patient")
        op.execute("DROP FUNCTION IF EXISTS netpacs_study_patient_name()")
        op.execute("DROP FUNCTION IF EXISTS netpacs_patient_name_to_studies()")
    else:
        for name in ("study_patient_name_insert", "study_patient_name_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TRIGGER IF EXISTS patient_name_to_studies")
    op.execute("DROP INDEX IF EXISTS ix_study_patient_name_date")
    with op.batch_alter_table("study") as batch_op:
        batch_op.drop_column("patient_name")

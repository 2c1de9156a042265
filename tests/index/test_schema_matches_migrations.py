"""The tables the code is written against (index/schema.py) are the tables the migrations
make: an empty database upgraded to the newest migration, compared with alembic's
autogenerate (tables, columns, nullability, types, server defaults on PostgreSQL,
indexes, unique constraints, foreign keys), on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from netpacs.index.db import migrate
from netpacs.index.schema import metadata

# Indexes only migrations 0002, 0018, 0019, 0020 and 0021 make, by design: each
# dialect's own way to serve case-insensitive name matching and LIKE 'prefix%' (COLLATE
# NOCASE on SQLite, lower() and pattern operator classes on PostgreSQL), which schema.py
# does not declare, and PostgreSQL's partial indexes of the open worklist items (in the
# worklist's order, in its counts' grouping: SQLite would use neither).
MIGRATION_ONLY_INDEXES = {
    "sqlite": {
        "ix_patient_patient_name_nocase",
        "ix_study_referring_physician_name_nocase",
        "ix_study_patient_name_date",
    },
    "postgresql": {
        "ix_patient_patient_name_lower",
        "ix_study_patient_name_date",
        "ix_study_date_patient_name",
        "ix_study_referring_physician_name_lower",
        "ix_study_accession_number_pattern",
        "ix_patient_patient_id_pattern",
        "ix_worklist_item_open_order",
        "ix_worklist_item_open_counts",
    },
}


def sqlite_affinity(type_name: str) -> str:
    """The type affinity SQLite gives a declared type (datatype3.html, 3.1): what it
    stores; BIGINT and INTEGER are the same column to it."""
    name = type_name.upper()
    if "INT" in name:
        return "INTEGER"
    if any(word in name for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in name or not name:
        return "BLOB"
    if any(word in name for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def types_differ(
    context: MigrationContext,
    _inspected_column: Any,
    _metadata_column: Any,
    inspected_type: sa.types.TypeEngine[Any],
    metadata_type: sa.types.TypeEngine[Any],
) -> bool | None:
    """On SQLite, by affinity; elsewhere alembic's own comparison (None)."""
    if context.dialect.name != "sqlite":
        return None
    return sqlite_affinity(inspected_type.compile(dialect=context.dialect)) != sqlite_affinity(
        metadata_type.compile(dialect=context.dialect)
    )


def defaults_differ(context: MigrationContext, *_args: Any) -> bool | None:
    """On PostgreSQL, alembic's own comparison (None). SQLite hands back a default as
    the text of its declaration (``''`` for ``''``), which alembic does not compare
    reliably: not compared there."""
    return None if context.dialect.name == "postgresql" else False


def differences(url: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"compare_type": types_differ, "compare_server_default": defaults_differ},
            )
            found = compare_metadata(context, metadata)
            dialect = conn.dialect.name
    finally:
        engine.dispose()
    return [
        diff
        for diff in found
        if not (
            isinstance(diff, tuple)
            and diff[0] == "remove_index"
            and diff[1].name in MIGRATION_ONLY_INDEXES[dialect]
        )
    ]


def test_an_empty_database_upgraded_to_the_newest_migration_has_the_schema_of_the_code(
    database_url: str,
) -> None:
    migrate(database_url)
    assert differences(database_url) == []


def test_the_comparison_sees_a_column_the_migrations_did_not_make(database_url: str) -> None:
    migrate(database_url)
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE study DROP COLUMN origin_site")
    finally:
        engine.dispose()
    (diff,) = differences(database_url)
    assert (diff[0], diff[2], diff[3].name) == ("add_column", "study", "origin_site")

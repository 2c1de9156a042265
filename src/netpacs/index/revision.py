"""The schema revision: the code's newest migration, the index's own, and a write probe
of the index that reads the database's revision (for ``GET /readyz``).

The code's revisions are read from the migration files' names (each file is named by
its revision, ``0018_study_patient_name.py`` is revision ``0018``), not through
Alembic's script directory: every ``netpacs`` process asks at its start, and importing
Alembic and reading its scripts took a tenth of a second or more there.
``tests/index/test_revisions.py`` holds the two views equal."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sqlalchemy as sa

MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True, slots=True)
class Revisions:
    """The migrations this code knows: ``head`` and every revision up to it."""

    head: str
    known: frozenset[str]


class UnknownSchema(RuntimeError):
    """The database holds a schema revision that no netpacs release made."""


def newer_revision(revision: str, head: str) -> bool:
    """Whether ``revision`` (unknown to this code) is a later release's: revisions are
    numbered, ``0022`` or ``0022_something`` after ``0021``."""
    number = revision.split("_", 1)[0]
    return number.isdigit() and head.isdigit() and int(number) > int(head)


@cache
def code_revisions() -> Revisions:
    names = sorted(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))
    assert names, "the index has no migrations"
    return Revisions(names[-1], frozenset(names))


def stored_revision(engine: sa.Engine) -> str | None:
    """The index's schema revision (None: no schema yet, or the database unreadable)."""
    try:
        with engine.connect() as conn:
            found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except sa.exc.DBAPIError:
        return None
    return None if found is None else str(found)


def write_probe(engine: sa.Engine, *, timeout: float) -> str | None:
    """Prove the index takes a write, and return its schema revision (None: none).

    Updates the ``alembic_version`` row to itself in a transaction that is rolled
    back: a read-only standby, a full disk or a lost lock refuses it, and no row
    changes. On PostgreSQL the statement and its lock wait are bounded by ``timeout``.
    """
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            if conn.dialect.name == "postgresql":
                ms = max(1, int(timeout * 1000))
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
            revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        finally:
            tx.rollback()
    return None if revision is None else str(revision)

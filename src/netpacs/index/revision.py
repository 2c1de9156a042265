"""The schema revision: the code's newest migration, and a write probe of the index that
reads the database's revision (for ``GET /readyz``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from netpacs.index.db import alembic_config


@dataclass(frozen=True, slots=True)
class Revisions:
    """The migrations this code knows: ``head`` and every revision up to it."""

    head: str
    known: frozenset[str]


@cache
def code_revisions() -> Revisions:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None, "the index has no migrations"
    return Revisions(head, frozenset(r.revision for r in script.walk_revisions()))


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

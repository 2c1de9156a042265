"""Engines for the index: SQLite (WAL, embedded default) or PostgreSQL (production).

Two engines per process: a writer (SQLite: ``BEGIN IMMEDIATE`` so that a writer never
fails on lock upgrade) and a reader (deferred transactions; WAL lets readers run
beside the writer).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x6E65_7470_6163_7301  # "netpacs" + 1: one migration at a time


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, *, writer: bool = False, pool_size: int = 8) -> sa.Engine:
    """An engine for the index at ``url``; ``writer`` selects the SQLite write mode;
    ``pool_size`` connections are kept (and as many again opened under load)."""
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        path = path.split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            owner_only(Path(path))
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 60}, pool_size=pool_size
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (savepoints work)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            conn.exec_driver_sql(begin)

        return engine
    return sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def owner_only(database: Path) -> None:
    """Make the SQLite index readable and writable by its owner only (it holds patient
    data and password hashes): created 0600 before SQLite opens it, an older file and
    its -wal and -shm set to 0600. SQLite creates -wal and -shm with the database
    file's permissions."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for file in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the index schema to the newest migration (safe to call on every start).

    On PostgreSQL several nodes may start at once: the first takes an advisory lock for
    the migration's transaction, the others wait for it and then find nothing to do.
    """
    engine = make_engine(url, writer=True)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()

"""Several nodes started at once on one new PostgreSQL database all come up: one runs
the migrations, the others wait for it and find the schema current."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from tests.conftest import postgres_database

MIGRATE = "import sys; from netpacs.index.db import migrate; migrate(sys.argv[1])"


def test_four_nodes_migrating_one_new_database_at_once_all_succeed() -> None:
    with postgres_database() as url:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", MIGRATE, url],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        results = [(p.wait(timeout=120), p.stdout.read() if p.stdout else "") for p in procs]
        assert [code for code, _ in results] == [0, 0, 0, 0], results
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version")
                assert len(versions.all()) == 1
        finally:
            engine.dispose()

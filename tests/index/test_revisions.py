"""The code's schema revisions as netpacs reads them at every start (from the migration
files' names) are Alembic's own, and a start on an index already at the newest
revision neither imports Alembic nor changes the index."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from netpacs.index.db import alembic_config, migrate
from netpacs.index.revision import code_revisions, stored_revision

# Migrate, then migrate again with Alembic's import made to fail: the second start must
# not need it. Prints the revision the index is at.
TWICE = """
import sys
from netpacs.index.db import make_engine, migrate
from netpacs.index.revision import stored_revision
migrate(sys.argv[1])
sys.modules["alembic"] = None  # an import of Alembic now raises ImportError
migrate(sys.argv[1])
engine = make_engine(sys.argv[1])
print(stored_revision(engine))
engine.dispose()
"""


def test_the_revisions_read_from_the_file_names_are_alembics() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    revisions = code_revisions()
    assert revisions.head == script.get_current_head()
    assert revisions.known == {r.revision for r in script.walk_revisions()}


def test_a_start_on_an_index_at_the_newest_revision_needs_no_migration(
    database_url: str,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TWICE, database_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == code_revisions().head


def test_an_index_behind_the_code_is_brought_to_the_newest_revision(database_url: str) -> None:
    migrate(database_url)
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(database_url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")  # an index left by the release before
        behind = stored_revision(engine)
        assert behind is not None and behind < code_revisions().head
        migrate(database_url)
        assert stored_revision(engine) == code_revisions().head
    finally:
        engine.dispose()

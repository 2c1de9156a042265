"""A node of the release before restarting during a rolling upgrade, on an index a newer
release has already migrated, starts and serves (docs/operations.md, "Rolling
upgrade"); an index at a revision no netpacs release made stops `netpacs serve` with a
message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import httpx
import sqlalchemy as sa

from netpacs.index.db import migrate
from netpacs.index.revision import code_revisions, stored_revision
from tests.cli.test_database_url import serve
from tests.conftest import Netpacs
from tests.http.test_health import set_revision


def test_a_node_of_the_release_before_restarts_and_serves_on_an_index_a_newer_release_migrated(
    tmp_path: Path, database_url: str, region_file: Path
) -> None:
    migrate(database_url)
    newer = f"{int(code_revisions().head) + 1:04d}"
    set_revision(database_url, newer)  # as the first upgraded node leaves it
    node = Netpacs(
        data_dir=tmp_path / "data",
        database_url=database_url,
        region_file=region_file,
        processes=1,
    )
    node.start()
    try:
        ready = httpx.get(f"{node.base_url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        found = node.http.get(f"{node.dicomweb_url}/studies", params={"PatientID": "H1234567"})
        assert found.status_code in (200, 204), found.text
    finally:
        node.stop()
    assert "newer than this release's" in node.log()
    engine = sa.create_engine(database_url)
    try:
        assert stored_revision(engine) == newer  # nothing downgraded or re-stamped
    finally:
        engine.dispose()


def test_serve_on_an_index_at_a_revision_no_release_made_stops_naming_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    migrate(url)
    set_revision(url, "abc123")
    result, _ = serve(tmp_path, url)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "schema revision 'abc123' is not one netpacs made" in result.stderr
    assert "Traceback" not in result.stderr

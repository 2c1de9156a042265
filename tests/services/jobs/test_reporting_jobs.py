"""The reporting jobs as the composition root builds them: the SR sweep and claim expiry,
on a real archive (SQLite and PostgreSQL), run through the reporting services' rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sqlalchemy as sa

from netpacs.app.container import Archive
from netpacs.app.jobs import archive_jobs
from netpacs.app.settings import Settings
from netpacs.index import outbox
from netpacs.index.schema import report, worklist_item
from netpacs.services.jobs.claim_expiry import ClaimExpiry
from netpacs.services.jobs.runner import Job
from netpacs.services.jobs.sr_sweep import SrSweep
from netpacs.services.reporting import ClaimsService
from tests.services.test_report_outputs import STUDY, archive, store_ct
from tests.services.test_reporting_service import (
    RADIOLOGIST,
    audited,
    holder,
    reporting,
    scope,
    sr_uid,
    unavailable_outputs,
)

__all__ = ["archive"]  # the fixture


def job(archive: Archive, kind: type[Job]) -> Job:
    (found,) = [j for j in archive_jobs(archive) if isinstance(j, kind)]
    return found


def an_hour_ago() -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)


def test_the_sr_sweep_stores_a_missing_sr_and_waits_while_another_node_sweeps(
    archive: Archive, tmp_path: Path, database_url: str
) -> None:
    store_ct(archive)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    failing = reporting(archive, unavailable_outputs(archive, settings))
    failing.save(STUDY, "FINDINGS:\nNormal.\n\nCONCLUSION:\nNo acute abnormality.", "final")
    with archive.write_engine.begin() as conn:  # signed an hour ago: due for the sweep
        conn.execute(sa.update(report).values(updated_at=an_hour_ago()))
    sweep = job(archive, SrSweep)
    if archive.write_engine.dialect.name != "sqlite":
        with archive.write_engine.begin() as other_node:
            assert outbox.try_lock(other_node, "SR sweep")
            sweep.step()
            assert sr_uid(archive) is None  # the other node's sweep is under way
    sweep.step()
    assert sr_uid(archive) is not None
    stored = sr_uid(archive)
    sweep.step()
    assert sr_uid(archive) == stored  # once


def test_claim_expiry_releases_a_lapsed_claim_and_audits_it(archive: Archive) -> None:
    store_ct(archive)
    shared = scope(archive)
    ClaimsService(shared).for_principal(shared.with_agreements(RADIOLOGIST)).claim(STUDY)
    expiry = job(archive, ClaimExpiry)
    expiry.step()
    assert holder(archive) == "ryr.radiologist"  # a live claim stays
    with archive.write_engine.begin() as conn:
        conn.execute(sa.update(worklist_item).values(claim_expires_at=an_hour_ago()))
    expiry.step()
    assert holder(archive) is None
    assert audited(archive, "lapsed") == [
        ("netpacs", "RXC5001", "claim of ryr.radiologist released: it lapsed")
    ]

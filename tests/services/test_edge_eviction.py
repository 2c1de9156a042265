"""The edge's cache keeper on a real index and blob directory: what is evicted when the
cache is over its size, what is kept (services.edge.cache).

Ages are set in the index (a test cannot wait 30 days); everything else is real:
objects stored through the ingest service, reads audited by the query service,
eviction removing rows and blobs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterator
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa

from netpacs.app.container import Archive, build_archive
from netpacs.app.settings import Settings
from netpacs.app.startup import prepare
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.index.schema import instance, series, study
from netpacs.services.access import Principal, Role
from netpacs.services.edge.cache import CacheKeeper, CachePolicy
from tests.factories import write_series

NOW = dt.datetime.now(dt.UTC)
CAPTURED = Origin(Protocol.DIMSE, ae_title="EDGH_CT1", trust="RXC", site="EDGH")
FROM_CORE = Origin(Protocol.UPSTREAM, user="regional core")


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    settings = Settings(data_dir=tmp_path / "edge", database_url=f"sqlite:///{tmp_path}/i.db")
    prepare(settings)
    built = build_archive(settings)
    try:
        yield built
    finally:
        built.close()


def stored(archive: Archive, folder: Path, origin: Origin, *, days_ago: float) -> str:
    """A 2-instance study stored through ingest as ``origin``, received ``days_ago``."""
    paths = write_series(folder, 2, PatientID="RXC0000500", IssuerOfPatientID="RXC")
    for path in paths:
        assert archive.ingest.store_part10(path.read_bytes(), origin=origin).status.ok
    uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    of_study = (
        sa.select(series.c.id)
        .join(study, study.c.id == series.c.study_fk)
        .where(study.c.study_instance_uid == uid)
    )
    with archive.write_engine.begin() as conn:
        conn.execute(
            sa.update(instance)
            .where(instance.c.series_fk.in_(of_study))
            .values(received_at=NOW - dt.timedelta(days=days_ago))
        )
    return uid


def blob_keys(archive: Archive, uid: str) -> list[str]:
    with archive.read_engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(instance.c.blob_key)
                .join(series, series.c.id == instance.c.series_fk)
                .join(study, study.c.id == series.c.study_fk)
                .where(study.c.study_instance_uid == uid)
            ).scalars()
        )


def keeper(archive: Archive, *, limit: int, unconfirmed: Collection[str] = ()) -> CacheKeeper:
    return CacheKeeper(
        CachePolicy(limit_bytes=limit, keep_days=30),
        run=archive.writer.execute,
        blobs=archive.blobs,
        unconfirmed=lambda _conn, uids: set(uids) & set(unconfirmed),
    )


def test_over_the_limit_the_least_recently_read_study_from_the_core_goes_with_its_blobs(
    archive: Archive, tmp_path: Path
) -> None:
    old_capture = stored(archive, tmp_path / "a", CAPTURED, days_ago=40)
    fetched = stored(archive, tmp_path / "b", FROM_CORE, days_ago=10)
    read_lately = stored(archive, tmp_path / "c", FROM_CORE, days_ago=20)
    stored(archive, tmp_path / "d", CAPTURED, days_ago=2)  # the site's recent capture
    # A clinician at the site opens one of them: the audit trail says so.
    reader = Principal("rxc.admin", Role.ADMIN, "RXC")
    assert archive.query.for_principal(reader).stored_instances(read_lately)
    doomed = blob_keys(archive, old_capture) + blob_keys(archive, fetched)
    use = keeper(archive, limit=10**12).use()
    assert (use.studies, use.over_limit) == (4, False)

    # Room for about two and a half of the four (equal but for a few bytes of UIDs).
    job = keeper(archive, limit=use.bytes * 5 // 8)
    job.follow_reads()
    evicted = job.evict(now=NOW)

    # Captured 40 days ago and never read: the least recently used; then the study
    # fetched 10 days ago; the one read just now and the site's recent capture stay.
    assert evicted == [old_capture, fetched]
    assert not any(archive.blobs.exists(k) for k in doomed)
    assert all(archive.blobs.exists(k) for k in blob_keys(archive, read_lately))
    assert blob_keys(archive, old_capture) == []


def test_a_study_the_core_has_not_confirmed_is_never_evicted(
    archive: Archive, tmp_path: Path
) -> None:
    waiting = stored(archive, tmp_path / "a", CAPTURED, days_ago=60)
    job = keeper(archive, limit=1, unconfirmed={waiting})
    assert job.evict(now=NOW) == []
    assert blob_keys(archive, waiting)
    assert job.use().over_limit

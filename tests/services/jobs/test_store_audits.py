"""A store's audit message is not lost with its process: an association whose netpacs
is killed mid-way is audited from the tally it left in the index."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydicom
import sqlalchemy as sa
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from netpacs.adapters.dimse.requestor import associate
from netpacs.app.container import build_archive
from netpacs.app.settings import Settings
from netpacs.index.schema import audit_event, store_tally
from netpacs.services.jobs.store_audits import StaleStoreAudits
from tests.conftest import Netpacs
from tests.factories import write_series


def rows(server: Netpacs, table: sa.Table) -> list[sa.Row[object]]:
    engine = sa.create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(table)).all())
    finally:
        engine.dispose()


def stores_of(server: Netpacs, study: str) -> list[sa.Row[object]]:
    return [
        r
        for r in rows(server, audit_event)
        if r.event_id == "110104" and r.action == "C" and study in (r.study_uids or "")
    ]


def test_an_association_killed_mid_way_is_audited_from_its_tally(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "ct", 3, PatientID="RXC7001", IssuerOfPatientID="RXC")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    ae = AE(ae_title="EDGH_CT1")
    ae.add_requested_context(CTImageStorage)
    assoc = associate(ae, "127.0.0.1", netpacs.port, ae_title="NETPACS")
    assert assoc.is_established
    for f in files:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    # The association is still open: its audit message is not written yet, its tally is.
    assert stores_of(netpacs, study) == []
    (tally,) = rows(netpacs, store_tally)
    assert (tally.study_instance_uid, tally.stored) == (study, 1)  # saved at its first
    netpacs.kill()
    assoc.abort()

    # Any node's job worker, later: the tally is stale, its batch's process is gone.
    settings = Settings(data_dir=netpacs.data_dir, database_url=netpacs.database_url)
    archive = build_archive(settings)
    try:
        job = StaleStoreAudits(archive.writer.execute, archive.audit, stale_after=dt.timedelta(0))
        job.step()
        job.step()  # nothing left: audited once
    finally:
        archive.close()
    (record,) = stores_of(netpacs, study)
    assert (record.user_id, record.trust, record.patient_id) == ("EDGH_CT1", "RXC", "RXC7001")
    assert record.detail.startswith("1 instances stored (C-STORE from EDGH_CT1 (RXC))")
    assert "did not end properly" in record.detail
    assert rows(netpacs, store_tally) == []


def test_an_association_that_ends_leaves_no_tally_and_one_message(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "ct", 4, PatientID="RXC7002", IssuerOfPatientID="RXC")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    ae = AE(ae_title="EDGH_CT1")
    ae.add_requested_context(CTImageStorage)
    assoc = associate(ae, "127.0.0.1", netpacs.port, ae_title="NETPACS")
    for f in files:
        assert assoc.send_c_store(pydicom.dcmread(f)).Status == 0
    assoc.release()
    netpacs.stop()  # waits for the workers: the release was handled
    (record,) = stores_of(netpacs, study)
    assert record.detail == "4 instances stored (C-STORE from EDGH_CT1 (RXC))"
    assert rows(netpacs, store_tally) == []

"""MPPS (PS3.4 F.7) with pynetdicom as the modality: N-CREATE and N-SET, the order and
the reporting worklist they move, and the statuses of what may not be done.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]

from netpacs.adapters.dimse import requestor
from tests.adapters.test_rejection_notes import rejection_note
from tests.adapters.test_worklist import worklist
from tests.conftest import Netpacs, dcmtk, write_region
from tests.factories import write
from tests.hl7.conftest import MllpClient, order
from tests.http.conftest import write_and_send_ct

PATIENT = "RXC0003001^^^RXC^MR"
TODAY = dt.date.today().strftime("%Y%m%d")


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


@pytest.fixture
def modality(netpacs: Netpacs) -> Iterator[Any]:
    """An association as a modality AE would open: ``modality("EDGH_CT1")``."""
    opened: list[Association] = []

    def associate(aet: str = "EDGH_CT1") -> Association:
        ae = AE(ae_title=aet)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        assoc = requestor.associate(ae, "127.0.0.1", netpacs.port, ae_title="NETPACS")
        assert assoc.is_established
        opened.append(assoc)
        return assoc

    yield associate
    for assoc in opened:
        assoc.release()


def place(netpacs: Netpacs, accession: str, control_id: str, **kw: str) -> str:
    """Place an order over MLLP; its Study Instance UID as the worklist gives it."""
    client = MllpClient(netpacs.mllp_port)
    try:
        ack = client.send(order("NW", control_id, accession=accession, pid3=PATIENT, **kw))
        assert ack.code == "AA", ack.text
    finally:
        client.close()
    return study_uid_of(netpacs, accession)


def study_uid_of(netpacs: Netpacs, accession: str, tmp: Path | None = None) -> str:
    tmp = tmp or Path(netpacs.data_dir).parent
    (answer,) = worklist(
        netpacs, tmp, f"AccessionNumber={accession}", "StudyInstanceUID", aet="EDGH_CT1"
    )
    return str(answer.StudyInstanceUID)


def in_progress(accession: str, study_uid: str, status: str = "IN PROGRESS") -> Dataset:
    ds = Dataset()
    step = Dataset()
    step.AccessionNumber = accession
    step.StudyInstanceUID = study_uid
    step.RequestedProcedureID = accession
    step.ScheduledProcedureStepID = accession
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientID = "RXC0003001"
    ds.PerformedProcedureStepStatus = status
    ds.PerformedStationAETitle = "EDGH_CT1"
    ds.PerformedProcedureStepStartDate = TODAY
    ds.PerformedProcedureStepStartTime = "101500"
    ds.Modality = "CT"
    ds.PerformedSeriesSequence = []
    return ds


def finished(status: str, series_uid: str | None) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = TODAY
    ds.PerformedProcedureStepEndTime = "103000"
    if series_uid is None:
        ds.PerformedSeriesSequence = []
    else:
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.SeriesDescription = "Chest"
        image = Dataset()
        image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        image.ReferencedSOPInstanceUID = generate_uid()
        item.ReferencedImageSequence = [image]
        ds.PerformedSeriesSequence = [item]
    return ds


def create(assoc: Association, uid: str, ds: Dataset) -> Dataset:
    status, _ = assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)
    return status


def set_(assoc: Association, uid: str, ds: Dataset) -> Dataset:
    status, _ = assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)
    return status


def item(netpacs: Netpacs, study_uid: str) -> dict[str, Any] | None:
    response = netpacs.http.get(f"{netpacs.base_url}/api/worklist/{study_uid}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_mpps_in_progress_then_completed_completes_the_order_and_carries_it_to_reporting(
    netpacs: Netpacs, modality: Any, tmp_path: Path
) -> None:
    study_uid = place(
        netpacs, "M1", "MP0001", priority="S", station_ae="EDGH_CT1",
        reason="^Suspected pulmonary embolism", location="ED^MAJORS^^EDGH", patient_class="E",
    )  # fmt: skip
    assoc = modality()
    mpps_uid = generate_uid()
    assert create(assoc, mpps_uid, in_progress("M1", study_uid)).Status == 0x0000
    (started,) = worklist(netpacs, tmp_path, "AccessionNumber=M1", "ScheduledProcedureStepSequence")
    assert started.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"

    stored = write_and_send_ct(
        netpacs, tmp_path / "ct", 2, patient_id="RXC0003001", issuer="RXC", study_uid=study_uid
    )
    queued = item(netpacs, study_uid)
    assert queued is not None  # default ready_at: the first image series
    assert queued["priority"] == "emergency"  # the order's STAT, not a guess from DICOM
    assert queued["order"]["reason"] == "Suspected pulmonary embolism"
    assert queued["order"]["requesting_clinician"] == "DR ANNA JONES"
    assert queued["order"]["requesting_location"] == "ED MAJORS"
    assert queued["order"]["patient_class_text"] == "emergency department"

    assert set_(assoc, mpps_uid, finished("COMPLETED", stored.series_uid)).Status == 0x0000
    assert worklist(netpacs, tmp_path, "AccessionNumber=M1", aet="EDGH_CT1") == []

    again = set_(assoc, mpps_uid, finished("DISCONTINUED", None))
    assert again.Status == 0x0110
    assert "COMPLETED: it may no longer be updated" in again.ErrorComment
    assert again.ErrorID == 0xA710


def test_an_incorrect_worklist_entry_rejection_puts_the_order_back_under_a_new_study(
    netpacs: Netpacs, modality: Any, tmp_path: Path
) -> None:
    # The radiographer picked this order for the wrong patient, scanned and completed.
    study_uid = place(netpacs, "M9", "MP0009", station_ae="EDGH_CT1")
    assoc = modality()
    mpps_uid = generate_uid()
    assert create(assoc, mpps_uid, in_progress("M9", study_uid)).Status == 0x0000
    stored = write_and_send_ct(
        netpacs, tmp_path / "ct", 2, patient_id="RXC0003001", issuer="RXC", study_uid=study_uid
    )
    assert set_(assoc, mpps_uid, finished("COMPLETED", stored.series_uid)).Status == 0x0000
    assert worklist(netpacs, tmp_path, "AccessionNumber=M9", aet="EDGH_CT1") == []

    # IHE IOCM: the modality rejects the images as Incorrect Modality Worklist Entry.
    images = [pydicom.dcmread(p, stop_before_pixels=True) for p in stored.paths]
    note = rejection_note(images, ("113038", "Incorrect Modality Worklist Entry"))
    sent = dcmtk(
        "storescu", "-aet", "EDGH_CT1", "-aec", "NETPACS", "127.0.0.1", str(netpacs.port),
        str(write(note, tmp_path / "note.dcm")),
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr

    # The order is to be performed again, and the rejected study no longer performs it.
    (back,) = worklist(
        netpacs, tmp_path, "AccessionNumber=M9", "StudyInstanceUID",
        "ScheduledProcedureStepSequence", aet="EDGH_CT1",
    )  # fmt: skip
    assert back.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"
    assert back.StudyInstanceUID != study_uid


def test_discontinued_mpps_puts_the_order_back_on_the_worklist(
    netpacs: Netpacs, modality: Any, tmp_path: Path
) -> None:
    study_uid = place(netpacs, "M2", "MP0002")
    assoc = modality()
    mpps_uid = generate_uid()
    assert create(assoc, mpps_uid, in_progress("M2", study_uid)).Status == 0x0000
    assert set_(assoc, mpps_uid, finished("DISCONTINUED", None)).Status == 0x0000
    (back,) = worklist(netpacs, tmp_path, "AccessionNumber=M2", "ScheduledProcedureStepSequence")
    assert back.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"


def test_invalid_mpps_requests_get_the_statuses_ps3_4_names(
    netpacs: Netpacs, modality: Any
) -> None:
    study_uid = place(netpacs, "M3", "MP0003")
    assoc = modality()
    mpps_uid = generate_uid()
    wrong_start = create(assoc, generate_uid(), in_progress("M3", study_uid, "COMPLETED"))
    assert wrong_start.Status == 0x0106
    assert "must be IN PROGRESS" in wrong_start.ErrorComment
    assert create(assoc, mpps_uid, in_progress("M3", study_uid)).Status == 0x0000
    assert create(assoc, mpps_uid, in_progress("M3", study_uid)).Status == 0x0111
    unknown = set_(assoc, generate_uid(), finished("COMPLETED", generate_uid()))
    assert unknown.Status == 0x0112
    no_series = set_(assoc, mpps_uid, finished("COMPLETED", None))
    assert no_series.Status == 0x0110
    assert "at least one Performed Series" in no_series.ErrorComment
    bad_status = set_(assoc, mpps_uid, finished("FINISHED", generate_uid()))
    assert bad_status.Status == 0x0106
    # Another trust's modality cannot see, let alone complete, this step.
    other = set_(modality("ESH_CT1"), mpps_uid, finished("COMPLETED", generate_uid()))
    assert other.Status == 0x0112


def positions(netpacs: Netpacs, *study_uids: str) -> list[int]:
    response = netpacs.http.get(f"{netpacs.base_url}/api/worklist", params={"limit": 2000})
    assert response.status_code == 200, response.text
    listed = [i["study_instance_uid"] for i in response.json()["items"]]
    return [listed.index(uid) for uid in study_uids]


def test_an_order_change_that_raises_the_priority_reorders_the_reporting_worklist(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    routine = place(netpacs, "X1", "MP0101", patient_class="O", location="OPD^^^EDGH")
    ward = place(netpacs, "X2", "MP0102", priority="A", location="WARD3^^^EDGH")
    for n, uid in enumerate((routine, ward)):
        write_and_send_ct(
            netpacs, tmp_path / f"ct{n}", 1, patient_id="RXC0003001", issuer="RXC", study_uid=uid
        )
    assert [(item(netpacs, u) or {}).get("priority") for u in (routine, ward)] == [
        "outpatient",
        "inpatient",
    ]
    before = positions(netpacs, routine, ward)
    assert before[0] > before[1]

    client = MllpClient(netpacs.mllp_port)
    try:
        change = order("XO", "MP0103", accession="X1", pid3=PATIENT, priority="S")
        assert client.send(change).code == "AA"
    finally:
        client.close()
    assert (item(netpacs, routine) or {}).get("priority") == "emergency"
    after = positions(netpacs, routine, ward)
    assert after[0] < after[1]


@pytest.fixture(scope="module")
def mpps_ready(
    tmp_path_factory: pytest.TempPathFactory, workstation_port: int
) -> Iterator[Netpacs]:
    """A server (SQLite) whose region makes ordered studies ready to report at MPPS
    COMPLETED (``[reporting] ready_at = "mpps"``)."""
    folder = tmp_path_factory.mktemp("mpps-ready")
    region = write_region(folder / "region.toml", {"RTP_WS1": workstation_port})
    region.write_text(
        region.read_text().replace("[reporting]\n", '[reporting]\nready_at = "mpps"\n', 1)
    )
    server = Netpacs(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'index.sqlite'}",
        region_file=region,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_with_ready_at_mpps_an_ordered_study_waits_for_its_completed_mpps(
    mpps_ready: Netpacs, tmp_path: Path
) -> None:
    study_uid = place(mpps_ready, "R1", "MP0201", priority="A")
    ae = AE(ae_title="EDGH_CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = requestor.associate(ae, "127.0.0.1", mpps_ready.port, ae_title="NETPACS")
    assert assoc.is_established
    try:
        mpps_uid = generate_uid()
        assert create(assoc, mpps_uid, in_progress("R1", study_uid)).Status == 0x0000
        stored = write_and_send_ct(
            mpps_ready, tmp_path / "ct", 2, patient_id="RXC0003001", issuer="RXC",
            study_uid=study_uid,
        )  # fmt: skip
        assert item(mpps_ready, study_uid) is None  # images, but not yet ready to report
        assert set_(assoc, mpps_uid, finished("COMPLETED", stored.series_uid)).Status == 0x0000
    finally:
        assoc.release()
    ready = item(mpps_ready, study_uid)
    assert ready is not None
    assert ready["priority"] == "inpatient"


def test_the_report_of_an_ordered_study_carries_its_accession_and_order_numbers(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    study_uid = place(netpacs, "F1", "MP0301", placer="PL-F1", filler="FL-F1")
    write_and_send_ct(
        netpacs, tmp_path / "ct", 1, patient_id="RXC0003001", issuer="RXC", study_uid=study_uid
    )
    radiologist = netpacs.auth("ryr.radiologist")
    base = netpacs.base_url
    claimed = httpx.post(f"{base}/api/worklist/{study_uid}/claim", headers=radiologist, timeout=60)
    assert claimed.status_code == 200, claimed.text
    signed = httpx.put(
        f"{base}/api/reports/{study_uid}",
        json={"text": "CONCLUSION:\nNormal chest.", "status": "final"},
        headers=radiologist,
        timeout=60,
    )
    assert signed.status_code == 200, signed.text
    report = netpacs.http.get(f"{base}/fhir/DiagnosticReport/{study_uid}")
    assert report.status_code == 200, report.text
    identifiers = {i["type"]["coding"][0]["code"]: i["value"] for i in report.json()["identifier"]}
    assert identifiers == {"ACSN": "F1", "PLAC": "PL-F1", "FILL": "FL-F1"}

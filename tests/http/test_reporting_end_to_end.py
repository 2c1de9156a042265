"""Networked reporting end to end: a CT from Eastbourne is reported at Brighton with a
Royal Surrey prior beside it, and the report reaches every place it must: the study
(a Basic Text SR over WADO-RS and C-FIND), East Sussex's results listener (HL7 ORU over
MLLP) and FHIR."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import httpx
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from tests.adapters.test_dimse import find
from tests.conftest import Netpacs
from tests.hl7.test_regional_record import send_study, valid_nhs
from tests.hl7.test_results import Listener, region_file, results_port, wait_until
from tests.http.test_reporting import client

__all__ = ["region_file", "results_port"]  # fixtures: East Sussex's listener on a test port


def only_part(response: httpx.Response) -> bytes:
    """The one body part of a multipart/related answer."""
    boundary = response.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
    part = response.content.split(b"--" + boundary.encode())[1]
    return part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")


def texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT value of an SR content tree."""
    found: list[str] = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found.append(str(item.TextValue))
        found.extend(texts(item))
    return found


@pytest.fixture
def listener(results_port: int) -> Iterator[Listener]:
    server = Listener(results_port).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_ct_from_eastbourne_reported_at_brighton_reaches_the_study_the_trust_and_fhir(
    netpacs: Netpacs, tmp_path: Path, listener: Listener
) -> None:
    nhs = valid_nhs("943476591")
    prior = send_study(
        netpacs,
        tmp_path / "prior",
        aet="RSCH_CT1",
        patient_id="RA2-5001",
        issuer="RA2",
        name="PRIOR^PAT",
        birth_date="19550505",
        nhs=nhs,
    )
    current = send_study(
        netpacs,
        tmp_path / "current",
        aet="EDGH_CT1",
        patient_id="RXC5001",
        issuer="RXC",
        name="PRIOR^PAT",
        birth_date="19550505",
        nhs=nhs,
    )
    with client(netpacs, "ryr.radiologist") as c:
        item = next(
            i for i in c.get("/api/worklist").json()["items"] if i["study_instance_uid"] == current
        )
        assert (item["requesting_trust"], item["requesting_site"]) == ("RXC", "EDGH")
        assert c.post(f"/api/worklist/{current}/claim").status_code == 200
        priors = c.get(f"/api/worklist/{current}/priors").json()["priors"]
        assert [(p["study_instance_uid"], p["trust"]) for p in priors] == [(prior, "RA2")]
        text = (
            "CLINICAL DETAILS:\nAbdominal pain.\n\nCOMPARISON:\nCT at Royal Surrey.\n\n"
            "FINDINGS:\nNo change since the prior.\n\nCONCLUSION:\nStable appearances."
        )
        signed = c.put(f"/api/reports/{current}", json={"text": text, "status": "final"})
        assert signed.status_code == 200, signed.text
        sr_uid = signed.json()["sr_sop_instance_uid"]
        assert sr_uid, "the SR was not stored"
        # The SR is in the study for every viewer: WADO-RS ...
        series = c.get(f"{netpacs.dicomweb_url}/studies/{current}/series").json()
        sr_series = [s for s in series if s["00080060"]["Value"] == ["SR"]]
        assert len(sr_series) == 1
        sr_series_uid = sr_series[0]["0020000E"]["Value"][0]
        part = c.get(
            f"{netpacs.dicomweb_url}/studies/{current}/series/{sr_series_uid}/instances/{sr_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        assert part.status_code == 200
        sr = pydicom.dcmread(DicomBytesIO(only_part(part)))
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
        assert sr.StudyInstanceUID == current and sr.PatientID == "RXC5001"
        assert sr.VerificationFlag == "VERIFIED"
        assert "Stable appearances." in texts(sr)
        assert "No change since the prior." in texts(sr)
    # ... and C-FIND from East Sussex's workstation.
    found = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={current}",
        "Modality=SR",
        "SeriesInstanceUID",
    )
    assert [ds.SeriesInstanceUID for ds in found] == [sr_series_uid]
    # East Sussex's results listener gets the ORU^R01 once.
    wait_until(lambda: len(listener.accepted) >= 1)
    time.sleep(1.0)  # nothing more comes
    messages = listener.messages
    assert len(messages) == 1
    oru = hl7.parse(messages[0])
    assert str(oru.segment("MSH")[9]).startswith("ORU^R01")
    assert "RXC5001" in str(oru.segment("PID")[3])
    assert str(oru.segment("OBR")[25]) == "F"
    assert "Stable appearances." in messages[0]
    # FHIR answers with the DiagnosticReport by the patient's NHS number.
    with client(netpacs, "rxc.clinician") as c:
        bundle = c.get(
            "/fhir/DiagnosticReport",
            params={"patient.identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"},
        ).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [current]
    assert bundle["entry"][0]["resource"]["conclusion"] == "Stable appearances."

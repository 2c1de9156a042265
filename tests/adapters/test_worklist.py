"""Modality Worklist C-FIND (PS3.4 K) with DCMTK ``findscu -W``, answered from orders
sent over real MLLP: matching, return keys, and who sees what (a modality its site's
orders for its modality; nothing of another trust; closed orders never).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import Netpacs, dcmtk
from tests.hl7.conftest import MllpClient, order

TODAY = dt.date.today().strftime("%Y%m%d")
TOMORROW = (dt.date.today() + dt.timedelta(days=1)).strftime("%Y%m%d")
SMITH = "RXC0002001^^^RXC^MR"
SMYTHE = "RXC0002002^^^RXC^MR~9434765919^^^NHS^NH"

ORDERS = [
    dict(accession="A1", pid3=SMITH, name="SMITH^JOHN", when=f"{TODAY}0900", station_ae="EDGH_CT1"),
    dict(accession="A2", pid3=SMYTHE, name="SMYTHE^JANE", when=f"{TODAY}1400", priority="S"),
    dict(accession="A3", pid3=SMITH, name="SMITH^JOHN", when=f"{TOMORROW}1000"),
    dict(accession="A4", pid3=SMITH, name="SMITH^JOHN", when=f"{TODAY}1000", modality="MR",
         procedure="MBRAI^MRI Head^LOCAL"),
    dict(accession="A5", pid3=SMITH, name="SMITH^JOHN", when=f"{TODAY}1100", facility="CONQ",
         location="WARD1^^^CONQ"),
    dict(accession="A6", pid3=SMITH, name="SMITH^JOHN", when=f"{TODAY}1200"),  # cancelled
    dict(accession="A7", pid3=SMITH, name="SMITH^JOHN", when=f"{TODAY}1300"),  # discontinued
    dict(accession="B1", pid3="RTP0002001^^^RTP^MR", name="SMITH^JOHN", when=f"{TODAY}0930",
         facility="ESH", location="AE^^^ESH"),
]  # fmt: skip


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Iterator[Netpacs]:
    client = MllpClient(module_netpacs.mllp_port)
    try:
        for n, values in enumerate(ORDERS):
            ack = client.send(order("NW", f"WL{n:04d}", **values))
            assert ack.code == "AA", ack.text
        for control, accession in (("CA", "A6"), ("DC", "A7")):
            ack = client.send(order(control, f"WL{control}", accession=accession, pid3=SMITH))
            assert ack.code == "AA", ack.text
    finally:
        client.close()
    yield module_netpacs


def worklist(
    server: Netpacs, tmp_path: Path, *keys: str, aet: str = "EDGH_CT1"
) -> list[pydicom.Dataset]:
    out = tmp_path / f"wl-{generate_uid()[-8:]}"
    out.mkdir()
    args = ["-W", "-aet", aet, "-aec", "NETPACS", "-X", "-od", str(out)]
    for k in ("AccessionNumber", "PatientName", *keys):
        args += ["-k", k]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.port), timeout=60)
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def accessions(answers: list[pydicom.Dataset]) -> set[str]:
    return {str(a.AccessionNumber) for a in answers}


SPS = "ScheduledProcedureStepSequence[0]"
MATCHING = [
    ("EDGH_CT1", [f"{SPS}.Modality"], {"A1", "A2", "A3"}),
    ("EDGH_CT1", [f"{SPS}.ScheduledProcedureStepStartDate={TODAY}"], {"A1", "A2"}),
    ("EDGH_CT1", [f"{SPS}.ScheduledProcedureStepStartDate={TODAY}-{TOMORROW}"], {"A1", "A2", "A3"}),
    ("EDGH_CT1", [f"{SPS}.ScheduledProcedureStepStartDate=-{TODAY}"], {"A1", "A2"}),
    ("EDGH_CT1", [f"{SPS}.ScheduledProcedureStepStartDate={TODAY}",
                  f"{SPS}.ScheduledProcedureStepStartTime=1200-1800"], {"A2"}),
    ("EDGH_CT1", [f"{SPS}.ScheduledProcedureStepStartTime=0800-0959"], {"A1"}),
    ("EDGH_CT1", [f"{SPS}.ScheduledStationAETitle=EDGH_CT1"], {"A1"}),
    ("EDGH_CT1", [f"{SPS}.Modality=CT"], {"A1", "A2", "A3"}),
    ("EDGH_CT1", [f"{SPS}.Modality=MR"], set()),
    ("EDGH_CT1", ["PatientName=SMITH*"], {"A1", "A3"}),
    ("EDGH_CT1", ["PatientName=smy?he*"], {"A2"}),
    ("EDGH_CT1", ["PatientID=RXC0002002"], {"A2"}),
    ("EDGH_CT1", ["AccessionNumber=A3"], {"A3"}),
    ("EDGH_CT1", ["AccessionNumber=A6"], set()),  # cancelled
    ("EDGH_CT1", ["AccessionNumber=A7"], set()),  # discontinued
    ("EDGH_CT1", ["AccessionNumber=B1"], set()),  # another trust's
    ("EDGH_MR1", [f"{SPS}.Modality"], {"A4"}),
    ("CONQ_CT1", [f"{SPS}.Modality"], {"A5"}),
    ("ESH_CT1", ["PatientName=SMITH*"], {"B1"}),
    ("RXC_WS1", [f"{SPS}.Modality"], {"A1", "A2", "A3", "A4", "A5"}),
    ("RTK_WS1", [f"{SPS}.Modality"], set()),
]  # fmt: skip


@pytest.mark.parametrize(("aet", "keys", "expected"), MATCHING)
def test_worklist_matching_and_who_sees_which_orders(
    netpacs: Netpacs, tmp_path: Path, aet: str, keys: list[str], expected: set[str]
) -> None:
    assert accessions(worklist(netpacs, tmp_path, *keys, aet=aet)) == expected


def test_a_worklist_entry_carries_the_order_and_keeps_its_study_instance_uid(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    keys = [
        "AccessionNumber=A2", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
        "PatientSex", "StudyInstanceUID", "RequestedProcedureID",
        "RequestedProcedureDescription", "RequestedProcedurePriority",
        "ReferringPhysicianName", "ReasonForTheRequestedProcedure",
        "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
        "RequestedProcedureCodeSequence", f"{SPS}.Modality", f"{SPS}.ScheduledStationAETitle",
        f"{SPS}.ScheduledProcedureStepStartDate", f"{SPS}.ScheduledProcedureStepStartTime",
        f"{SPS}.ScheduledProcedureStepID", f"{SPS}.ScheduledProcedureStepDescription",
        f"{SPS}.ScheduledProcedureStepStatus",
    ]  # fmt: skip
    (first,) = worklist(netpacs, tmp_path, *keys, aet="EDGH_CT1")
    (again,) = worklist(netpacs, tmp_path, *keys, aet="EDGH_CT1")
    assert first.StudyInstanceUID == again.StudyInstanceUID
    assert str(first.StudyInstanceUID).count(".") > 3
    assert (first.PatientName, first.PatientID, first.IssuerOfPatientID) == (
        "SMYTHE^JANE",
        "RXC0002002",
        "RXC",
    )
    assert (first.PatientBirthDate, first.PatientSex) == ("19700101", "F")
    assert first.RequestedProcedurePriority == "STAT"
    assert first.ReferringPhysicianName == "JONES^ANNA^^DR"
    assert first.RequestedProcedureDescription == "CT Chest"
    assert first.RequestedProcedureCodeSequence[0].CodeValue == "CTCHE"
    assert first.ReasonForTheRequestedProcedure == "Cough for six weeks, smoker"
    assert (first.PlacerOrderNumberImagingServiceRequest,
            first.FillerOrderNumberImagingServiceRequest) == ("PA2", "FA2")  # fmt: skip
    assert first.RequestedProcedureID == "A2"
    (step,) = first.ScheduledProcedureStepSequence
    assert (step.Modality, step.ScheduledProcedureStepStartDate) == ("CT", TODAY)
    assert step.ScheduledProcedureStepStartTime == "140000"
    assert (step.ScheduledProcedureStepID, step.ScheduledProcedureStepStatus) == (
        "A2",
        "SCHEDULED",
    )
    assert step.ScheduledProcedureStepDescription == "CT Chest"
    assert "ScheduledPerformingPhysicianName" not in step  # not asked for


def test_a_malformed_date_range_is_refused_with_a_reason(netpacs: Netpacs, tmp_path: Path) -> None:
    result = dcmtk(
        "findscu", "-d", "-W", "-aet", "EDGH_CT1", "-aec", "NETPACS", "-k",
        f"{SPS}.ScheduledProcedureStepStartDate=2026-12-02", "127.0.0.1", str(netpacs.port),
    )  # fmt: skip
    assert "0xa900: Error: Data Set does not match SOP Class" in result.stderr + result.stdout, (
        result.stdout + result.stderr
    )
    assert "is not valid" in result.stderr + result.stdout

"""C-GET and C-MOVE deliver coerced headers after ADT (issue 4); stored objects stay.

Real peers: DCMTK getscu and movescu (to a DCMTK storescp workstation) and pynetdicom.
One server per module and backend; each test has its own patients.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from tests.conftest import Netpacs, dcmtk
from tests.get_scu import get_association
from tests.hl7.conftest import MllpClient, adt
from tests.http.conftest import write_and_send_ct
from tests.http.test_served_headers import stored_objects


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


@pytest.fixture
def mllp(netpacs: Netpacs) -> Iterator[MllpClient]:
    client = MllpClient(netpacs.mllp_port)
    yield client
    client.close()


def retrieve_args(netpacs: Netpacs, study_uid: str) -> list[str]:
    return [
        "-S",
        "-aet",
        "RXC_WS1",
        "-aec",
        "NETPACS",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "127.0.0.1",
        str(netpacs.port),
    ]


def test_getscu_receives_the_adt_demographics_with_the_stored_pixel_data(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    ct = write_and_send_ct(netpacs, tmp_path / "ct", 2, patient_id="RXC0000042")
    before = stored_objects(netpacs)
    ack = mllp.send(
        adt("A08", "CTRL0100", "RXC0000042^^^RXC^MR", name="PARKER^MARY", birth_date="19811224")
    )
    assert ack.code == "AA", ack.text
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk("getscu", "-od", str(out), *retrieve_args(netpacs, ct.study_uid))
    assert result.returncode == 0, result.stderr
    received = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    assert sorted(str(ds.SOPInstanceUID) for ds in received) == sorted(ct.sop_uids)
    for ds in received:
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(before[ds.SOPInstanceUID]))
        assert (ds.PatientName, ds.PatientBirthDate) == ("PARKER^MARY", "19811224")
        assert (ds.PatientID, ds.PatientSex) == ("RXC0000042", stored.PatientSex)
        assert "IssuerOfPatientID" not in ds
        assert ds.PixelData == stored.PixelData
    assert stored_objects(netpacs) == before


def test_movescu_after_a40_delivers_the_survivors_patient_id(
    netpacs: Netpacs, mllp: MllpClient, storescp: Path, tmp_path: Path
) -> None:
    write_and_send_ct(netpacs, tmp_path / "a", 1, patient_id="RXC0000050")
    prior = write_and_send_ct(netpacs, tmp_path / "b", 2, patient_id="RXC0000051")
    before = stored_objects(netpacs)
    ack = mllp.send(adt("A40", "CTRL0300", "RXC0000050^^^RXC^MR", mrg1="RXC0000051^^^RXC^MR"))
    assert ack.code == "AA", ack.text
    result = dcmtk("movescu", "-aem", "RTP_WS1", *retrieve_args(netpacs, prior.study_uid))
    assert result.returncode == 0, result.stderr
    received = [pydicom.dcmread(p) for p in sorted(storescp.iterdir())]
    assert len(received) == 2
    for ds in received:
        assert (ds.PatientID, ds.IssuerOfPatientID) == ("RXC0000050", "RXC")
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(before[ds.SOPInstanceUID]))
        assert ds.PixelData == stored.PixelData
    assert stored_objects(netpacs) == before


def test_c_get_in_another_uncompressed_syntax_is_coerced_and_unchanged_studies_are_not(
    netpacs: Netpacs, mllp: MllpClient, tmp_path: Path
) -> None:
    changed = write_and_send_ct(netpacs, tmp_path / "a", 1, patient_id="RXC0000070")
    unchanged = write_and_send_ct(netpacs, tmp_path / "b", 1, patient_id="RXC0000071")
    assert mllp.send(adt("A08", "CTRL0500", "RXC0000070^^^RXC^MR", sex="M")).code == "AA"
    stored = stored_objects(netpacs)

    got: dict[str, pydicom.Dataset] = {}

    def on_store(event: evt.Event) -> int:
        got[str(event.request.AffectedSOPInstanceUID)] = event.dataset
        return 0

    assoc = get_association(
        "RXC_WS1", netpacs.port, CTImageStorage, on_store, [ImplicitVRLittleEndian]
    )
    for study in (changed, unchanged):
        ident = pydicom.Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study.study_uid
        statuses = [
            s for s, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet)
        ]
        assert int(statuses[-1].Status) == 0
    assoc.release()

    assert got[changed.sop_uids[0]].PatientSex == "M"
    original = pydicom.dcmread(changed.paths[0])
    assert original.PatientSex != "M"
    assert got[unchanged.sop_uids[0]] == pydicom.dcmread(unchanged.paths[0])
    assert stored_objects(netpacs) == stored

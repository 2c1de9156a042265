"""DIMSE round trips against a running netpacs with real DCMTK and pynetdicom peers.

One server per module and backend: each test sends objects of its own (fresh UIDs) and
asserts on those.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from netpacs.adapters.dimse.requestor import associate
from tests.conftest import Netpacs, dcmtk
from tests.factories import ct_dataset, write, write_series


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


def stored_blobs(server: Netpacs) -> list[Path]:
    return [p for p in (server.data_dir / "objects").glob("???/*") if p.is_file()]


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file (everything after the file meta group)."""
    from netpacs.domain.dicom.part10 import read_file_meta

    raw = path.read_bytes()
    return raw[read_file_meta(raw).dataset_offset :]


def find(server: Netpacs, tmp_path: Path, *keys: str, model: str = "-S") -> list[pydicom.Dataset]:
    out = tmp_path / f"find-{generate_uid()[-8:]}"
    out.mkdir()
    args = [model, "-aet", "RXC_WS1", "-aec", "NETPACS", "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    result = dcmtk("findscu", *args, "127.0.0.1", str(server.port))
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def store(server: Netpacs, *paths: Path, aet: str = "EDGH_CT1") -> str:
    result = dcmtk(
        "storescu",
        "-v",
        "-aet",
        aet,
        "-aec",
        "NETPACS",
        "127.0.0.1",
        str(server.port),
        *map(str, paths),
    )
    return result.stdout + result.stderr


def test_echo_from_a_region_modality_succeeds(netpacs: Netpacs) -> None:
    result = dcmtk(
        "echoscu", "-v", "-aet", "ESH_CT1", "-aec", "NETPACS", "127.0.0.1", str(netpacs.port)
    )
    assert result.returncode == 0
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_unknown_calling_ae_is_rejected_at_association(netpacs: Netpacs) -> None:
    result = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "NETPACS", "127.0.0.1", str(netpacs.port))
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr


def test_wrong_called_ae_is_rejected_at_association(netpacs: Netpacs) -> None:
    result = dcmtk(
        "echoscu", "-aet", "ESH_CT1", "-aec", "OTHERPACS", "127.0.0.1", str(netpacs.port)
    )
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr


def test_storescu_series_is_found_at_study_series_and_image_level(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "in", 3, PatientID="EDGH42", PatientName="Smith^Jo")
    out = store(netpacs, *files)
    assert "Store Failed" not in out
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID

    studies = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "PatientID=EDGH42",
        "StudyInstanceUID",
        "IssuerOfPatientID",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
    )
    assert [s.StudyInstanceUID for s in studies] == [study_uid]
    # EDGH_CT1 belongs to East Sussex Healthcare (RXC): the issuer of its hospital numbers
    assert studies[0].IssuerOfPatientID == "RXC"
    assert int(studies[0].NumberOfStudyRelatedInstances) == 3
    assert studies[0].ModalitiesInStudy == "CT"

    series = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study_uid}",
        "SeriesInstanceUID",
        "Modality",
    )
    assert len(series) == 1 and series[0].Modality == "CT"

    images = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study_uid}",
        "SOPInstanceUID",
        "InstanceNumber",
    )
    assert sorted(int(i.InstanceNumber) for i in images) == [1, 2, 3]


def test_patient_root_find_matches_names_case_insensitively(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    store(netpacs, write(ct_dataset(PatientID="P77", PatientName="Jones^Mary"), tmp_path / "a.dcm"))
    patients = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        "PatientName=jones*",
        "PatientID",
        model="-P",
    )
    assert [p.PatientID for p in patients] == ["P77"]


def test_find_answers_a_utf8_name_in_utf8_with_its_character_set(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    ds = ct_dataset(PatientID="P78", PatientName="Müller^Jürgen", StudyDescription="Thorax")
    ds.SpecificCharacterSet = "ISO_IR 192"
    store(netpacs, write(ds, tmp_path / "u.dcm"))
    studies = find(
        netpacs,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "PatientID=P78",
        "PatientName",
        "StudyDescription",
        "StudyInstanceUID",
        "NumberOfStudyRelatedInstances",
    )
    assert len(studies) == 1
    assert studies[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(studies[0].PatientName) == "Müller^Jürgen"
    assert studies[0].StudyInstanceUID == ds.StudyInstanceUID
    assert int(studies[0].NumberOfStudyRelatedInstances) == 1


def test_resend_of_identical_instance_is_success_without_a_second_copy(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    f = write(ct_dataset(), tmp_path / "one.dcm")
    before = len(stored_blobs(netpacs))
    assert "Store Failed" not in store(netpacs, f)
    assert "Store Failed" not in store(netpacs, f)
    assert len(stored_blobs(netpacs)) == before + 1


def test_same_sop_instance_uid_with_different_content_is_refused(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    ds = ct_dataset()
    first = write(ds, tmp_path / "first.dcm")
    ds.PatientName = "Different^Person"
    second = write(ds, tmp_path / "second.dcm")
    before = set(stored_blobs(netpacs))
    assert "Store Failed" not in store(netpacs, first)
    out = store(netpacs, second)
    assert "Store Response (Error: CannotUnderstand)" in out, out  # 0xC004, named by DCMTK
    (blob,) = set(stored_blobs(netpacs)) - before
    assert dataset_bytes(blob) == dataset_bytes(first)
    assert "already stored with different content" in netpacs.log()


def _send_raw(port: int, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title="ESH_CT1")
    ae.add_requested_context(CTImageStorage)
    assoc = associate(ae, "127.0.0.1", port, ae_title="NETPACS")
    assert assoc.is_established
    for ds in datasets:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def test_invalid_objects_are_refused_without_breaking_the_association(
    netpacs: Netpacs,
) -> None:
    no_study = ct_dataset()
    del no_study.StudyInstanceUID
    bad_uid = ct_dataset(SeriesInstanceUID="1.2.03.4")
    good = ct_dataset()
    statuses = _send_raw(netpacs.port, [no_study, bad_uid, good])
    assert statuses == [0xC001, 0xC002, 0x0000]
    images = _find_images(netpacs.port, "RTP_WS1")  # sent by ESH_CT1, East Surrey's
    assert good.SOPInstanceUID in images
    assert not {no_study.SOPInstanceUID, bad_uid.SOPInstanceUID} & images


def _find_images(port: int, calling_ae: str = "RXC_WS1") -> set[str]:
    """SOP Instance UIDs a workstation finds (its trust's patients only, issue 5)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = associate(ae, "127.0.0.1", port, ae_title="NETPACS")
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.SOPInstanceUID = ""
    found = {
        str(i.SOPInstanceUID)
        for status, i in assoc.send_c_find(ident, PatientRootQueryRetrieveInformationModelFind)
        if status and status.Status == 0xFF00 and i is not None
    }
    assoc.release()
    return found


def test_movescu_sends_a_study_to_a_region_workstation(
    netpacs: Netpacs, storescp: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "in", 4)
    store(netpacs, *files)
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    result = dcmtk(
        "movescu",
        "-S",
        "-aet",
        "RXC_WS1",
        "-aec",
        "NETPACS",
        "-aem",
        "RTP_WS1",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "127.0.0.1",
        str(netpacs.port),
    )
    assert result.returncode == 0, result.stderr
    received = sorted(storescp.iterdir())
    assert len(received) == 4
    sent = {dataset_bytes(f) for f in files}
    assert {dataset_bytes(f) for f in received} == sent


def test_move_resends_on_a_new_association_when_the_workstation_aborts_mid_transfer(
    netpacs: Netpacs, workstation_port: int, tmp_path: Path
) -> None:
    """A workstation that breaks off the first association after one object still gets
    the whole study: the objects not confirmed go again on a new association."""
    files = write_series(tmp_path / "in", 4)
    store(netpacs, *files)
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    received: dict[str, bytes] = {}
    associations: list[int] = []

    def on_store(event: evt.Event) -> int:
        if len(associations) == 1 and len(received) == 1:
            event.assoc.abort()  # the first association breaks with the second object
            return 0xA700
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0

    def on_open(event: evt.Event) -> None:
        associations.append(1)

    ae = AE(ae_title="RTP_WS1")
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", workstation_port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_ACCEPTED, on_open)],
    )
    try:
        result = dcmtk(
            "movescu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-aem", "RTP_WS1",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "127.0.0.1", str(netpacs.port),
        )  # fmt: skip
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert len(associations) == 2
    assert set(received) == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}


def test_move_to_an_unknown_destination_fails_with_a801(netpacs: Netpacs, tmp_path: Path) -> None:
    store(netpacs, write(ct_dataset(), tmp_path / "x.dcm"))
    result = dcmtk(
        "movescu",
        "-v",
        "-S",
        "-aet",
        "RXC_WS1",
        "-aec",
        "NETPACS",
        "-aem",
        "NOWHERE",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID=1.2.3",
        "127.0.0.1",
        str(netpacs.port),
    )
    assert "Refused: MoveDestinationUnknown" in result.stdout + result.stderr  # 0xA801


def test_getscu_retrieves_a_series_byte_identical(netpacs: Netpacs, tmp_path: Path) -> None:
    files = write_series(tmp_path / "in", 3)
    store(netpacs, *files)
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu",
        "-S",
        "-aet",
        "RXC_WS1",
        "-aec",
        "NETPACS",
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        f"SeriesInstanceUID={series_uid}",
        "127.0.0.1",
        str(netpacs.port),
    )
    assert result.returncode == 0, result.stderr
    assert {dataset_bytes(f) for f in out.iterdir()} == {dataset_bytes(f) for f in files}


def test_c_get_of_an_unknown_study_completes_with_no_sub_operations(netpacs: Netpacs) -> None:
    ae = AE(ae_title="RXC_WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    assoc = associate(ae, "127.0.0.1", netpacs.port, ae_title="NETPACS")
    ident = pydicom.Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = "1.2.3.4.5"
    responses = list(assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet))
    assoc.release()
    assert [int(s.Status) for s, _ in responses] == [0x0000]
    assert int(responses[-1][0].NumberOfCompletedSuboperations) == 0


@pytest.mark.parametrize("n_assoc", [3])
def test_parallel_associations_store_every_instance(
    netpacs: Netpacs, tmp_path: Path, n_assoc: int
) -> None:
    groups = [write_series(tmp_path / f"g{i}", 10) for i in range(n_assoc)]
    sent = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for g in groups for f in g
    }
    before = len(stored_blobs(netpacs))
    threads = [threading.Thread(target=store, args=(netpacs, *g)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sent <= _find_images(netpacs.port)
    assert len(stored_blobs(netpacs)) == before + 10 * n_assoc

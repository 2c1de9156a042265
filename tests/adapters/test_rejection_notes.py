"""IHE IOCM rejection notes (issue 15): a Key Object Selection rejection note stored
with storescu (or STOW-RS) hides the instances it names from QIDO-RS, C-FIND and
WADO-RS; a note for another trust's instances has no effect; an administrator lists
the rejections and undoes one, and the instances come back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests.conftest import Netpacs, dcmtk, write_region
from tests.factories import write, write_series

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netpacs]:
    tmp = tmp_path_factory.mktemp("rejections")
    srv = Netpacs(
        data_dir=tmp / "data",
        database_url=f"sqlite:///{tmp / 'index.sqlite'}",
        region_file=write_region(tmp / "region.toml", {}),
    )
    srv.start()
    yield srv
    srv.stop()


def _code(value: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return code


def rejection_note(
    images: list[pydicom.Dataset],
    code: tuple[str, str] = ("113001", "Rejected for Quality Reasons"),
) -> pydicom.Dataset:
    """A KOS rejection note (PS3.3 A.35.4, IHE IOCM) naming ``images`` (one series)."""
    first = images[0]
    ds = Dataset()
    ds.SOPClassUID = KOS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = first.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate"):
        if keyword in first:
            setattr(ds, keyword, getattr(first, keyword))
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime = first.StudyDate, first.StudyTime
    ds.AccessionNumber, ds.StudyID = first.AccessionNumber, first.StudyID
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "KO", 999, 1
    ds.ContentDate, ds.ContentTime = "20261202", "120000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code(*code)])
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.ContentTemplateSequence = Sequence([Dataset()])
    ds.ContentTemplateSequence[0].MappingResource = "DCMR"
    ds.ContentTemplateSequence[0].TemplateIdentifier = "2010"
    content = []
    for image in images:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        ref = _ref(str(image.SOPClassUID), str(image.SOPInstanceUID))
        item.ReferencedSOPSequence = Sequence([ref])
        content.append(item)
    ds.ContentSequence = Sequence(content)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence(
        [_ref(str(i.SOPClassUID), str(i.SOPInstanceUID)) for i in images]
    )
    study = Dataset()
    study.StudyInstanceUID = first.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    return ds


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_instance
    return ref


def _storescu(server: Netpacs, path: Path, aet: str) -> str:
    result = dcmtk(
        "storescu", "-v", "-aet", aet, "-aec", "NETPACS", "127.0.0.1", str(server.port), str(path)
    )
    return result.stdout + result.stderr


def _qido_instances(server: Netpacs, study: str) -> list[str]:
    response = server.http.get(f"{server.dicomweb_url}/studies/{study}/instances")
    assert response.status_code in (200, 204), response.text
    if response.status_code == 204:
        return []
    return sorted(i["00080018"]["Value"][0] for i in response.json())


def _cfind_images(server: Netpacs, tmp_path: Path, study: str) -> list[str]:
    out = tmp_path / f"find-{generate_uid()[-8:]}"
    out.mkdir()
    result = dcmtk(
        "findscu", "-S", "-aet", "RXC_WS1", "-aec", "NETPACS", "-X", "-od", str(out),
        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
        "-k", "SeriesInstanceUID", "-k", "SOPInstanceUID",
        "127.0.0.1", str(server.port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in out.glob("rsp*.dcm"))


def _wado_status(server: Netpacs, image: pydicom.Dataset) -> int:
    url = (
        f"{server.dicomweb_url}/studies/{image.StudyInstanceUID}/series/"
        f"{image.SeriesInstanceUID}/instances/{image.SOPInstanceUID}"
    )
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    return server.http.get(url, headers={"Accept": accept}).status_code


def _rejection_of(server: Netpacs, note: pydicom.Dataset) -> dict[str, object]:
    response = server.http.get(f"{server.base_url}/api/rejections")
    assert response.status_code == 200, response.text
    (found,) = [
        r
        for r in response.json()["rejections"]
        if r["note_sop_instance_uid"] == note.SOPInstanceUID
    ]
    return found


def test_a_rejection_note_stored_by_storescu_hides_its_instances_until_an_admin_undoes_it(
    server: Netpacs, tmp_path: Path
) -> None:
    # Three CT images of an East Sussex (RXC) patient, from East Sussex's EDGH_CT1.
    paths = write_series(tmp_path / "ct", 3, PatientID="REJ0001", IssuerOfPatientID="RXC")
    server.store(*paths, aet="EDGH_CT1")
    images = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    study = str(images[0].StudyInstanceUID)
    uids = sorted(str(i.SOPInstanceUID) for i in images)
    assert _qido_instances(server, study) == uids

    note = rejection_note(images[:2])
    out = _storescu(server, write(note, tmp_path / "note.dcm"), "EDGH_CT1")
    assert "Received Store Response (Success)" in out, out

    kept = [str(images[2].SOPInstanceUID)]
    assert _qido_instances(server, study) == kept  # the note itself is hidden too
    assert _cfind_images(server, tmp_path, study) == kept
    assert _wado_status(server, images[0]) == 404
    assert _wado_status(server, images[2]) == 200
    rejection = _rejection_of(server, note)
    assert rejection["code_value"] == "113001"
    assert (rejection["referenced"], rejection["rejected"]) == (2, 2)

    # A clinician may not undo it; without a reason, neither may an administrator.
    undo = f"{server.base_url}/api/rejections/{rejection['id']}/undo"
    clinician = server.auth("rxc.clinician")
    assert server.http.post(undo, json={"reason": "wrong note"}, headers=clinician).status_code in (
        403,
        404,
    )
    assert server.http.post(undo, json={"reason": ""}).status_code == 400
    response = server.http.post(undo, json={"reason": "rejected the wrong images"})
    assert response.status_code == 200, response.text
    assert response.json()["restored"] == 2

    assert _qido_instances(server, study) == uids
    assert _cfind_images(server, tmp_path, study) == uids
    assert _wado_status(server, images[0]) == 200
    assert server.http.post(undo, json={"reason": "once more, please"}).status_code == 409
    audit = server.http.get(
        f"{server.base_url}/api/audit", params={"patient_id": "REJ0001", "issuer": "RXC"}
    )
    assert audit.status_code == 200, audit.text
    assert f"rejection note {note.SOPInstanceUID}" in audit.text  # by EDGH_CT1
    assert "undone: 2 instances restored; reason: rejected the wrong images" in audit.text


def test_a_note_from_another_trusts_modality_rejects_nothing_of_this_trust(
    server: Netpacs, tmp_path: Path
) -> None:
    paths = write_series(tmp_path / "ct", 2, PatientID="REJ0002", IssuerOfPatientID="RXC")
    server.store(*paths, aet="EDGH_CT1")  # East Sussex's
    images = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    study = str(images[0].StudyInstanceUID)
    uids = sorted(str(i.SOPInstanceUID) for i in images)

    note = rejection_note(images, ("113037", "Rejected for Patient Safety Reasons"))
    _storescu(server, write(note, tmp_path / "note.dcm"), "ESH_CT1")  # Surrey and Sussex's

    assert _qido_instances(server, study) == uids
    assert _cfind_images(server, tmp_path, study) == uids
    rejection = _rejection_of(server, note)
    assert (rejection["referenced"], rejection["rejected"]) == (2, 0)

"""From the wire to the wire: objects a modality sends over DIMSE (DCMTK storescu) are
found and retrieved over HTTP from a real ``netpacs serve`` (uvicorn, real sockets).

The HTTP routes themselves are tested in-process (the other modules here); these few
tests keep the path through every process of a running server. One server per module
and backend: each test has its own patient.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.uid import UID, RLELossless, generate_uid

from netpacs.synthetic import make_ct_series
from tests.conftest import Netpacs, dcmtk
from tests.http.conftest import write_and_send_ct
from tests.http.test_wado import data_set, parts

OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.fixture(scope="module")
def netpacs(module_netpacs: Netpacs) -> Netpacs:
    return module_netpacs


def test_a_series_sent_by_storescu_is_found_by_qido_and_retrieved_byte_for_byte(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    # No Issuer of Patient ID in the header: the sending modality's trust (RXC) is its issuer.
    ct = write_and_send_ct(netpacs, tmp_path / "ct", 3, rows=32, columns=32, patient_id="WIRE001")
    client = DICOMwebClient(url=netpacs.dicomweb_url, headers=netpacs.auth())
    (study,) = client.search_for_studies(
        search_filters={"PatientID": "WIRE001", "IssuerOfPatientID": "RXC"}
    )
    assert study["0020000D"]["Value"] == [ct.study_uid]
    assert study["00201208"]["Value"] == [3]

    sent = {str(pydicom.dcmread(p).SOPInstanceUID): data_set(p.read_bytes()) for p in ct.paths}
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    got = parts(
        netpacs.http.get(
            f"{netpacs.dicomweb_url}/studies/{ct.study_uid}", headers={"Accept": accept}
        )
    )
    by_uid = {
        str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(body)).SOPInstanceUID): data_set(body)
        for _, body in got
    }
    assert by_uid == sent
    assert [str(d.SOPInstanceUID) for d in client.retrieve_study(ct.study_uid)] == ct.sop_uids


def test_frames_of_an_object_sent_rle_compressed_come_as_stored_or_decoded(
    netpacs: Netpacs, tmp_path: Path
) -> None:
    slices = list(make_ct_series(3, rows=32, columns=24, patient_id="WIRE002", issuer="RXC"))
    ds = slices[0]
    pixels = np.stack([s.pixel_array for s in slices])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    # Multi-frame Grayscale Word Secondary Capture Image Storage
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7.3")
    ds.NumberOfFrames = 3
    ds.compress(RLELossless, pixels)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    # -xr: propose RLE Lossless, so that the object is stored as it was made.
    sent = dcmtk(
        "storescu", "-xr", "-aet", "EDGH_CT1", "-aec", "NETPACS",
        "127.0.0.1", str(netpacs.port), str(path),
    )  # fmt: skip
    assert sent.returncode == 0 and "Failed" not in sent.stderr, sent.stderr

    url = (
        f"{netpacs.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/3,1"
    )
    stored = [pydicom.encaps.get_frame(ds.PixelData, i, number_of_frames=3) for i in (2, 0)]
    as_stored = parts(netpacs.http.get(url, headers={"Accept": OHIF_FRAMES}))
    assert as_stored == [(f"image/dicom-rle; transfer-syntax={RLELossless}", f) for f in stored]
    client = DICOMwebClient(url=netpacs.dicomweb_url, headers=netpacs.auth())
    decoded = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[3, 1]
    )
    expected = ds.pixel_array
    assert decoded == [expected[2].tobytes(), expected[0].tobytes()]


def test_the_server_answers_a_request_without_a_token_401_and_one_with_a_token(
    netpacs: Netpacs,
) -> None:
    studies = f"{netpacs.dicomweb_url}/studies"
    refused = httpx.get(studies)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(studies, headers=netpacs.auth("rxc.clinician")).status_code in (200, 204)

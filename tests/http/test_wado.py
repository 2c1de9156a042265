"""WADO-RS round trips with dicomweb-client: objects, metadata, frames and bulk data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pydicom.encaps
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid

from netpacs.domain.dicom.part10 import read_file_meta
from netpacs.synthetic import make_ct_series
from tests.conftest import HttpApp
from tests.http.conftest import StoredSeries

PUBLIC_URL = "http://pacs.example.nhs.uk"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer (RFC 2046 5.1)."""
    assert response.status_code == 200, response.text
    boundary = re.search(r"boundary=\"?([^\";]+)", response.headers["content-type"])
    assert boundary is not None
    delimiter = b"\r\n--" + boundary.group(1).encode()
    body = b"\r\n" + response.content
    assert body.rstrip().endswith(delimiter + b"--")
    out = []
    for chunk in body.split(delimiter)[1:-1]:
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append((fields["Content-Type"], content))
    return out


def data_set(part10: bytes) -> bytes:
    return part10[read_file_meta(part10).dataset_offset :]


@pytest.fixture
def http_settings() -> dict[str, Any]:
    """A public URL other than the Host of the requests: the BulkDataURIs name it."""
    return {"public_url": PUBLIC_URL}


@pytest.fixture
def client(http_app: HttpApp) -> DICOMwebClient:
    return http_app.dicomweb()


@pytest.fixture
def rle_multiframe(http_app: HttpApp, ct_series: StoredSeries, tmp_path: Path) -> pydicom.Dataset:
    """A 3-frame RLE Lossless object in the study of ``ct_series``, from a modality."""
    slices = list(
        make_ct_series(
            3,
            rows=32,
            columns=24,
            study_uid=ct_series.study_uid,
            patient_id="RXC0000001",  # the study's patient: another would be refused
            issuer="RXC",
        )
    )
    ds = slices[0]
    pixels = np.stack([s.pixel_array for s in slices])
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    # Multi-frame Grayscale Word Secondary Capture Image Storage
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7.3")
    ds.NumberOfFrames = 3
    ds.compress(RLELossless, pixels)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    http_app.store(path)  # as a modality sends it: RLE Lossless, as made
    return pydicom.dcmread(path)


def test_retrieve_gives_the_stored_objects_byte_for_byte_at_every_level(
    http_app: HttpApp, ct_series: StoredSeries, client: DICOMwebClient
) -> None:
    sent = {
        str(pydicom.dcmread(p).SOPInstanceUID): data_set(p.read_bytes()) for p in ct_series.paths
    }
    study, series = ct_series.study_uid, ct_series.series_uid
    url = f"{http_app.dicomweb_url}/studies/{study}/series/{series}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    got = parts(http_app.http.get(url, headers={"Accept": accept}))
    assert [ct.split(";")[0] for ct, _ in got] == ["application/dicom"] * len(sent)
    by_uid = {str(pydicom.dcmread(_file(b)).SOPInstanceUID): data_set(b) for _, b in got}
    assert by_uid == sent
    assert [str(d.SOPInstanceUID) for d in client.retrieve_study(study)] == ct_series.sop_uids
    one = client.retrieve_instance(study, series, ct_series.sop_uids[2])
    assert one.PixelData == pydicom.dcmread(ct_series.paths[2]).PixelData


def _file(raw: bytes) -> pydicom.filebase.DicomBytesIO:
    return pydicom.filebase.DicomBytesIO(raw)


def test_series_metadata_and_its_bulk_data_uris_rebuild_the_objects_sent(
    ct_series: StoredSeries, client: DICOMwebClient
) -> None:
    metadata = client.retrieve_series_metadata(ct_series.study_uid, ct_series.series_uid)
    assert [m["00080018"]["Value"][0] for m in metadata] == ct_series.sop_uids
    uris: list[str] = []

    def fetch(_tag: str, _vr: str, uri: str) -> bytes:
        uris.append(uri)
        return bytes(client.retrieve_bulkdata(uri)[0])

    for meta, path in zip(metadata, ct_series.paths, strict=True):
        rebuilt = pydicom.Dataset.from_json(meta, bulk_data_uri_handler=fetch)
        sent = pydicom.dcmread(path)
        assert rebuilt == sent
        assert rebuilt.PixelData == sent.PixelData
        assert rebuilt.StudyDescription == sent.StudyDescription  # study level, from the header
    assert len(uris) == len(ct_series.paths)
    assert all(u.startswith(f"{PUBLIC_URL}/dicomweb/studies/") for u in uris)


def test_study_and_instance_metadata_cover_their_scope(
    ct_series: StoredSeries, client: DICOMwebClient
) -> None:
    study = client.retrieve_study_metadata(ct_series.study_uid)
    assert [m["00080018"]["Value"][0] for m in study] == ct_series.sop_uids
    sop = ct_series.sop_uids[1]
    one = client.retrieve_instance_metadata(ct_series.study_uid, ct_series.series_uid, sop)
    assert one == study[1]


def test_frames_of_uncompressed_pixel_data_are_the_raw_pixels(
    http_app: HttpApp, ct_series: StoredSeries, client: DICOMwebClient
) -> None:
    study, series, sop = ct_series.study_uid, ct_series.series_uid, ct_series.sop_uids[0]
    pixels = pydicom.dcmread(ct_series.paths[0]).PixelData
    (frame,) = client.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
    assert frame == pixels
    url = f"{http_app.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}/frames/1"
    (ohif,) = parts(http_app.http.get(url, headers={"Accept": OHIF_FRAMES}))
    assert ohif == (f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}", pixels)


def test_compressed_frames_come_as_stored_with_transfer_syntax_star_or_decoded_by_default(
    http_app: HttpApp, rle_multiframe: pydicom.Dataset, client: DICOMwebClient
) -> None:
    ds = rle_multiframe
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    url = f"{http_app.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}/frames/3,1"
    stored = [pydicom.encaps.get_frame(ds.PixelData, i, number_of_frames=3) for i in (2, 0)]
    as_stored = parts(http_app.http.get(url, headers={"Accept": OHIF_FRAMES}))
    assert as_stored == [(f"image/dicom-rle; transfer-syntax={RLELossless}", f) for f in stored]
    decoded = client.retrieve_instance_frames(study, series, sop, frame_numbers=[3, 1])
    expected = ds.pixel_array
    assert decoded == [expected[2].tobytes(), expected[0].tobytes()]
    # The whole object: as stored when asked for *, decompressed when asked for EVRLE.
    kept = client.retrieve_instance(study, series, sop, media_types=(("application/dicom", "*"),))
    assert kept.file_meta.TransferSyntaxUID == RLELossless
    assert kept.PixelData == ds.PixelData
    plain = client.retrieve_instance(
        study, series, sop, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert plain.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(plain.pixel_array, expected)
    # The same object in another syntax, not a new one.
    assert plain.SOPInstanceUID == plain.file_meta.MediaStorageSOPInstanceUID == sop


def test_bulk_data_of_encapsulated_pixel_data_is_its_frames_as_stored(
    http_app: HttpApp, rle_multiframe: pydicom.Dataset, client: DICOMwebClient
) -> None:
    ds = rle_multiframe
    meta = client.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    uri = meta["7FE00010"]["BulkDataURI"]
    got = parts(
        http_app.http.get(uri, headers={"Accept": "multipart/related; type=image/dicom-rle"})
    )
    assert [b for _, b in got] == list(
        pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=3)
    )


BAD_REQUESTS = [
    ("/studies/1.2.3.4", "", 404),
    ("/studies/{study}/series/1.2.3.4", "", 404),
    ("/studies/{study}/series/{series}/instances/1.2.3.4/metadata", "", 404),
    ("/studies/not-a-uid/metadata", "", 400),
    ("/studies/{study}/series/{series}/instances/{sop}/frames/2", "", 404),
    ("/studies/{study}/series/{series}/instances/{sop}/frames/0", "", 400),
    ("/studies/{study}/series/{series}/instances/{sop}/frames/1,,x", "", 400),
    ("/studies/{study}/series/{series}/instances/{sop}/bulk/00100010", "", 404),
    ("/studies/{study}/series/{series}/instances/{sop}/bulk/7FE00010?offset=3", "", 404),
    ("/studies/{study}/series/{series}/instances/{sop}/bulk/zz", "", 400),
    ("/studies/{study}/metadata", "application/dicom+xml", 406),
    ("/studies/{study}", "application/pdf", 406),
    (
        "/studies/{study}",
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        406,
    ),
    ("/studies/{study}/series/{series}/instances/{sop}/frames/1", "image/jpeg", 406),
]


def test_bad_requests_get_a_status_and_a_message(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    wrong = []
    for suffix, accept, status in BAD_REQUESTS:
        path = suffix.format(
            study=ct_series.study_uid, series=ct_series.series_uid, sop=ct_series.sop_uids[0]
        )
        headers = {"Accept": accept} if accept else {}
        response = http_app.http.get(http_app.dicomweb_url + path, headers=headers)
        if response.status_code != status or not response.json().get("message"):
            wrong.append((suffix, accept, response.status_code, response.text[:200]))
    assert wrong == []

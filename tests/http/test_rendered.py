"""WADO-RS /rendered and /thumbnail through netpacs's HTTP app (PS3.18 10.4.1.1.3, 8.3.5)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from netpacs.synthetic import write_ct_series
from tests.conftest import HttpApp
from tests.http.conftest import StoredSeries

PNG = {"accept": "image/png"}


def _image(response: httpx.Response, media_type: str = "image/png") -> npt.NDArray[np.uint8]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    image = Image.open(io.BytesIO(response.content))
    assert image.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[media_type]
    return np.asarray(image)


def _url(server: HttpApp, ct: StoredSeries, sop: int = 0) -> str:
    return (
        f"{server.dicomweb_url}/studies/{ct.study_uid}/series/{ct.series_uid}"
        f"/instances/{ct.sop_uids[sop]}"
    )


def test_rendered_and_thumbnails_of_a_ct_series(http_app: HttpApp, ct_series: StoredSeries) -> None:
    instance = _url(http_app, ct_series)
    with http_app.client() as client:
        jpeg = _image(client.get(f"{instance}/rendered"), "image/jpeg")
        assert jpeg.shape == (64, 64) and jpeg.std() > 10  # the phantom, not a blank

        # A window given as a parameter: LINEAR_EXACT is exact to compute here.
        stored = pydicom.dcmread(ct_series.paths[0]).pixel_array.astype(np.float64)
        hu = stored * 1.0 - 1024.0
        expected = np.clip(np.rint(((hu - 100.0) / 300.0 + 0.5) * 255.0), 0, 255)
        windowed = _image(
            client.get(
                f"{instance}/rendered", params={"window": "100,300,linear-exact"}, headers=PNG
            )
        )
        assert windowed.shape == (64, 64)
        assert np.abs(windowed.astype(np.int16) - expected).max() <= 1

        # A narrow window saturates: every pixel black or white.
        narrow = _image(
            client.get(f"{instance}/rendered", params={"window": "40,1,linear"}, headers=PNG)
        )
        assert set(np.unique(narrow)) <= {0, 255} and len(np.unique(narrow)) == 2

        # The object's own window (40/400) differs from the parameter's.
        own = _image(client.get(f"{instance}/rendered", headers=PNG))
        assert not np.array_equal(own, windowed)

        small = _image(
            client.get(f"{instance}/frames/1/rendered", params={"viewport": "32,16"}), "image/jpeg"
        )
        assert small.shape == (16, 16)

        series = (
            f"{http_app.dicomweb_url}/studies/{ct_series.study_uid}/series/{ct_series.series_uid}"
        )
        for url in (
            f"{http_app.dicomweb_url}/studies/{ct_series.study_uid}/thumbnail",
            f"{series}/thumbnail",
            f"{instance}/thumbnail",
            f"{instance}/frames/1/thumbnail",
        ):
            thumb = _image(client.get(url, headers={"accept": "image/*"}), "image/jpeg")
            assert thumb.shape == (128, 128) and thumb.std() > 10
        assert _image(
            client.get(f"{series}/thumbnail", params={"viewport": "48,48"}), "image/jpeg"
        ).shape == (48, 48)
        assert _image(client.get(f"{series}/rendered"), "image/jpeg").shape == (64, 64)


def _variant(
    path: Path, out: Path, *, transfer_syntax: str | None = None, mono1: bool = False
) -> str:
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if mono1:
        ds.PhotometricInterpretation = "MONOCHROME1"
    if transfer_syntax:
        ds.compress(transfer_syntax)
    ds.save_as(out, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def _stow(server: HttpApp, *paths: Path) -> None:
    boundary = "netpacs-test-boundary"
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Type: application/dicom\r\n\r\n"
            + p.read_bytes()
            + b"\r\n"
            for p in paths
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = server.http.post(
        f"{server.dicomweb_url}/studies", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text


def _structured_report(like: Path, out: Path) -> tuple[str, str]:
    ref = pydicom.dcmread(like, stop_before_pixels=True)
    ds = Dataset()
    for keyword in (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
    ):
        if keyword in ref:
            setattr(ds, keyword, getattr(ref, keyword))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_monochrome1_inverts_and_compressed_objects_render_as_their_uncompressed_twin(
    http_app: HttpApp, tmp_path: Path
) -> None:
    original = write_ct_series(tmp_path / "ct", 1, rows=48, columns=40, issuer="RXC")[0]
    head = pydicom.dcmread(original, stop_before_pixels=True)
    sops = {
        "rle": _variant(original, tmp_path / "rle.dcm", transfer_syntax=RLELossless),
        "j2k": _variant(original, tmp_path / "j2k.dcm", transfer_syntax=JPEG2000Lossless),
        "mono1": _variant(original, tmp_path / "mono1.dcm", mono1=True),
    }
    sr_series, sr_sop = _structured_report(original, tmp_path / "sr.dcm")
    http_app.store(original, tmp_path / "mono1.dcm", tmp_path / "sr.dcm")
    _stow(http_app, tmp_path / "rle.dcm", tmp_path / "j2k.dcm")  # arrive compressed
    series = (
        f"{http_app.dicomweb_url}/studies/{head.StudyInstanceUID}/series/{head.SeriesInstanceUID}"
    )
    with http_app.client() as client:
        plain = _image(
            client.get(f"{series}/instances/{head.SOPInstanceUID}/rendered", headers=PNG)
        )
        assert plain.shape == (48, 40) and plain.std() > 10
        for name in ("rle", "j2k"):
            twin = _image(client.get(f"{series}/instances/{sops[name]}/rendered", headers=PNG))
            assert np.array_equal(twin, plain), name
        inverted = _image(client.get(f"{series}/instances/{sops['mono1']}/rendered", headers=PNG))
        assert np.array_equal(inverted, 255 - plain)

        # A series without images has no thumbnail; an SR is not rendered as an image.
        sr = f"{http_app.dicomweb_url}/studies/{head.StudyInstanceUID}/series/{sr_series}"
        response = client.get(f"{sr}/thumbnail")
        assert response.status_code == 404 and "no images" in response.json()["message"]
        response = client.get(f"{sr}/instances/{sr_sop}/rendered")
        assert response.status_code == 406 and "no pixel data" in response.json()["message"]
        # The study's thumbnail skips to its series with images.
        study_thumb = client.get(
            f"{http_app.dicomweb_url}/studies/{head.StudyInstanceUID}/thumbnail"
        )
        assert _image(study_thumb, "image/jpeg").shape == (128, 107)


def test_bad_requests_are_4xx_with_a_message(http_app: HttpApp, ct_series: StoredSeries) -> None:
    root = http_app.dicomweb_url
    study, series = ct_series.study_uid, ct_series.series_uid
    instance = _url(http_app, ct_series)
    cases: list[tuple[str, dict[str, str], dict[str, str], int, str]] = [
        (f"{root}/studies/1.2.3.4/rendered", {}, {}, 404, "no study 1.2.3.4"),
        (f"{root}/studies/{study}/series/1.2.3/thumbnail", {}, {}, 404, "no series 1.2.3"),
        (
            f"{root}/studies/{study}/series/{series}/instances/1.2.3/rendered",
            {},
            {},
            404,
            "no instance 1.2.3",
        ),
        (f"{root}/studies/not-a-uid/thumbnail", {}, {}, 400, "not a valid Study"),
        (f"{instance}/rendered", {}, {"accept": "application/dicom"}, 406, "image/jpeg"),
        (f"{instance}/rendered", {}, {"accept": "image/png;q=0, image/jpeg;q=0"}, 406, "cannot"),
        (f"{instance}/rendered", {"window": "abc,400,linear"}, {}, 400, "window"),
        (f"{instance}/rendered", {"window": "40,0,linear"}, {}, 400, "window"),
        (f"{instance}/rendered", {"window": "40,400,cubic"}, {}, 400, "window"),
        (f"{instance}/rendered", {"viewport": "0,0"}, {}, 400, "viewport"),
        (f"{instance}/rendered", {"viewport": "64"}, {}, 400, "viewport"),
        (f"{instance}/rendered", {"viewport": "99999,10"}, {}, 400, "viewport"),
        (f"{instance}/rendered", {"quality": "0"}, {}, 400, "quality"),
        (f"{instance}/rendered", {"quality": "high"}, {}, 400, "quality"),
        (f"{instance}/frames/2/rendered", {}, {}, 404, "no frame 2"),
        (f"{instance}/frames/1,2/rendered", {}, {}, 400, "one frame"),
        (f"{instance}/frames/0/thumbnail", {}, {}, 400, "frame"),
    ]
    with http_app.client() as client:
        for url, params, headers, status, words in cases:
            response = client.get(url, params=params, headers=headers)
            assert response.status_code == status, (url, params, headers, response.text)
            assert words in response.json()["message"], (url, params, response.text)
        png = client.get(f"{instance}/rendered", params={"accept": "image/png"})
        assert png.headers["content-type"] == "image/png"
        png = client.get(f"{instance}/rendered", headers={"accept": "image/png, image/*;q=0.5"})
        assert png.headers["content-type"] == "image/png"
        jpeg = client.get(f"{instance}/rendered", params={"quality": "10"})
        assert jpeg.headers["content-type"] == "image/jpeg"

"""WADO-URI (PS3.18 9): the legacy ``?requestType=WADO`` links an EPR holds."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
from PIL import Image

from netpacs.domain.dicom.part10 import read_file_meta
from tests.conftest import HttpApp
from tests.http.conftest import StoredSeries


def wado(server: HttpApp, series: StoredSeries, index: int = 0, **params: str) -> httpx.Response:
    """GET the WADO-URI of instance ``index`` of ``series`` with extra parameters."""
    query = {
        "requestType": "WADO",
        "studyUID": series.study_uid,
        "seriesUID": series.series_uid,
        "objectUID": series.sop_uids[index],
        **params,
    }
    return server.http.get(
        f"{server.dicomweb_url}/wado", params={k: v for k, v in query.items() if v}
    )


def test_wado_uri_gives_the_stored_object_or_a_rendered_jpeg(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    got = wado(http_app, ct_series, 1, contentType="application/dicom")
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("application/dicom")
    sent = ct_series.paths[1].read_bytes()
    assert (
        got.content[read_file_meta(got.content).dataset_offset :]
        == (sent[read_file_meta(sent).dataset_offset :])
    )
    ds = pydicom.dcmread(ct_series.paths[1])
    jpeg = wado(http_app, ct_series, 1)  # contentType defaults to image/jpeg
    assert jpeg.status_code == 200, jpeg.text
    assert jpeg.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(jpeg.content))
    assert image.format == "JPEG" and image.size == (ds.Columns, ds.Rows)
    gray = np.asarray(image.convert("L"))
    assert gray.max() > gray.min()  # not blank
    small = wado(http_app, ct_series, 1, contentType="image/png", rows="32", columns="32")
    assert Image.open(io.BytesIO(small.content)).size == (32, 32)


def test_wado_uri_with_missing_or_wrong_parameters_is_refused_with_a_message(
    http_app: HttpApp, ct_series: StoredSeries
) -> None:
    cases = [
        (dict(requestType="WADO", studyUID=ct_series.study_uid), 400),
        (dict(requestType="RS", studyUID=ct_series.study_uid), 400),
        (
            dict(
                requestType="WADO",
                studyUID=ct_series.study_uid,
                seriesUID=ct_series.series_uid,
                objectUID="1.2.3.4",
            ),
            404,
        ),
    ]
    wrong = []
    for params, status in cases:
        response = http_app.http.get(f"{http_app.dicomweb_url}/wado", params=params)
        if response.status_code != status or not response.json().get("message"):
            wrong.append((params, response.status_code, response.text[:200]))
    for params, status in [
        (dict(contentType="text/html"), 406),
        (dict(frameNumber="x"), 400),
        (dict(frameNumber="2"), 404),
        (dict(windowCenter="40"), 400),
        (dict(contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.50"), 406),
    ]:
        response = wado(http_app, ct_series, 0, **params)
        if response.status_code != status or not response.json().get("message"):
            wrong.append((params, response.status_code, response.text[:200]))
    assert wrong == []

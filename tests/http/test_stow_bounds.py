"""STOW-RS against the largest object accepted (NETPACS_MAX_OBJECT_MB, here 1 MB) and
the sequence depth limit, through the HTTP application (issue 17, items 6, 9, 10).

The same bounds with gigabyte objects, a real server and its memory are in
tests/adapters/test_resource_bounds.py.
"""

from __future__ import annotations

import zlib
from typing import Any

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from netpacs.domain.dicom.part10 import build_file_meta
from tests.conftest import HttpApp
from tests.factories import ct_dataset
from tests.http.test_stow import encode, multipart, stow, values

MB = 1024 * 1024


@pytest.fixture
def http_settings() -> dict[str, Any]:
    return {"max_object_mb": 1}


def blob_files(app: HttpApp) -> set[str]:
    objects = app.data_dir / "objects"
    return {p.name for p in objects.glob("???/*")} | {p.name for p in objects.glob("tmp/*")}


def deflated_part10(ds: pydicom.Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = packer.compress(out.getvalue()) + packer.flush()
    head = build_file_meta(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=DeflatedExplicitVRLittleEndian,
    )
    return head + data + (b"\0" if len(data) % 2 else b"")


def test_a_part_larger_than_the_largest_object_is_413_naming_the_limit(
    http_app: HttpApp,
) -> None:
    small = ct_dataset()
    large = ct_dataset(Rows=1024, Columns=1024, PixelData=bytes(2 * MB))
    files = blob_files(http_app)
    answer = stow(
        http_app,
        multipart(("application/dicom", encode(small)), ("application/dicom", encode(large))),
    )
    assert answer.status_code == 413, answer.text
    message = answer.json()["message"]
    assert "part 2" in message and "NETPACS_MAX_OBJECT_MB (1 MB)" in message
    assert "1 instance(s) before it were stored" in message
    assert len(blob_files(http_app)) == len(files) + 1  # the small one only


def test_a_deflated_part_inflating_beyond_the_largest_object_fails_out_of_resources(
    http_app: HttpApp,
) -> None:
    bomb = deflated_part10(ct_dataset(Rows=2048, Columns=1024, PixelData=bytes(4 * MB)))
    assert len(bomb) < 64 * 1024
    files = blob_files(http_app)
    answer = stow(http_app, multipart(("application/dicom", bomb)))
    assert answer.status_code == 409, answer.text
    failed = values(answer.json(), "00081198")
    assert values(failed[0], "00081197") == [0xA700]
    assert answer.headers["warning"].startswith('299 netpacs "part 1: deflated data set inflates')
    assert "NETPACS_MAX_OBJECT_MB" in answer.headers["warning"]
    assert blob_files(http_app) == files


def test_a_small_deflated_part_is_stored_and_its_pixels_read_back(http_app: HttpApp) -> None:
    ds = ct_dataset(PixelData=bytes(range(128)))
    answer = stow(http_app, multipart(("application/dicom", deflated_part10(ds))))
    assert answer.status_code == 200, answer.text
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    bulk = http_app.http.get(
        f"{url}/bulk/7FE00010",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert bulk.status_code == 200 and bytes(range(128)) in bulk.content
    frame = http_app.http.get(
        f"{url}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    assert frame.status_code == 200 and bytes(range(128)) in frame.content


def test_sequences_nested_deeper_than_the_limit_fail_and_leave_no_blob(
    http_app: HttpApp,
) -> None:
    ds = ct_dataset()
    item = ds
    for _ in range(80):  # within pydicom's own recursion, beyond netpacs's 64
        inner = pydicom.Dataset()
        item.ContentSequence = [inner]
        item = inner
    files = blob_files(http_app)
    answer = stow(http_app, multipart(("application/dicom", encode(ds))))
    assert answer.status_code == 409, answer.text
    failed = values(answer.json(), "00081198")
    assert values(failed[0], "00081197") == [0xC000]
    assert "nested more than 64 deep" in answer.headers["warning"]
    assert blob_files(http_app) == files
    shallow = ct_dataset()
    shallow.ContentSequence = [pydicom.Dataset()]
    assert stow(http_app, multipart(("application/dicom", encode(shallow)))).status_code == 200

"""STOW-RS (PS3.18 10.5) through netpacs's HTTP app: dicomweb-client and raw HTTP requests."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from netpacs.adapters.http.multipart import MediaType, MultipartError, MultipartReader
from netpacs.services.spool import Spool
from tests.conftest import HttpApp
from tests.factories import ct_dataset

BOUNDARY = "netpacs-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def part10(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The data set with the file meta a Part 10 encoding needs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    part10(ds).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """A multipart/related body of (Content-Type, content) parts."""
    out = b""
    for content_type, content in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def stow(server: HttpApp, body: bytes, study: str | None = None, **headers: str) -> httpx.Response:
    url = "/dicomweb/studies" + (f"/{study}" if study else "")
    return server.http.post(url, content=body, headers={"Content-Type": STOW_TYPE, **headers})


def values(dataset: dict[str, Any], tag: str) -> list[Any]:
    return list((dataset.get(tag) or {}).get("Value") or [])


def instance_count(client: DICOMwebClient, study: str) -> int:
    return len(client.search_for_instances(study_instance_uid=study))


# -- round trips with dicomweb-client ----------------------------------------------------


def test_stored_instances_are_referenced_with_retrieve_urls_and_found_by_qido(
    http_app: HttpApp,
) -> None:
    client = http_app.dicomweb()
    study, series = generate_uid(), generate_uid()
    datasets = [
        part10(ct_dataset(StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=i + 1))
        for i in range(3)
    ]
    response = client.store_instances(datasets)

    # dicomweb-client sends "Host: 127.0.0.1" without the port: compare paths only.
    assert response.RetrieveURL.endswith(f"/dicomweb/studies/{study}")
    assert "FailedSOPSequence" not in response
    referenced = {item.ReferencedSOPInstanceUID: item for item in response.ReferencedSOPSequence}
    assert set(referenced) == {ds.SOPInstanceUID for ds in datasets}
    first = referenced[datasets[0].SOPInstanceUID]
    assert first.ReferencedSOPClassUID == datasets[0].SOPClassUID
    assert first.RetrieveURL.endswith(
        f"/dicomweb/studies/{study}/series/{series}/instances/{datasets[0].SOPInstanceUID}"
    )
    found = client.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    assert sorted(values(f, "00080018")[0] for f in found) == sorted(referenced)


def test_resend_of_identical_instance_is_success_and_stored_once(http_app: HttpApp) -> None:
    client = http_app.dicomweb()
    ds = part10(ct_dataset())
    client.store_instances([ds])
    again = client.store_instances([ds])

    assert [i.ReferencedSOPInstanceUID for i in again.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    assert instance_count(client, ds.StudyInstanceUID) == 1


def test_instance_of_another_study_than_the_url_is_refused_and_not_stored(
    http_app: HttpApp,
) -> None:
    client = http_app.dicomweb()
    study = generate_uid()
    own, foreign = part10(ct_dataset(StudyInstanceUID=study)), part10(ct_dataset())
    response = client.store_instances([own, foreign], study_instance_uid=study)

    assert [i.ReferencedSOPInstanceUID for i in response.ReferencedSOPSequence] == [
        own.SOPInstanceUID
    ]
    (failed,) = response.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == foreign.SOPInstanceUID
    assert failed.ReferencedSOPClassUID == foreign.SOPClassUID
    assert failed.FailureReason == 0xA900
    assert instance_count(client, study) == 1
    assert (
        client.search_for_studies(search_filters={"StudyInstanceUID": foreign.StudyInstanceUID})
        == []
    )


# -- status codes and failure reasons (raw HTTP) ----------------------------------------------


def test_some_parts_failing_gives_202_with_failed_sop_sequence(http_app: HttpApp) -> None:
    ds = ct_dataset()
    body = multipart(
        ("application/dicom", encode(ds)),
        ("application/pdf", b"%PDF-1.4 not an image"),
        ("application/dicom", b"this is not DICOM at all"),
    )
    response = stow(http_app, body)

    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    answer = response.json()
    (stored,) = values(answer, "00081199")
    assert values(stored, "00081155") == [ds.SOPInstanceUID]
    assert values(stored, "00081190") == [
        f"{http_app.dicomweb_url}/studies/{ds.StudyInstanceUID}"
        f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    ]
    failed = values(answer, "00081198")
    assert [values(item, "00081197") for item in failed] == [[0xC000], [0xC000]]


def test_all_parts_failing_gives_409(http_app: HttpApp) -> None:
    study = generate_uid()
    response = stow(http_app, multipart(("application/dicom", encode(ct_dataset()))), study)

    assert response.status_code == 409, response.text
    (failed,) = values(response.json(), "00081198")
    assert values(failed, "00081197") == [0xA900]
    assert "00081199" not in response.json()


def test_different_content_under_a_stored_sop_instance_uid_is_a_conflict(
    http_app: HttpApp,
) -> None:
    ds = ct_dataset()
    assert stow(http_app, multipart(("application/dicom", encode(ds)))).status_code == 200
    ds.StudyDescription = "CT HEAD CHANGED"
    response = stow(http_app, multipart(("application/dicom", encode(ds))))

    assert response.status_code == 409, response.text
    (failed,) = values(response.json(), "00081198")
    assert values(failed, "00081155") == [ds.SOPInstanceUID]
    assert values(failed, "00081197") == [0x0111]


def test_malformed_multipart_bodies_are_400_with_a_message(http_app: HttpApp) -> None:
    dicom = encode(ct_dataset())
    bodies = {
        "empty body": b"",
        "garbage": b"\x00\x01garbage without any delimiter" * 10,
        "no closing delimiter": f"--{BOUNDARY}\r\n\r\n".encode() + dicom,
        "junk after a delimiter": f"--{BOUNDARY}junk\r\n\r\n".encode() + dicom,
        "no parts": f"--{BOUNDARY}--\r\n".encode(),
        "header without colon": f"--{BOUNDARY}\r\nnonsense\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
    }
    for what, body in bodies.items():
        response = stow(http_app, body)
        assert response.status_code == 400, (what, response.status_code, response.text)
        assert response.json()["message"], what
    cut = multipart(("application/dicom", dicom), ("application/dicom", encode(ct_dataset())))
    truncated = stow(http_app, cut[: len(cut) // 2 + len(dicom) // 2])
    assert truncated.status_code == 400
    assert "1 instance(s) before it were stored" in truncated.json()["message"]
    no_boundary = stow(
        http_app, multipart(), **{"Content-Type": 'multipart/related; type="application/dicom"'}
    )
    assert no_boundary.status_code == 400
    assert "boundary" in no_boundary.json()["message"]
    assert stow(http_app, b"", study="not-a-uid").status_code == 400


def test_request_content_types_other_than_multipart_related_dicom_are_415(
    http_app: HttpApp,
) -> None:
    body = multipart(("application/dicom", encode(ct_dataset())))
    for content_type in (
        "application/dicom",
        f"multipart/form-data; boundary={BOUNDARY}",
        f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}',
        "",
    ):
        response = stow(http_app, body, **{"Content-Type": content_type})
        assert response.status_code == 415, (content_type, response.text)
    reordered = f'Multipart/Related; boundary="{BOUNDARY}"; type=application/dicom'
    assert stow(http_app, body, **{"Content-Type": reordered}).status_code == 200


def test_accept_header_without_json_is_406_and_plain_json_is_answered(http_app: HttpApp) -> None:
    body = multipart(("application/dicom", encode(ct_dataset())))
    assert stow(http_app, body, Accept="application/dicom+xml").status_code == 406
    plain = stow(http_app, body, Accept="application/json")
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"


def test_dicomweb_client_raises_on_409(http_app: HttpApp) -> None:
    client = http_app.dicomweb()
    with pytest.raises(requests.HTTPError) as raised:
        client.store_instances([part10(ct_dataset())], study_instance_uid=generate_uid())
    assert raised.value.response.status_code == 409


# -- the reader and the spool without a server --------------------------------------------


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _read_all(data: bytes, size: int) -> list[tuple[dict[str, str], bytes]]:
    reader = MultipartReader(_chunks(data, size), BOUNDARY)
    parts = []
    while (headers := await reader.next_part()) is not None:
        parts.append((headers.fields, b"".join([c async for c in reader.content()])))
    return parts


@pytest.mark.parametrize("chunk_size", [1, 7, len(BOUNDARY) + 3, 65536])
def test_reader_finds_parts_across_any_chunking(chunk_size: int) -> None:
    near_miss = f"\r\n--{BOUNDARY[:-1]}".encode()  # looks like a delimiter, is content
    body = (
        b"a preamble is ignored\r\n"
        + multipart(("application/dicom", b"one" + near_miss), ("application/dicom", b""))
        + b"an epilogue too"
    )
    parts = asyncio.run(_read_all(body, chunk_size))
    assert parts == [
        ({"content-type": "application/dicom"}, b"one" + near_miss),
        ({"content-type": "application/dicom"}, b""),
    ]


def test_reader_skips_content_left_unread() -> None:
    body = multipart(("a/b", b"x" * 1000), ("c/d", b"y"))

    async def headers_only() -> list[str | None]:
        reader = MultipartReader(_chunks(body, 64), BOUNDARY)
        seen = []
        while (headers := await reader.next_part()) is not None:
            seen.append(headers.content_type)
        return seen

    assert asyncio.run(headers_only()) == ["a/b", "c/d"]


def test_reader_refuses_a_body_cut_short() -> None:
    with pytest.raises(MultipartError, match="closing delimiter"):
        asyncio.run(_read_all(multipart(("a/b", b"x"))[:-10], 5))


def test_media_type_parameters_in_any_order_and_quoting() -> None:
    media = MediaType.parse('Multipart/Related; boundary="a;b \\"c\\""; TYPE=application/dicom')
    assert media.mime == "multipart/related"
    assert media.params == {"boundary": 'a;b "c"', "type": "application/dicom"}


def test_spool_moves_large_parts_to_a_file_and_gives_one_view(tmp_path: Any) -> None:
    spool = Spool(tmp_path, in_memory=10)
    for chunk in (b"0123456789", b"abcdef", b"XYZ"):
        spool.write(chunk)
    try:
        assert spool.in_file
        with spool.view() as view:
            assert bytes(view) == b"0123456789abcdefXYZ"
        assert b"".join(spool.chunks(3)) == b"3456789abcdefXYZ"
    finally:
        spool.close()

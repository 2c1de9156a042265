"""Generated requests against the HTTP API: never a 500, never a hang.

Two sources of requests: schemathesis, from the OpenAPI document netpacs publishes
at /api/openapi.json (every declared path and parameter), and hypothesis strategies
for what the document cannot describe (DICOMweb query strings with any attribute,
STOW-RS bodies that are almost multipart, frame lists, Accept headers). Every
answer must come within the timeout with a status below 500, and the study stored
before the fuzzing must still be there, byte for byte, afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netpacs.domain.dicom.part10 import read_file_meta
from tests.conftest import HttpApp, http_app_on
from tests.http.conftest import StoredSeries, write_and_send_ct

TIMEOUT = 20.0
FUZZ_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests on every run: a failure can be reproduced
)
# Every operation of the OpenAPI document gets its own examples: twelve each (some 800
# requests in all) keep this one test near half a minute.
OPENAPI_SETTINGS = settings(FUZZ_SETTINGS, max_examples=12)


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, index_templates: Any
) -> Iterator[HttpApp]:
    """The app in this process, on SQLite, for the whole module."""
    with http_app_on(index_templates, "sqlite", tmp_path_factory.mktemp("fuzz")) as app:
        yield app


@pytest.fixture(scope="module")
def stored(fuzz_server: HttpApp, tmp_path_factory: pytest.TempPathFactory) -> StoredSeries:
    return write_and_send_ct(
        fuzz_server, tmp_path_factory.mktemp("ct"), 3, patient_id="RTP0000777", issuer="RTP"
    )


@pytest.fixture(scope="module")
def client(fuzz_server: HttpApp, stored: StoredSeries) -> Iterator[httpx.Client]:
    with fuzz_server.client(timeout=TIMEOUT) as c:
        yield c


@pytest.fixture(scope="module")
def api_schema(fuzz_server: HttpApp, stored: StoredSeries) -> schemathesis.BaseSchema:
    with fuzz_server.client() as c:
        document = c.get("/api/openapi.json")
    assert document.status_code == 200, document.text
    return schemathesis.openapi.from_dict(document.json())


schema = schemathesis.pytest.from_fixture("api_schema")


def _no_server_error(response: httpx.Response | object, what: str) -> None:
    status = getattr(response, "status_code", 0)
    assert 0 < status < 500, f"{what} -> {status}: {getattr(response, 'text', '')[:500]}"


@schema.parametrize()
@OPENAPI_SETTINGS
def test_requests_generated_from_the_openapi_document_never_get_a_server_error(
    case: schemathesis.Case, fuzz_server: HttpApp
) -> None:
    response = case.call(
        base_url=fuzz_server.base_url,
        session=fuzz_server.session(),
        timeout=TIMEOUT,
        headers=fuzz_server.auth(),
    )
    _no_server_error(response, f"{case.method} {case.formatted_path} {case.query}")


QIDO_PATHS = st.sampled_from(
    [
        "/dicomweb/studies",
        "/dicomweb/series",
        "/dicomweb/instances",
        "/dicomweb/studies/1.2.3/series",
    ]
)
KEYS = st.sampled_from(
    [
        "PatientName",
        "PatientID",
        "00100020",
        "StudyDate",
        "StudyTime",
        "ModalitiesInStudy",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "AccessionNumber",
        "includefield",
        "limit",
        "offset",
        "fuzzymatching",
        "NoSuchKeyword",
        "0010",
        "ZZZZZZZZ",
        "PixelData",
        "ReferencedSOPSequence",
    ]
)
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["*", "?", "-", "20260101-", "-20261231", "all", "-1", "1e9", "\\", '""']),
    st.from_regex(r"[0-9.\\*?-]{0,30}", fullmatch=True),
)


@given(path=QIDO_PATHS, params=st.lists(st.tuples(KEYS, VALUES), max_size=6))
@FUZZ_SETTINGS
def test_qido_with_any_query_string_answers_without_server_error(
    client: httpx.Client, path: str, params: list[tuple[str, str]]
) -> None:
    response = client.get(path, params=params, headers={"Accept": "application/dicom+json"})
    _no_server_error(response, f"GET {path} {params}")


BOUNDARY = "fuzzboundary"
PART_BODIES = st.one_of(
    st.binary(max_size=600),
    st.builds(lambda tail: b"\0" * 128 + b"DICM" + tail, st.binary(max_size=400)),
)


@st.composite
def stow_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    parts = draw(st.lists(PART_BODIES, max_size=3))
    content_type = draw(
        st.sampled_from(
            [
                f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                f"multipart/related; boundary={BOUNDARY}",
                'multipart/related; type="application/dicom"',
                "application/dicom",
                "text/plain",
                f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
            ]
        )
    )
    body = b""
    for part in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    if draw(st.booleans()):
        body += f"--{BOUNDARY}--\r\n".encode()
    body = draw(
        st.sampled_from([body, body[: len(body) // 2], body + draw(st.binary(max_size=50))])
    )
    return content_type, body


@given(request=stow_bodies(), study=st.sampled_from(["", "/1.2.3", "/not-a-uid", "/" + "9" * 80]))
@FUZZ_SETTINGS
def test_stow_with_malformed_bodies_answers_without_server_error(
    client: httpx.Client, request: tuple[str, bytes], study: str
) -> None:
    content_type, body = request
    response = client.post(
        f"/dicomweb/studies{study}",
        content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    _no_server_error(response, f"POST /dicomweb/studies{study} {content_type} {body[:80]!r}")


ACCEPTS = st.sampled_from(
    [
        "*/*",
        "application/dicom+json",
        'multipart/related; type="application/dicom"',
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
        "multipart/related; type=application/octet-stream; transfer-syntax=*",
        'multipart/related; type="image/jpeg"',
        "image/png",
        "image/jpeg",
        "text/html",
        "garbage;;;==",
    ]
)


@given(
    suffix=st.sampled_from(
        [
            "",
            "/metadata",
            "/rendered",
            "/thumbnail",
            "/frames/{f}",
            "/frames/{f}/rendered",
            "/bulk/7FE00010",
        ]
    ),
    level=st.sampled_from(["study", "series", "instance", "unknown-instance"]),
    frames=st.one_of(
        st.sampled_from(["1", "1,2", "0", "-1", "99999", "a", "1,,2", ""]), st.text(max_size=8)
    ),
    accept=ACCEPTS,
    query=st.dictionaries(
        st.sampled_from(["window", "viewport", "quality", "transfer-syntax", "accept"]),
        st.text(max_size=12),
        max_size=3,
    ),
)
@FUZZ_SETTINGS
def test_wado_with_odd_paths_headers_and_parameters_answers_without_server_error(
    client: httpx.Client,
    stored: StoredSeries,
    suffix: str,
    level: str,
    frames: str,
    accept: str,
    query: dict[str, str],
) -> None:
    base = f"/dicomweb/studies/{stored.study_uid}"
    if level in ("series", "instance", "unknown-instance"):
        base += f"/series/{stored.series_uid}"
    if level == "instance":
        base += f"/instances/{stored.sop_uids[0]}"
    elif level == "unknown-instance":
        base += "/instances/1.2.3.4.5"
    path = base + suffix.replace("{f}", quote(frames, safe=",") or "1")
    response = client.get(path, params=query, headers={"Accept": accept})
    _no_server_error(response, f"GET {path} {query} Accept: {accept}")


def test_fuzzing_left_the_stored_study_intact(stored: StoredSeries, fuzz_server: HttpApp) -> None:
    """Runs last in this module: every original instance is still stored, byte for byte."""
    blobs = [p for p in (fuzz_server.data_dir / "objects").glob("???/*") if p.is_file()]
    kept = {_dataset_digest(p) for p in blobs}
    assert len(blobs) == len(stored.paths)
    assert {_dataset_digest(p) for p in stored.paths} == kept


def _dataset_digest(path: Path) -> str:
    raw = path.read_bytes()
    return hashlib.sha256(raw[read_file_meta(raw).dataset_offset :]).hexdigest()

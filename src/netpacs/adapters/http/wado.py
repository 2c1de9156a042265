"""WADO-RS (PS3.18 10.4): study, series and instance retrieve, the ZIP export, metadata.

- Study, series and instance retrieve stream the Part 10 files as
  ``multipart/related; type="application/dicom"``. ``transfer-syntax=*`` (or the stored
  syntax) gives them as stored; without a ``transfer-syntax`` parameter, objects stored
  uncompressed little endian are sent as stored and others decompressed to Explicit VR
  Little Endian (its default, PS3.18 8.7.3.5.2); any other syntax asked for is made with
  pydicom, or refused with 406.
- What goes out is chosen and read by the retrieve service: objects whose patient
  changed since they were stored (ADT) are served with a coerced header, ``/metadata``
  too; the others as stored.
- Study, series and instance retrieve with ``Accept: application/zip`` (or the
  ``accept=application/zip`` query parameter, PS3.18 8.3.3.1) give the Part 10 files
  in a ZIP, streamed, audited as an export (PS3.15 A.5.3.7), not an access.
- ``/metadata`` is answered from the index (:mod:`netpacs.services.metadata`).

Frames and bulk data are in :mod:`.wado_frames`, WADO-URI in :mod:`.wado_uri`.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import (
    DICOMWEB_ROOT,
    HttpServices,
    base_url,
    check_url_uids,
    services,
)
from netpacs.adapters.http.dicomweb import (
    DICOM,
    DICOM_JSON,
    INSTANCE,
    MULTIPART,
    SERIES,
    STUDY,
    ZIP,
    DicomChoice,
    missing,
    negotiate_dicom,
    not_acceptable,
    parse_accept,
    served,
)
from netpacs.domain.outcomes import Refused
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import Capability
from netpacs.services.retrieve import Served

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS"], dependencies=[requires(Capability.RETRIEVE)])

Services = Annotated[HttpServices, Depends(services)]


# -- retrieve (PS3.18 10.4.1.1.1) --------------------------------------------------------

# Whole objects up to this size are read in one piece; larger ones are streamed in chunks.
WHOLE_OBJECT_LIMIT = 16 << 20
# Objects read per trip to a worker thread (fewer thread hops for series of small files).
BATCH_BYTES = 8 << 20


def _read_batch(svc: HttpServices, batch: list[Served], heads: list[bytes]) -> list[bytearray]:
    return [
        svc.retrieve.part10_framed(obj, head, b"\r\n")
        for obj, head in zip(batch, heads, strict=True)
    ]


def _part_head(boundary: str, transfer_syntax_uid: str) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={transfer_syntax_uid}\r\n\r\n"
    ).encode()


def _multipart_length(found: list[Served], choice: DicomChoice, boundary: str) -> int | None:
    """The body's length when every object goes as stored (None when one is transcoded
    or coerced)."""
    total = len(f"--{boundary}--\r\n")
    for obj in found:
        if not obj.as_stored(choice.target(obj.transfer_syntax_uid)):
            return None
        total += len(_part_head(boundary, obj.transfer_syntax_uid)) + obj.blob_size + 2
    return total


async def _part10_parts(
    svc: HttpServices, found: list[Served], choice: DicomChoice, boundary: str
) -> AsyncIterator[bytes | memoryview]:
    """The multipart body: parts read in batches in a worker thread, each in one buffer;
    transcoded and coerced objects one by one."""
    retrieve = svc.retrieve

    def head(target: str) -> bytes:
        return _part_head(boundary, target)

    try:
        i = 0
        while i < len(found):
            obj = found[i]
            target = choice.target(obj.transfer_syntax_uid)
            if not obj.as_stored(target):
                body = await run_in_threadpool(retrieve.part10_in, obj, target)
                yield head(target) + body + b"\r\n"
                i += 1
                continue
            if obj.blob_size > WHOLE_OBJECT_LIMIT:
                yield head(target)
                async for chunk in iterate_in_threadpool(retrieve.part10_chunks(obj)):
                    yield chunk
                yield b"\r\n"
                i += 1
                continue
            batch: list[Served] = []
            size = 0
            while i < len(found):
                nxt = found[i]
                if (
                    not nxt.as_stored(choice.target(nxt.transfer_syntax_uid))
                    or nxt.blob_size > WHOLE_OBJECT_LIMIT
                    or (batch and size + nxt.blob_size > BATCH_BYTES)
                ):
                    break
                batch.append(nxt)
                size += nxt.blob_size
                i += 1
            heads = [head(b.transfer_syntax_uid) for b in batch]
            for buf in await run_in_threadpool(_read_batch, svc, batch, heads):
                yield memoryview(buf)
        yield f"--{boundary}--\r\n".encode()
    except (Refused, OSError):
        # The status line is sent: all we can do is end the body short, which the
        # client sees as a missing closing delimiter.
        log.exception("WADO-RS retrieve stopped part way")


def _retrieve(
    request: Request,
    svc: HttpServices,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    # PS3.18 8.3.3.1: an ``accept`` query parameter stands for the Accept header (links).
    header = request.query_params.get("accept") or request.headers.get("accept")
    if _wants_zip(header):
        return _export_zip(svc, study, series, instance)
    found = served(svc, study, series, instance)
    choice = negotiate_dicom(
        header, (o.transfer_syntax_uid for o in found), single_ok=instance is not None
    )
    if not choice.multipart:
        return single_part10(svc, found[0], choice.target(found[0].transfer_syntax_uid))
    boundary = secrets.token_hex(16)
    length = _multipart_length(found, choice, boundary)
    # With a known length the body goes out as it is read: no chunked-encoding copies.
    return StreamingResponse(
        _part10_parts(svc, found, choice, boundary),
        media_type=f'{MULTIPART}; type="{DICOM}"; boundary={boundary}',
        headers={"Content-Length": str(length)} if length is not None else None,
    )


def single_part10(svc: HttpServices, obj: Served, target: str) -> Response:
    """One object as ``application/dicom`` in ``target`` (a TranscodeError is a 406)."""
    body = svc.retrieve.part10_in(obj, target)
    return Response(body, media_type=f"{DICOM}; transfer-syntax={target}")


@router.get(STUDY, summary="Retrieve a study (WADO-RS)")
def retrieve_study(request: Request, svc: Services, study: str) -> Response:
    return _retrieve(request, svc, study)


@router.get(SERIES, summary="Retrieve a series (WADO-RS)")
def retrieve_series(request: Request, svc: Services, study: str, series: str) -> Response:
    return _retrieve(request, svc, study, series)


@router.get(INSTANCE, summary="Retrieve an instance (WADO-RS)")
def retrieve_instance(
    request: Request, svc: Services, study: str, series: str, instance: str
) -> Response:
    return _retrieve(request, svc, study, series, instance)


# -- export as a ZIP (PS3.18 8.7.3.5.3, application/zip) -------------------------------


def _wants_zip(header: str | None) -> bool:
    """Whether the most preferred media range we answer is application/zip."""
    for a in parse_accept(header):
        if a.mime == ZIP:
            return True
        if a.mime in (MULTIPART, DICOM, "*/*", "multipart/*", "application/*"):
            return False
    return False


def _export_zip(
    svc: HttpServices, study: str, series: str | None, instance: str | None
) -> StreamingResponse:
    """The Part 10 files in scope as a ZIP, audited as an export (PS3.15 A.5.3.7).

    Files go as served by every retrieve (coerced where the patient changed since),
    streamed: nothing is built whole in memory.
    """
    check_url_uids(Study=study, Series=series, SOP=instance)
    found = svc.retrieve.export(study, series, instance)
    if not found:
        raise missing(svc, study, series, instance)
    name = f"study-{study}" + (f"-series-{series}" if series else "")
    return StreamingResponse(
        _zip_stream(svc, found),
        media_type=ZIP,
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


class _ZipSink(io.RawIOBase):
    """What zipfile writes, kept until the response takes it (not seekable, so zipfile
    writes data descriptors after each file: PKWARE APPNOTE 4.3.9)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def _zip_name(obj: Served, index: int) -> str:
    """``series UID/SOP Instance UID.dcm`` (UIDs are digits and dots; checked anyway)."""
    folder = obj.series_instance_uid
    if not is_valid_uid(folder):
        folder = "series"
    stem = obj.sop_instance_uid if is_valid_uid(obj.sop_instance_uid) else f"{index + 1:06d}"
    return f"{folder}/{stem}.dcm"


def _zip_stream(svc: HttpServices, found: list[Served]) -> Iterator[bytes]:
    """The ZIP, one stored file at a time (ZIP_STORED: DICOM pixel data is mostly
    compressed already or compresses poorly for the time it costs)."""
    sink = _ZipSink()
    now = time.localtime()[:6]
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, obj in enumerate(found):
                info = zipfile.ZipInfo(_zip_name(obj, i), date_time=now)
                # zipfile decides on ZIP64 headers from this (a coerced file's size is
                # close to it) and records the size it wrote.
                info.file_size = obj.blob_size
                with zf.open(info, "w") as out:
                    for chunk in svc.retrieve.part10_chunks(obj):
                        out.write(chunk)
                        if data := sink.take():
                            yield data
                if data := sink.take():
                    yield data
        if data := sink.take():
            yield data
    except (Refused, OSError):
        # The status line is sent: the ZIP ends without its central directory, which
        # every unzip tool reports as a damaged archive.
        log.exception("ZIP export stopped part way")


# -- metadata (PS3.18 10.4.1.1.2) -------------------------------------------------------


def _metadata(
    request: Request,
    svc: HttpServices,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    header = request.headers.get("accept")
    media_type = None
    for a in parse_accept(header):
        if a.mime in (DICOM_JSON, "*/*", "application/*"):
            media_type = DICOM_JSON
        elif a.mime == "application/json":
            media_type = "application/json"
        if media_type:
            break
    if media_type is None:
        raise not_acceptable(header, DICOM_JSON)
    check_url_uids(Study=study, Series=series, SOP=instance)
    root = base_url(request) + DICOMWEB_ROOT
    headers = None
    body: bytes | None = None
    if svc.edge_read is not None:  # an edge node: the core's metadata, else the cache's
        body, down = svc.edge_read.metadata(svc.principal, root, study, series, instance)
        if down is not None:
            headers = {"Warning": down.warning(svc.edge_read.zone)}
    if body is None:
        body = svc.metadata.metadata(root, study, series, instance)
    if body is None:
        raise missing(svc, study, series, instance)
    return Response(body, media_type=media_type, headers=headers)


@router.get(f"{STUDY}/metadata", summary="Metadata of a study's instances (WADO-RS)")
def study_metadata(request: Request, svc: Services, study: str) -> Response:
    return _metadata(request, svc, study)


@router.get(f"{SERIES}/metadata", summary="Metadata of a series' instances (WADO-RS)")
def series_metadata(request: Request, svc: Services, study: str, series: str) -> Response:
    return _metadata(request, svc, study, series)


@router.get(f"{INSTANCE}/metadata", summary="Metadata of an instance (WADO-RS)")
def instance_metadata(
    request: Request, svc: Services, study: str, series: str, instance: str
) -> Response:
    return _metadata(request, svc, study, series, instance)

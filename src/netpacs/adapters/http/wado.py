"""WADO-RS (PS3.18 10.4) and WADO-URI (PS3.18 9): objects, metadata, frames, bulk data.

- Study, series and instance retrieve stream the stored Part 10 files as
  ``multipart/related; type="application/dicom"``. ``transfer-syntax=*`` (or the stored
  syntax) gives them as stored; without a ``transfer-syntax`` parameter, objects stored
  uncompressed little endian are sent as stored and others decompressed to Explicit VR
  Little Endian (its default, PS3.18 8.7.3.5.2); any other syntax asked for is made with
  pydicom, or refused with 406.
- Objects whose patient changed since they were stored (ADT) are served with a coerced
  header, ``/metadata`` too (:mod:`netpacs.services.coercion`); the others as stored.
- Study, series and instance retrieve with ``Accept: application/zip`` (or the
  ``accept=application/zip`` query parameter, PS3.18 8.3.3.1) give the Part 10 files
  as stored in a ZIP, streamed, audited as an export (PS3.15 A.5.3.7), not an access.
- ``/metadata`` is answered from the index (:mod:`netpacs.services.metadata`).
- ``/frames/{list}`` gives native frames as ``application/octet-stream`` (Explicit VR
  Little Endian pixels, range-read or decoded) or compressed frames as stored
  (``image/jpeg``, ``image/jls``, ``image/jp2``... PS3.18 Table 8.7.3-2). OHIF asks
  ``type=application/octet-stream; transfer-syntax=*``: it gets frames as stored,
  each part labelled with its media type and transfer syntax.
- ``/bulk/{tag}`` resolves the BulkDataURIs that ``/metadata`` hands out.
- ``/wado?requestType=WADO`` (WADO-URI) gives one object (``application/dicom``) or a
  rendered image for legacy links.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from netpacs.adapters.http.deps import (
    DICOMWEB_ROOT,
    HttpServices,
    base_url,
    check_url_uids,
    services,
)
from netpacs.adapters.http.errors import HttpError
from netpacs.domain.uids import is_valid_uid
from netpacs.services.audit import AuditRecord, Event
from netpacs.services.coercion import Coercion, CoercionService
from netpacs.services.frames import (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    FrameError,
    FrameReader,
    PixelLayout,
    check_decodable,
    check_frames,
    parse_frame_list,
    pixel_layout,
)
from netpacs.services.metadata import locate_bulk
from netpacs.services.query import QueryLevel, QueryModel, QueryService, StoredInstance
from netpacs.services.render import (
    ImageFormat,
    RenderError,
    RenderOptions,
    Viewport,
    Window,
    render_stored,
)
from netpacs.services.retrieve import TranscodeError, check_transcodable
from netpacs.storage.blobstore import BlobNotFound

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS"])

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"
MULTIPART = "multipart/related"
_AS_STORED_LE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE})
_STUDY = f"{DICOMWEB_ROOT}/studies/{{study}}"
_SERIES = f"{_STUDY}/series/{{series}}"
_INSTANCE = f"{_SERIES}/instances/{{instance}}"

Services = Annotated[HttpServices, Depends(services)]


# -- Accept --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acceptable:
    """One media range of an Accept header (RFC 9110 12.5.1), with PS3.18 parameters."""

    mime: str
    type: str | None  # the ``type`` parameter of multipart/related
    transfer_syntax: str | None
    q: float


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_accept(header: str | None) -> list[Acceptable]:
    """The media ranges of an Accept header, most preferred first; ``*/*`` when absent."""
    if not header or not header.strip():
        return [Acceptable("*/*", None, None, 1.0)]
    ranges: list[Acceptable] = []
    for item in _split(header, ","):
        mime, *raw = (p.strip() for p in _split(item, ";"))
        params: dict[str, str] = {}
        for p in raw:
            name, eq, value = p.partition("=")
            if eq:
                params[name.strip().lower()] = value.strip().strip('"').strip()
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0 or not mime:
            continue
        media = params.get("type")
        ranges.append(
            Acceptable(
                mime.lower(),
                media.lower() if media else None,
                params.get("transfer-syntax"),
                q,
            )
        )
    ranges.sort(key=lambda a: -a.q)  # stable: equal q keeps the client's order
    return ranges


def _not_acceptable(header: str | None, offer: str) -> HttpError:
    return HttpError(406, f"cannot answer Accept: {header!r}; this resource is {offer}")


# -- lookups -------------------------------------------------------------------------------


def _coercion(svc: HttpServices) -> CoercionService:
    return svc.coercion


def _instances(
    svc: HttpServices,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    *,
    with_metadata: bool = False,
) -> list[StoredInstance]:
    """The stored instances in scope; 404 saying which UID is unknown."""
    check_url_uids(Study=study, Series=series, SOP=instance)
    found = svc.query.stored_instances(study, series, instance, with_metadata=with_metadata)
    if found:
        return found
    raise _missing(svc, study, series, instance)


def _missing(svc: HttpServices, study: str, series: str | None, instance: str | None) -> HttpError:
    has_study, has_series = svc.query.scope_exists(study, series)
    if not has_study:
        return HttpError(404, f"study {study} is not stored here")
    if not has_series:
        return HttpError(404, f"series {series} is not a series of study {study}")
    return HttpError(404, f"instance {instance} is not an instance of series {series}")


# -- retrieve (PS3.18 10.4.1.1.1) --------------------------------------------------------

_DEFAULT = "default"  # no transfer-syntax parameter
_STORED = "*"


@dataclass(frozen=True, slots=True)
class _DicomChoice:
    multipart: bool
    transfer_syntax: str  # a UID, _STORED or _DEFAULT

    def target(self, stored: str) -> str:
        if self.transfer_syntax == _STORED:
            return stored
        if self.transfer_syntax == _DEFAULT:
            return stored if stored in _AS_STORED_LE else EXPLICIT_VR_LE
        return self.transfer_syntax


def _dicom_choices(header: str | None, *, single_ok: bool) -> list[_DicomChoice]:
    choices = []
    for a in parse_accept(header):
        ts = a.transfer_syntax or _DEFAULT
        multipart = a.mime == MULTIPART and a.type in (None, DICOM, "*/*", "application/*")
        if multipart or a.mime in ("*/*", "multipart/*"):
            choices.append(_DicomChoice(True, ts))
        elif a.mime == DICOM and single_ok:
            choices.append(_DicomChoice(False, ts))
    return choices


def _negotiate_dicom(header: str | None, stored: Iterable[str], *, single_ok: bool) -> _DicomChoice:
    choices = _dicom_choices(header, single_ok=single_ok)
    problem = ""
    for choice in choices:
        try:
            for ts in set(stored):
                check_transcodable(ts, choice.target(ts))
        except TranscodeError as exc:
            problem = f": {exc}"
            continue
        return choice
    offer = f'multipart/related; type="{DICOM}"' + (", application/dicom" if single_ok else "")
    offer += f" or {ZIP}"
    raise HttpError(406, f"cannot answer Accept: {header!r}; this resource is {offer}{problem}")


# Whole objects up to this size are read in one piece; larger ones are streamed in chunks.
WHOLE_OBJECT_LIMIT = 16 << 20
# Objects read per trip to a worker thread (fewer thread hops for series of small files).
BATCH_BYTES = 8 << 20


def _read_batch(
    svc: HttpServices, batch: list[StoredInstance], heads: list[bytes]
) -> list[bytearray]:
    return [
        svc.retrieve.part10_framed(inst.item, head, b"\r\n")
        for inst, head in zip(batch, heads, strict=True)
    ]


def _part_head(boundary: str, transfer_syntax_uid: str) -> bytes:
    return (
        f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={transfer_syntax_uid}\r\n\r\n"
    ).encode()


def _multipart_length(
    found: list[StoredInstance],
    choice: _DicomChoice,
    boundary: str,
    coercions: dict[str, Coercion],
) -> int | None:
    """The body's length when every object goes as stored (None when one is transcoded
    or coerced)."""
    if coercions:
        return None
    total = len(f"--{boundary}--\r\n")
    for inst in found:
        if choice.target(inst.transfer_syntax_uid) != inst.transfer_syntax_uid:
            return None
        total += len(_part_head(boundary, inst.transfer_syntax_uid)) + inst.item.blob_size + 2
    return total


async def _part10_parts(
    svc: HttpServices,
    found: list[StoredInstance],
    choice: _DicomChoice,
    boundary: str,
    coercions: dict[str, Coercion],
) -> AsyncIterator[bytes | memoryview]:
    """The multipart body: parts read in batches in a worker thread, each in one buffer;
    transcoded and coerced objects one by one."""
    retrieve = svc.retrieve

    def head(_inst: StoredInstance, target: str) -> bytes:
        return _part_head(boundary, target)

    try:
        i = 0
        while i < len(found):
            inst = found[i]
            target = choice.target(inst.transfer_syntax_uid)
            coercion = coercions.get(inst.sop_instance_uid)
            if target != inst.transfer_syntax_uid or coercion is not None:
                body = await run_in_threadpool(_served_part10, svc, inst, target, coercion)
                yield head(inst, target) + body + b"\r\n"
                i += 1
                continue
            if inst.item.blob_size > WHOLE_OBJECT_LIMIT:
                yield head(inst, target)
                async for chunk in iterate_in_threadpool(retrieve.part10_chunks(inst.item)):
                    yield chunk
                yield b"\r\n"
                i += 1
                continue
            batch: list[StoredInstance] = []
            size = 0
            while i < len(found):
                nxt = found[i]
                if (
                    choice.target(nxt.transfer_syntax_uid) != nxt.transfer_syntax_uid
                    or nxt.sop_instance_uid in coercions
                    or nxt.item.blob_size > WHOLE_OBJECT_LIMIT
                    or (batch and size + nxt.item.blob_size > BATCH_BYTES)
                ):
                    break
                batch.append(nxt)
                size += nxt.item.blob_size
                i += 1
            heads = [head(b, b.transfer_syntax_uid) for b in batch]
            for buf in await run_in_threadpool(_read_batch, svc, batch, heads):
                yield memoryview(buf)
        yield f"--{boundary}--\r\n".encode()
    except (BlobNotFound, TranscodeError, OSError):
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
    found = _instances(svc, study, series, instance)
    choice = _negotiate_dicom(
        header, (i.transfer_syntax_uid for i in found), single_ok=instance is not None
    )
    coercions = _coercion(svc).for_scope(study, series, instance)
    if not choice.multipart:
        inst = found[0]
        target = choice.target(inst.transfer_syntax_uid)
        return _single_part10(svc, inst, target, coercions.get(inst.sop_instance_uid))
    boundary = secrets.token_hex(16)
    length = _multipart_length(found, choice, boundary, coercions)
    # With a known length the body goes out as it is read: no chunked-encoding copies.
    return StreamingResponse(
        _part10_parts(svc, found, choice, boundary, coercions),
        media_type=f'{MULTIPART}; type="{DICOM}"; boundary={boundary}',
        headers={"Content-Length": str(length)} if length is not None else None,
    )


def _served_part10(
    svc: HttpServices, inst: StoredInstance, target: str, coercion: Coercion | None
) -> bytes:
    """The object in ``target``, coerced when ``coercion`` says so."""
    if target == inst.transfer_syntax_uid:
        return svc.retrieve.part10(inst.item, coercion=coercion)
    return svc.retrieve.transcoded(inst.item, target, coercion=coercion)


def _single_part10(
    svc: HttpServices, inst: StoredInstance, target: str, coercion: Coercion | None
) -> Response:
    try:
        body = _served_part10(svc, inst, target, coercion)
    except TranscodeError as exc:
        raise HttpError(406, str(exc)) from None
    return Response(body, media_type=f"{DICOM}; transfer-syntax={target}")


@router.get(_STUDY, summary="Retrieve a study (WADO-RS)")
def retrieve_study(request: Request, svc: Services, study: str) -> Response:
    return _retrieve(request, svc, study)


@router.get(_SERIES, summary="Retrieve a series (WADO-RS)")
def retrieve_series(request: Request, svc: Services, study: str, series: str) -> Response:
    return _retrieve(request, svc, study, series)


@router.get(_INSTANCE, summary="Retrieve an instance (WADO-RS)")
def retrieve_instance(
    request: Request, svc: Services, study: str, series: str, instance: str
) -> Response:
    return _retrieve(request, svc, study, series, instance)


# -- export as a ZIP (PS3.18 8.7.3.5.3, application/zip) -------------------------------

ZIP = "application/zip"


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

    Files go as stored (those whose patient changed since, coerced like every retrieve),
    streamed: nothing is built whole in memory.
    """
    check_url_uids(Study=study, Series=series, SOP=instance)
    # The same access rules, without the access audit record: this is an export.
    quiet = svc.query.unaudited()
    found = quiet.stored_instances(study, series, instance)
    if not found:
        raise _missing(svc, study, series, instance)
    patients = _patients_of(quiet, study)
    svc.audit.record(
        AuditRecord(
            Event.EXPORT,
            svc.principal.actor(),
            purpose=quiet.purpose_of_use(dict.fromkeys(patients)),
            patients=patients,
            study_uids=[study],
            detail=f"{len(found)} instances exported as a ZIP of Part 10 files"
            + (f" (series {series})" if series else ""),
        )
    )
    coercions = _coercion(svc).for_scope(study, series, instance)
    name = f"study-{study}" + (f"-series-{series}" if series else "")
    return StreamingResponse(
        _zip_stream(svc, found, coercions),
        media_type=ZIP,
        headers={"Content-Disposition": f'attachment; filename="{name}.zip"'},
    )


def _patients_of(query: QueryService, study: str) -> list[tuple[str, str]]:
    keys = {
        "0020000D": {"vr": "UI", "Value": [study]},
        "00100020": {"vr": "LO"},
        "00100021": {"vr": "LO"},
    }
    found = query.find(keys, level=QueryLevel.STUDY, model=QueryModel.STUDY_ROOT, limit=1)
    return [
        (_first(ds, "00100020"), _first(ds, "00100021")) for ds in found if _first(ds, "00100020")
    ]


def _first(dataset: dict[str, Any], tag: str) -> str:
    values = dataset.get(tag, {}).get("Value") or [""]
    return str(values[0])


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


def _zip_name(found: list[StoredInstance], index: int) -> str:
    """``series UID/SOP Instance UID.dcm`` (UIDs are digits and dots; checked anyway)."""
    inst = found[index]
    folder = inst.series_instance_uid
    if not is_valid_uid(folder):
        folder = "series"
    stem = inst.sop_instance_uid if is_valid_uid(inst.sop_instance_uid) else f"{index + 1:06d}"
    return f"{folder}/{stem}.dcm"


def _zip_stream(
    svc: HttpServices, found: list[StoredInstance], coercions: dict[str, Coercion]
) -> Iterator[bytes]:
    """The ZIP, one stored file at a time (ZIP_STORED: DICOM pixel data is mostly
    compressed already or compresses poorly for the time it costs)."""
    sink = _ZipSink()
    now = time.localtime()[:6]
    try:
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, inst in enumerate(found):
                info = zipfile.ZipInfo(_zip_name(found, i), date_time=now)
                coercion = coercions.get(inst.sop_instance_uid)
                if coercion is not None:
                    chunks: Iterable[bytes] = [svc.retrieve.part10(inst.item, coercion=coercion)]
                    info.file_size = len(next(iter(chunks)))
                else:
                    chunks = svc.retrieve.part10_chunks(inst.item)
                    info.file_size = inst.item.blob_size
                with zf.open(info, "w") as out:
                    for chunk in chunks:
                        out.write(chunk)
                        if data := sink.take():
                            yield data
                if data := sink.take():
                    yield data
        if data := sink.take():
            yield data
    except (BlobNotFound, OSError):
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
        raise _not_acceptable(header, DICOM_JSON)
    check_url_uids(Study=study, Series=series, SOP=instance)
    body = svc.metadata.metadata(base_url(request) + DICOMWEB_ROOT, study, series, instance)
    if body is None:
        raise _missing(svc, study, series, instance)
    return Response(body, media_type=media_type)


@router.get(f"{_STUDY}/metadata", summary="Metadata of a study's instances (WADO-RS)")
def study_metadata(request: Request, svc: Services, study: str) -> Response:
    return _metadata(request, svc, study)


@router.get(f"{_SERIES}/metadata", summary="Metadata of a series' instances (WADO-RS)")
def series_metadata(request: Request, svc: Services, study: str, series: str) -> Response:
    return _metadata(request, svc, study, series)


@router.get(f"{_INSTANCE}/metadata", summary="Metadata of an instance (WADO-RS)")
def instance_metadata(
    request: Request, svc: Services, study: str, series: str, instance: str
) -> Response:
    return _metadata(request, svc, study, series, instance)


# -- frames (PS3.18 10.4.1.1.4) ---------------------------------------------------------

_NATIVE = "native"  # uncompressed pixels, Explicit VR Little Endian


def _frame_mode(header: str | None, layout: PixelLayout) -> str:
    """_NATIVE or _STORED: how to give the frames, from the Accept header.

    Without a preference (no Accept, ``*/*``) frames are uncompressed, the default media
    type; as stored needs ``transfer-syntax=*`` or the stored media type.
    """
    for a in parse_accept(header):
        mime, kind, ts = a.mime, a.type, a.transfer_syntax
        if mime == MULTIPART:
            if kind in (None, OCTET_STREAM):
                if ts in (None, EXPLICIT_VR_LE):
                    return _NATIVE
                if ts == _STORED:
                    return _STORED
                continue
            mime = kind
        if mime in ("*/*", "multipart/*", "application/*"):
            return _NATIVE  # the default media type (PS3.18 8.7.3.5)
        if mime == "image/*" and layout.encapsulated:
            return _STORED
        stored_type = layout.encapsulated and mime == layout.media_type
        if stored_type and ts in (None, _STORED, layout.transfer_syntax_uid):
            return _STORED
    raise _not_acceptable(
        header,
        f'multipart/related; type="{OCTET_STREAM}"'
        + (f' or type="{layout.media_type}"' if layout.encapsulated else ""),
    )


def _frames_body(
    reader: FrameReader, inst: StoredInstance, layout: PixelLayout, numbers: list[int], mode: str
) -> tuple[str, list[bytes]]:
    """The media type and transfer syntax of the parts, and the frames."""
    if not layout.encapsulated:
        return f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LE}", list(
            reader.native(inst, layout, numbers)
        )
    if mode == _STORED:
        media = f"{layout.media_type}; transfer-syntax={layout.transfer_syntax_uid}"
        return media, list(reader.stored(inst, layout, numbers))
    check_decodable(layout.transfer_syntax_uid)
    return f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LE}", list(
        reader.decoded(inst, layout, numbers)
    )


def _multipart(parts: list[bytes], part_type: str) -> Response:
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
    body = b"".join(head + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    mime = part_type.split(";")[0]
    return Response(body, media_type=f'{MULTIPART}; type="{mime}"; boundary={boundary}')


def _with_frame_errors(call: Callable[[], Response]) -> Response:
    try:
        return call()
    except FrameError as exc:
        raise HttpError(exc.status, exc.message) from None
    except BlobNotFound:
        raise HttpError(404, "the object's stored file is missing") from None


@router.get(f"{_INSTANCE}/frames/{{frames}}", summary="Frames of an instance (WADO-RS)")
def retrieve_frames(
    request: Request, svc: Services, study: str, series: str, instance: str, frames: str
) -> Response:
    def answer() -> Response:
        numbers = parse_frame_list(frames)
        inst = _instances(svc, study, series, instance, with_metadata=True)[0]
        layout = pixel_layout(inst)
        check_frames(layout, numbers, instance)
        mode = _frame_mode(request.headers.get("accept"), layout)
        media, parts = _frames_body(svc.frames, inst, layout, numbers, mode)
        return _multipart(parts, media)

    return _with_frame_errors(answer)


# -- bulk data (PS3.18 10.4.1.1.3) ------------------------------------------------------


@router.get(f"{_INSTANCE}/bulk/{{tag}}", summary="Bulk data of an instance (WADO-RS)")
def retrieve_bulk(
    request: Request,
    svc: Services,
    study: str,
    series: str,
    instance: str,
    tag: str,
    offset: Annotated[int | None, Query(ge=0, description="which occurrence of the tag")] = None,
) -> Response:
    def answer() -> Response:
        if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
            raise HttpError(400, f"{tag[:40]!r} is not a tag (GGGGEEEE)")
        inst = _instances(svc, study, series, instance, with_metadata=True)[0]
        ref = locate_bulk(inst.metadata_json, tag, offset)
        if ref is None:
            raise HttpError(404, f"instance {instance} has no bulk data ({tag}) there")
        header = request.headers.get("accept")
        if ref.length is not None and ref.length < 0:  # encapsulated pixel data: its frames
            layout = pixel_layout(inst)
            numbers = list(range(1, layout.number_of_frames + 1))
            mode = _frame_mode(header, layout)
            reader = svc.frames
            media, parts = _frames_body(reader, inst, layout, numbers, mode)
            return _multipart(parts, media)
        if not _accepts_octets(header):
            raise _not_acceptable(header, f'multipart/related; type="{OCTET_STREAM}"')
        data = _bulk_bytes(svc, inst, ref.tag, ref.offset, ref.length)
        return _multipart([data], OCTET_STREAM)

    return _with_frame_errors(answer)


def _accepts_octets(header: str | None) -> bool:
    for a in parse_accept(header):
        if a.mime == MULTIPART and a.type in (None, OCTET_STREAM, "*/*", "application/*"):
            return True
        if a.mime in ("*/*", "multipart/*"):
            return True
    return False


def _bulk_bytes(
    svc: HttpServices, inst: StoredInstance, tag: str, offset: int | None, length: int | None
) -> bytes:
    value = svc.retrieve.bulk_value(inst.item, tag, offset, length)
    if value is None:
        raise HttpError(404, f"instance {inst.sop_instance_uid} has no bulk data ({tag})")
    return value


# -- WADO-URI (PS3.18 9) ----------------------------------------------------------------

_RENDERED = (ImageFormat.JPEG.value, ImageFormat.PNG.value)


def _wado_uri_content_type(value: str | None) -> list[str]:
    """Media types asked for, in order; PS3.18 9.1.2.1.6: image/jpeg when absent."""
    if not value:
        return ["image/jpeg"]
    return [a.mime for a in parse_accept(value)]


@router.get(f"{DICOMWEB_ROOT}/wado", summary="WADO-URI: one object or a rendered image")
@router.get("/wado", include_in_schema=False)
def wado_uri(
    svc: Services,
    requestType: str | None = None,  # PS3.18 9.1.2 parameter names
    studyUID: str | None = None,
    seriesUID: str | None = None,
    objectUID: str | None = None,
    contentType: str | None = None,
    transferSyntax: str | None = None,
    frameNumber: int | None = None,
    windowCenter: float | None = None,
    windowWidth: float | None = None,
    imageQuality: int | None = None,
    rows: int | None = None,
    columns: int | None = None,
) -> Response:
    """PS3.18 9.1.2: ``contentType`` image/jpeg (the default) or image/png renders the
    object's frame (``frameNumber``, default 1); application/dicom gives the object."""
    if requestType != "WADO":
        raise HttpError(400, "requestType must be WADO (PS3.18 9.1.2.1.1)")
    missing = [
        name
        for name, value in (
            ("studyUID", studyUID),
            ("seriesUID", seriesUID),
            ("objectUID", objectUID),
        )
        if not value
    ]
    if missing:
        raise HttpError(400, f"WADO-URI needs {', '.join(missing)} (PS3.18 9.1.2.1)")
    assert studyUID and seriesUID and objectUID
    if transferSyntax is not None and not is_valid_uid(transferSyntax):
        raise HttpError(400, f"transferSyntax {transferSyntax[:80]!r} is not a UID")
    wanted = _wado_uri_content_type(contentType)
    for mime in wanted:
        if mime in (DICOM, "*/*", "application/*"):
            inst = _instances(svc, studyUID, seriesUID, objectUID)[0]
            target = _DicomChoice(False, transferSyntax or _DEFAULT).target(
                inst.transfer_syntax_uid
            )
            try:
                check_transcodable(inst.transfer_syntax_uid, target)
            except TranscodeError as exc:
                raise HttpError(406, str(exc)) from None
            coercion = _coercion(svc).for_scope(studyUID, seriesUID, objectUID).get(objectUID)
            return _single_part10(svc, inst, target, coercion)
        if mime in _RENDERED or mime == "image/*":
            inst = _instances(svc, studyUID, seriesUID, objectUID)[0]
            return _wado_uri_rendered(
                svc,
                inst,
                "image/jpeg" if mime == "image/*" else mime,
                frame=frameNumber,
                window=(windowCenter, windowWidth),
                size=(rows, columns),
                quality=imageQuality,
            )
    raise HttpError(
        406,
        f"contentType {contentType!r}: WADO-URI answers application/dicom, image/jpeg or image/png",
    )


def _wado_uri_rendered(
    svc: HttpServices,
    inst: StoredInstance,
    mime: str,
    *,
    frame: int | None,
    window: tuple[float | None, float | None],
    size: tuple[int | None, int | None],
    quality: int | None,
) -> Response:
    """One frame rendered (PS3.18 9.1.2.1.6-9.1.2.1.8: rows, columns, window, quality)."""
    center, width = window
    if (center is None) != (width is None):
        raise HttpError(400, "windowCenter and windowWidth go together (PS3.18 9.1.2.1.9)")
    rows, columns = size
    try:
        options = RenderOptions(
            format=ImageFormat(mime),
            window=Window(center, width) if center is not None and width is not None else None,
            viewport=Viewport(columns, rows) if rows or columns else None,
            quality=quality if quality is not None else 90,
        )
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    try:
        image = render_stored(
            svc.retrieve.dataset_bytes(inst.item),
            inst.transfer_syntax_uid,
            frame=frame or 1,
            options=options,
        )
    except RenderError as exc:
        raise HttpError(exc.status, exc.message) from None
    return Response(image, media_type=mime)

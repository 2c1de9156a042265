"""WADO-RS frames and bulk data (PS3.18 10.4.1.1.3, 10.4.1.1.4).

- ``/frames/{list}`` gives native frames as ``application/octet-stream`` (Explicit VR
  Little Endian pixels, range-read or decoded) or compressed frames as stored
  (``image/jpeg``, ``image/jls``, ``image/jp2``... PS3.18 Table 8.7.3-2). OHIF asks
  ``type=application/octet-stream; transfer-syntax=*``: it gets frames as stored,
  each part labelled with its media type and transfer syntax.
- ``/bulk/{tag}`` resolves the BulkDataURIs that ``/metadata`` hands out.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import HttpServices, services
from netpacs.adapters.http.dicomweb import (
    INSTANCE,
    MULTIPART,
    OCTET_STREAM,
    STORED,
    multipart,
    not_acceptable,
    parse_accept,
    stored_instances,
)
from netpacs.adapters.http.errors import HttpError
from netpacs.domain.query import StoredInstance
from netpacs.services.access import Capability
from netpacs.services.frames import (
    EXPLICIT_VR_LE,
    FrameReader,
    PixelLayout,
    check_decodable,
    check_frames,
    parse_frame_list,
    pixel_layout,
)
from netpacs.services.metadata import locate_bulk

router = APIRouter(tags=["WADO-RS"], dependencies=[requires(Capability.RETRIEVE)])
Services = Annotated[HttpServices, Depends(services)]


# -- frames (PS3.18 10.4.1.1.4) ---------------------------------------------------------

_NATIVE = "native"  # uncompressed pixels, Explicit VR Little Endian


def _frame_mode(header: str | None, layout: PixelLayout) -> str:
    """_NATIVE or STORED: how to give the frames, from the Accept header.

    Without a preference (no Accept, ``*/*``) frames are uncompressed, the default media
    type; as stored needs ``transfer-syntax=*`` or the stored media type.
    """
    for a in parse_accept(header):
        mime, kind, ts = a.mime, a.type, a.transfer_syntax
        if mime == MULTIPART:
            if kind in (None, OCTET_STREAM):
                if ts in (None, EXPLICIT_VR_LE):
                    return _NATIVE
                if ts == STORED:
                    return STORED
                continue
            mime = kind
        if mime in ("*/*", "multipart/*", "application/*"):
            return _NATIVE  # the default media type (PS3.18 8.7.3.5)
        if mime == "image/*" and layout.encapsulated:
            return STORED
        stored_type = layout.encapsulated and mime == layout.media_type
        if stored_type and ts in (None, STORED, layout.transfer_syntax_uid):
            return STORED
    raise not_acceptable(
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
    if mode == STORED:
        media = f"{layout.media_type}; transfer-syntax={layout.transfer_syntax_uid}"
        return media, list(reader.stored(inst, layout, numbers))
    check_decodable(layout.transfer_syntax_uid)
    return f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LE}", list(
        reader.decoded(inst, layout, numbers)
    )


@router.get(f"{INSTANCE}/frames/{{frames}}", summary="Frames of an instance (WADO-RS)")
def retrieve_frames(
    request: Request, svc: Services, study: str, series: str, instance: str, frames: str
) -> Response:
    numbers = parse_frame_list(frames)
    inst = stored_instances(svc, study, series, instance)[0]
    layout = pixel_layout(inst)
    check_frames(layout, numbers, instance)
    mode = _frame_mode(request.headers.get("accept"), layout)
    media, parts = _frames_body(svc.frames, inst, layout, numbers, mode)
    return multipart(parts, media)


# -- bulk data (PS3.18 10.4.1.1.3) ------------------------------------------------------


@router.get(f"{INSTANCE}/bulk/{{tag}}", summary="Bulk data of an instance (WADO-RS)")
def retrieve_bulk(
    request: Request,
    svc: Services,
    study: str,
    series: str,
    instance: str,
    tag: str,
    offset: Annotated[int | None, Query(ge=0, description="which occurrence of the tag")] = None,
) -> Response:
    if len(tag) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag):
        raise HttpError(400, f"{tag[:40]!r} is not a tag (GGGGEEEE)")
    inst = stored_instances(svc, study, series, instance)[0]
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
        return multipart(parts, media)
    if not _accepts_octets(header):
        raise not_acceptable(header, f'multipart/related; type="{OCTET_STREAM}"')
    if ref.length is not None and ref.length > _STREAM_BULK_FROM:
        pieces = svc.retrieve.bulk_chunks(inst.item, ref.offset, ref.length)
        if pieces is not None:  # a large value is sent as it is read, never whole
            return _one_part_stream(pieces, OCTET_STREAM)
    data = _bulk_bytes(svc, inst, ref.tag, ref.offset, ref.length)
    return multipart([data], OCTET_STREAM)


_STREAM_BULK_FROM = 8 << 20  # bytes: smaller values are answered in one piece


def _one_part_stream(pieces: Iterator[bytes], part_type: str) -> StreamingResponse:
    """A ``multipart/related`` answer of one part whose content is sent as it is read."""
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode()
        yield from pieces
        yield f"\r\n--{boundary}--\r\n".encode()

    return StreamingResponse(
        body(), media_type=f'{MULTIPART}; type="{part_type}"; boundary={boundary}'
    )


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

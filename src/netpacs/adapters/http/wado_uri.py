"""WADO-URI (PS3.18 9): one object (``application/dicom``) or a rendered image, for the
links of electronic patient records (``/dicomweb/wado?requestType=WADO&...``, also
``/wado``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import DICOMWEB_ROOT, HttpServices, services
from netpacs.adapters.http.dicomweb import (
    DEFAULT,
    DICOM,
    DicomChoice,
    parse_accept,
    served,
    stored_instances,
)
from netpacs.adapters.http.errors import HttpError
from netpacs.adapters.http.wado import single_part10
from netpacs.domain.query import StoredInstance
from netpacs.domain.uids import is_valid_uid
from netpacs.services.access import Capability
from netpacs.services.render import (
    ImageFormat,
    RenderOptions,
    Viewport,
    Window,
    render_stored,
)

router = APIRouter(tags=["WADO-URI"], dependencies=[requires(Capability.RETRIEVE)])
Services = Annotated[HttpServices, Depends(services)]


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
            obj = served(svc, studyUID, seriesUID, objectUID)[0]
            choice = DicomChoice(False, transferSyntax or DEFAULT)
            return single_part10(svc, obj, choice.target(obj.transfer_syntax_uid))
        if mime in _RENDERED or mime == "image/*":
            inst = stored_instances(svc, studyUID, seriesUID, objectUID)[0]
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
    image = render_stored(
        svc.retrieve.stored_dataset(inst.item),
        inst.transfer_syntax_uid,
        frame=frame or 1,
        options=options,
    )
    return Response(image, media_type=mime)

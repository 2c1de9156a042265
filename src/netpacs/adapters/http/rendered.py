"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 8.3.5; thumbnails 2024).

- ``.../instances/{i}/rendered`` and ``.../frames/{n}/rendered``: one frame as
  ``image/jpeg`` (the default) or ``image/png``, chosen by the Accept header or the
  ``accept`` query parameter (PS3.18 8.3.3.1). Series and study ``/rendered`` give the
  first image of the series (of the study's first series with images), not a
  multipart of every instance.
- ``.../thumbnail`` at study, series, instance and frame level: a small JPEG (PNG if
  asked) fitting 128 x 128 unless ``viewport`` says otherwise, of the middle image of
  the series (for a study: of its first series with images). A series with no image
  (e.g. a structured report) has no thumbnail: 404 with a message.
- Query parameters (PS3.18 8.3.5.1): ``window=center,width[,function]`` with function
  ``linear`` (default), ``linear-exact`` or ``sigmoid``; ``viewport=vw,vh[,sx,sy,sw,sh]``
  (scale to fit, aspect ratio kept; optional source region in pixels); ``quality``
  (JPEG, 1-100). ``annotation`` and ``charset`` are accepted and ignored (nothing is
  burnt in). A malformed parameter is a 400 naming it.

Which instance is shown comes from the index (instances with Rows are images); only
the chosen object is read and only its one frame decoded (:mod:`netpacs.services.render`).
Endpoints are plain ``def``: FastAPI runs them in its threadpool, as decoding blocks.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from netpacs.adapters.http.access import requires
from netpacs.adapters.http.deps import DICOMWEB_ROOT, HttpServices, check_url_uids, services
from netpacs.adapters.http.errors import STATUS, HttpError
from netpacs.domain.dicom.header import first
from netpacs.domain.query import QueryError, QueryLevel, QueryModel
from netpacs.services.access import Capability
from netpacs.services.render import (
    ImageFormat,
    Region,
    RenderError,
    RenderOptions,
    Viewport,
    VoiLutFunction,
    Window,
    render_stored,
)

log = logging.getLogger(__name__)
router = APIRouter(tags=["WADO-RS rendered"], dependencies=[requires(Capability.RETRIEVE)])
Services = Annotated[HttpServices, Depends(services)]

THUMBNAIL_SIZE = 128
THUMBNAIL_QUALITY = 75
RENDERED_QUALITY = 90
_CACHE = "private, max-age=600"

_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_ROWS = "00280010"
_NUMBER_OF_FRAMES = "00280008"

_STUDY = f"{DICOMWEB_ROOT}/studies/{{study}}"
_SERIES = f"{_STUDY}/series/{{series}}"
_INSTANCE = f"{_SERIES}/instances/{{instance}}"
_FRAME = f"{_INSTANCE}/frames/{{frames}}"

WindowParam = Annotated[
    str | None,
    Query(description="center,width[,function]: function linear, linear-exact or sigmoid"),
]
ViewportParam = Annotated[
    str | None, Query(description="vw,vh[,sx,sy,sw,sh]: fit within vw x vh pixels")
]
QualityParam = Annotated[str | None, Query(description="JPEG quality, 1 to 100")]
AcceptParam = Annotated[
    str | None, Query(description="media type, instead of the Accept header (image/jpeg, png)")
]


# -- parameters ----------------------------------------------------------------------------


def negotiate_image(accept: str | None) -> ImageFormat:
    """The rendered media type for an Accept value (RFC 9110 12.5.1); 406 if none fits.

    Each media range gives a quality to JPEG and PNG (the most specific range that
    matches wins); the higher wins, JPEG on a tie unless PNG was named more exactly.
    """
    if not accept or not accept.strip():
        return ImageFormat.JPEG
    best: dict[ImageFormat, tuple[int, float]] = {}  # format -> (specificity, q)
    for item in accept.split(","):
        mime, *params = (p.strip() for p in item.split(";"))
        mime = mime.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        for fmt in ImageFormat:
            kind = fmt.media_type.split("/")[0]
            specificity = {fmt.media_type: 3, f"{kind}/*": 2, "*/*": 1}.get(mime)
            if specificity is not None and specificity > best.get(fmt, (0, 0.0))[0]:
                best[fmt] = (specificity, q)
    ranked = sorted(
        ((q, spec, fmt is ImageFormat.JPEG, fmt) for fmt, (spec, q) in best.items() if q > 0),
        key=lambda t: t[:3],
        reverse=True,
    )
    if not ranked:
        raise HttpError(
            406, f"cannot render as {accept!r}: netpacs renders image/jpeg or image/png"
        )
    return ranked[0][3]


_FUNCTIONS = {
    "linear": VoiLutFunction.LINEAR,
    "linear-exact": VoiLutFunction.LINEAR_EXACT,
    "linear_exact": VoiLutFunction.LINEAR_EXACT,
    "sigmoid": VoiLutFunction.SIGMOID,
}


def parse_window(text: str) -> Window:
    """``center,width[,function]`` (PS3.18 8.3.5.1.2); HttpError 400 naming ``window``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise HttpError(400, f"window={text!r}: give center,width,function")
    function = VoiLutFunction.LINEAR
    if len(parts) == 3 and parts[2]:
        found = _FUNCTIONS.get(parts[2].lower())
        if found is None:
            raise HttpError(
                400, f"window={text!r}: function must be linear, linear-exact or sigmoid"
            )
        function = found
    try:
        return Window(float(parts[0]), float(parts[1]), function)
    except ValueError as exc:
        detail = str(exc) if "window" in str(exc) else "center and width must be numbers"
        raise HttpError(400, f"window={text!r}: {detail}") from None


def _int_or_none(value: str, name: str, text: str) -> int | None:
    if not value:
        return None
    if not re.fullmatch(r"[+-]?\d{1,9}", value):
        raise HttpError(400, f"viewport={text!r}: {name} must be a whole number")
    return int(value)


def parse_viewport(text: str) -> Viewport:
    """``vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3); HttpError 400 naming ``viewport``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise HttpError(400, f"viewport={text!r}: give vw,vh or vw,vh,sx,sy,sw,sh")
    names = ("vw", "vh", "sx", "sy", "sw", "sh")
    values = [_int_or_none(v, n, text) for v, n in zip(parts, names, strict=False)]
    try:
        source = None
        if len(values) == 6:
            source = Region(values[2] or 0, values[3] or 0, values[4], values[5])
        return Viewport(values[0], values[1], source)
    except ValueError as exc:
        raise HttpError(400, f"viewport={text!r}: {exc}") from None


def parse_quality(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise HttpError(400, f"quality={text!r}: must be a whole number from 1 to 100")
    return int(value)


def _options(
    *,
    accept: str | None,
    window: str | None,
    viewport: str | None,
    quality: str | None,
    thumbnail: bool,
) -> RenderOptions:
    fmt = negotiate_image(accept)
    size = THUMBNAIL_SIZE
    return RenderOptions(
        format=fmt,
        window=parse_window(window) if window is not None else None,
        viewport=(
            parse_viewport(viewport)
            if viewport is not None
            else Viewport(size, size)
            if thumbnail
            else None
        ),
        quality=(
            parse_quality(quality)
            if quality is not None
            else THUMBNAIL_QUALITY
            if thumbnail
            else RENDERED_QUALITY
        ),
    )


# -- which instance ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Image:
    series_uid: str
    sop_instance_uid: str
    number_of_frames: int


def _instances(
    svc: HttpServices,
    study: str,
    series: str | None,
    instance: str | None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """IMAGE-level answers in scope, in series and instance number order."""
    identifier: dict[str, Any] = {
        _STUDY_UID: {"vr": "UI", "Value": [study]},
        _SERIES_UID: {"vr": "UI", "Value": [series]} if series else {"vr": "UI"},
        _SOP_UID: {"vr": "UI", "Value": [instance]} if instance else {"vr": "UI"},
        _ROWS: {"vr": "US"},
        _NUMBER_OF_FRAMES: {"vr": "IS"},
    }
    try:
        return list(
            svc.query.find(
                identifier, level=QueryLevel.IMAGE, model=QueryModel.STUDY_ROOT, limit=limit
            )
        )
    except QueryError as exc:
        raise HttpError(400, str(exc)) from None


def _missing(svc: HttpServices, study: str, series: str | None, instance: str | None) -> HttpError:
    """A 404 naming the first of study, series, instance that is not stored."""
    if not _instances(svc, study, None, None, limit=1):
        return HttpError(404, f"no study {study} is stored")
    if series and not _instances(svc, study, series, None, limit=1):
        return HttpError(404, f"study {study} has no series {series}")
    return HttpError(404, f"series {series} of study {study} has no instance {instance}")


def _image(answer: dict[str, Any]) -> _Image:
    try:
        frames = int(first(answer, _NUMBER_OF_FRAMES) or 1)
    except (TypeError, ValueError):
        frames = 1
    return _Image(str(first(answer, _SERIES_UID)), str(first(answer, _SOP_UID)), frames)


def _choose(
    svc: HttpServices,
    study: str,
    series: str | None,
    instance: str | None,
    *,
    middle: bool,
) -> _Image:
    """The image to show: the instance named, else the first (or middle) image of the
    series, else of the study's first series with images."""
    found = _instances(svc, study, series, instance)
    if not found:
        raise _missing(svc, study, series, instance)
    if instance:
        return _image(found[0])
    images = [a for a in found if first(a, _ROWS)]
    if not images:
        where = f"series {series}" if series else f"study {study}"
        raise HttpError(404, f"{where} holds no images (only objects without pixel data)")
    chosen_series = first(images[0], _SERIES_UID)
    in_series = [a for a in images if first(a, _SERIES_UID) == chosen_series]
    return _image(in_series[len(in_series) // 2] if middle else in_series[0])


def _parse_frame(text: str) -> int:
    if not re.fullmatch(r"\d{1,9}", text.strip()) or int(text) < 1:
        raise HttpError(400, f"frame {text!r}: rendered resources take one frame number (from 1)")
    return int(text)


# -- rendering -----------------------------------------------------------------------------


def _render(
    svc: HttpServices,
    study: str,
    image: _Image,
    *,
    frame: int | None,
    options: RenderOptions,
) -> Response:
    identifier = {
        _STUDY_UID: {"vr": "UI", "Value": [study]},
        _SERIES_UID: {"vr": "UI", "Value": [image.series_uid]},
        _SOP_UID: {"vr": "UI", "Value": [image.sop_instance_uid]},
    }
    items = svc.retrieve.select(
        identifier, level=QueryLevel.IMAGE, model=QueryModel.STUDY_ROOT, interface="rendered"
    )
    if not items:
        raise HttpError(404, f"instance {image.sop_instance_uid} is no longer stored")
    item = items[0].item
    number = frame or 1
    try:
        data = svc.retrieve.stored_dataset(item)
        body = render_stored(data, item.transfer_syntax_uid, frame=number, options=options)
    except RenderError as exc:
        problem = f"instance {image.sop_instance_uid}: {exc.message}"
        raise HttpError(STATUS[exc.problem], problem) from None
    return Response(
        body,
        media_type=options.format.media_type,
        headers={"cache-control": _CACHE, "vary": "Accept"},
    )


def _answer(
    svc: HttpServices,
    request: Request,
    *,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frames: str | None = None,
    thumbnail: bool,
    window: str | None = None,
    viewport: str | None = None,
    quality: str | None = None,
    accept: str | None = None,
) -> Response:
    check_url_uids(Study=study, Series=series, SOP=instance)
    options = _options(
        accept=accept if accept is not None else request.headers.get("accept"),
        window=window,
        viewport=viewport,
        quality=quality,
        thumbnail=thumbnail,
    )
    frame = _parse_frame(frames) if frames is not None else None
    image = _choose(svc, study, series, instance, middle=thumbnail)
    if frame is None and thumbnail and image.number_of_frames > 1:
        frame = (image.number_of_frames + 1) // 2
    return _render(svc, study, image, frame=frame, options=options)


# -- routes --------------------------------------------------------------------------------

_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the image"}
}


@router.get(f"{_STUDY}/rendered", summary="Study rendered", responses=_IMAGE_RESPONSES)
def study_rendered(
    study: str,
    request: Request,
    svc: Services,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """The first image of the study's first series with images."""
    return _answer(
        svc,
        request,
        study=study,
        thumbnail=False,
        window=window,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


@router.get(f"{_SERIES}/rendered", summary="Series rendered", responses=_IMAGE_RESPONSES)
def series_rendered(
    study: str,
    series: str,
    request: Request,
    svc: Services,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """The first image of the series."""
    return _answer(
        svc,
        request,
        study=study,
        series=series,
        thumbnail=False,
        window=window,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


@router.get(f"{_INSTANCE}/rendered", summary="Instance rendered", responses=_IMAGE_RESPONSES)
def instance_rendered(
    study: str,
    series: str,
    instance: str,
    request: Request,
    svc: Services,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """The instance's first frame."""
    return _answer(
        svc,
        request,
        study=study,
        series=series,
        instance=instance,
        thumbnail=False,
        window=window,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


@router.get(f"{_FRAME}/rendered", summary="Frame rendered", responses=_IMAGE_RESPONSES)
def frame_rendered(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    svc: Services,
    window: WindowParam = None,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """One frame (a single frame number) of the instance."""
    return _answer(
        svc,
        request,
        study=study,
        series=series,
        instance=instance,
        frames=frames,
        thumbnail=False,
        window=window,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


@router.get(f"{_STUDY}/thumbnail", summary="Study thumbnail", responses=_IMAGE_RESPONSES)
def study_thumbnail(
    study: str,
    request: Request,
    svc: Services,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """The middle image of the study's first series with images, 128 px."""
    return _answer(
        svc,
        request,
        study=study,
        thumbnail=True,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


@router.get(f"{_SERIES}/thumbnail", summary="Series thumbnail", responses=_IMAGE_RESPONSES)
def series_thumbnail(
    study: str,
    series: str,
    request: Request,
    svc: Services,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """The middle image of the series, 128 px."""
    return _answer(
        svc,
        request,
        study=study,
        series=series,
        thumbnail=True,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


@router.get(f"{_INSTANCE}/thumbnail", summary="Instance thumbnail", responses=_IMAGE_RESPONSES)
def instance_thumbnail(
    study: str,
    series: str,
    instance: str,
    request: Request,
    svc: Services,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """The instance (its middle frame, if multi-frame), 128 px."""
    return _answer(
        svc,
        request,
        study=study,
        series=series,
        instance=instance,
        thumbnail=True,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )


@router.get(f"{_FRAME}/thumbnail", summary="Frame thumbnail", responses=_IMAGE_RESPONSES)
def frame_thumbnail(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    svc: Services,
    viewport: ViewportParam = None,
    quality: QualityParam = None,
    accept: AcceptParam = None,
) -> Response:
    """One frame of the instance, 128 px."""
    return _answer(
        svc,
        request,
        study=study,
        series=series,
        instance=instance,
        frames=frames,
        thumbnail=True,
        viewport=viewport,
        quality=quality,
        accept=accept,
    )

"""Rendering: one frame of a stored image as a consumer image (JPEG, PNG) a browser shows.

Used by WADO-RS ``/rendered`` and ``/thumbnail`` (PS3.18 8.3.5, 10.4.1.1.3) and by
WADO-URI. The pipeline follows the grayscale pipeline of PS3.3 C.11 and PS3.4 N.2:

1. decode one frame through pydicom's pixel data plugins (numpy, pylibjpeg, openjpeg,
   RLE, gdcm), so compressed stored objects render too; YBR colour comes out as RGB;
2. crop to the source region of the viewport, if given;
3. grayscale: Modality LUT (Rescale Slope/Intercept, from the functional groups of an
   enhanced multi-frame object where present, or a Modality LUT Sequence), then the
   VOI LUT (PS3.3 C.11.2.1.2): the window asked for, else the object's first
   Window Center/Width (and VOI LUT Function), else its VOI LUT Sequence, else the
   frame's own value range; MONOCHROME1 is inverted so that the output is always
   "white is high";
   colour (RGB, YBR_*, PALETTE COLOR): shown as RGB, scaled to 8 bits; a window is not
   applied (the VOI LUT is a grayscale concept);
4. scale to fit the viewport (aspect ratio kept), reducing by whole blocks first;
5. encode with Pillow.

Entry points: :func:`read_stored` (a stored data set's bytes to a pydicom Dataset),
:func:`render` (a Dataset's frame to image bytes) and :func:`render_stored` (both).
Failures raise :class:`RenderError` whose ``status`` is the HTTP status that says why.
"""

from __future__ import annotations

import contextlib
import enum
import io
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from netpacs.domain.outcomes import Problem, Refused

__all__ = [
    "MAX_VIEWPORT",
    "ImageFormat",
    "Region",
    "RenderError",
    "RenderOptions",
    "Viewport",
    "VoiLutFunction",
    "Window",
    "display_pixels",
    "number_of_frames",
    "read_stored",
    "render",
    "render_stored",
]

#: Largest rendered width or height; larger viewports are refused (memory, time).
MAX_VIEWPORT = 4096
FloatArray = npt.NDArray[np.float32]
ByteArray = npt.NDArray[np.uint8]

_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"})
_GRAY = frozenset({"MONOCHROME1", "MONOCHROME2"})


class RenderError(Refused):
    """A frame cannot be rendered: no such frame (NOT_FOUND), nothing this server can
    render (no pixel data, no decoder, an unsupported photometric interpretation:
    NOT_ACCEPTABLE), or a viewport outside the image (MALFORMED)."""


class ImageFormat(enum.Enum):
    """Rendered media types (PS3.18 Table 8.7.4-1, single-frame images)."""

    JPEG = "image/jpeg"
    PNG = "image/png"

    @property
    def media_type(self) -> str:
        return self.value


class VoiLutFunction(enum.Enum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.2-3."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window: center, width (in modality units, e.g. HU) and function."""

    center: float
    width: float
    function: VoiLutFunction = VoiLutFunction.LINEAR

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError("window center and width must be finite numbers")
        linear = self.function is VoiLutFunction.LINEAR
        if (linear and self.width < 1.0) or self.width <= 0.0:
            raise ValueError(
                f"window width {self.width:g} is not valid for {self.function.value} "
                f"({'at least 1' if linear else 'more than 0'}, PS3.3 C.11.2.1.2)"
            )


@dataclass(frozen=True, slots=True)
class Region:
    """A source region in pixels (PS3.18 8.3.5.1.3 sx, sy, sw, sh).

    ``width``/``height`` None mean "to the edge"; negative ones flip the image.
    """

    x: int = 0
    y: int = 0
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0:
            raise ValueError("the source region's origin must not be negative")
        if self.width == 0 or self.height == 0:
            raise ValueError("the source region must not be empty")


@dataclass(frozen=True, slots=True)
class Viewport:
    """Fit the rendered image within ``width`` x ``height`` pixels, keeping its aspect
    ratio (None: only the other dimension constrains it)."""

    width: int | None
    height: int | None
    source: Region | None = None

    def __post_init__(self) -> None:
        if self.width is None and self.height is None:
            raise ValueError("a viewport needs a width or a height")
        for value in (self.width, self.height):
            if value is not None and not 1 <= value <= MAX_VIEWPORT:
                raise ValueError(f"viewport dimensions must be 1 to {MAX_VIEWPORT} pixels")


@dataclass(frozen=True, slots=True)
class RenderOptions:
    format: ImageFormat = ImageFormat.JPEG
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90  # JPEG only, 1-100 (PS3.18 8.3.5.1.4)

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError("quality must be 1 to 100")


# -- reading -----------------------------------------------------------------------------


def read_stored(data: bytes, transfer_syntax_uid: str) -> Dataset:
    """A stored data set (without file meta) as a Dataset that pydicom can decode.

    Pixel data is not decoded here. Raises RenderError 422 when it does not parse.
    """
    syntax = UID(transfer_syntax_uid)
    try:
        if syntax.is_deflated:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        ds = pydicom.filereader.read_dataset(
            io.BytesIO(data),
            is_implicit_VR=syntax.is_implicit_VR if syntax.is_transfer_syntax else False,
            is_little_endian=syntax.is_little_endian if syntax.is_transfer_syntax else True,
        )
    except Exception as exc:  # pydicom raises many types on bad input
        raise RenderError(Problem.INVALID, f"the stored object does not parse: {exc}") from None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def render_stored(
    data: bytes,
    transfer_syntax_uid: str,
    *,
    frame: int = 1,
    options: RenderOptions | None = None,
) -> bytes:
    """Render ``frame`` (1-based) of a stored data set: :func:`read_stored` + :func:`render`."""
    return render(read_stored(data, transfer_syntax_uid), frame=frame, options=options)


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


# -- rendering ---------------------------------------------------------------------------


def render(ds: Dataset, *, frame: int = 1, options: RenderOptions | None = None) -> bytes:
    """Frame ``frame`` (1-based) of ``ds`` as JPEG or PNG bytes."""
    opts = options or RenderOptions()
    viewport = opts.viewport
    pixels = display_pixels(
        ds, frame=frame, window=opts.window, source=viewport.source if viewport else None
    )
    image = _scaled(pixels, viewport)
    out = io.BytesIO()
    if opts.format is ImageFormat.JPEG:
        image.save(out, format="JPEG", quality=opts.quality)
    else:
        image.save(out, format="PNG", compress_level=4)
    return out.getvalue()


def display_pixels(
    ds: Dataset,
    *,
    frame: int = 1,
    window: Window | None = None,
    source: Region | None = None,
) -> ByteArray:
    """Frame ``frame`` as 8-bit display values: (rows, columns) gray or (rows, columns, 3) RGB."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise RenderError(
            Problem.NOT_ACCEPTABLE, "the object has no pixel data: there is no image to render"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _GRAY and photometric not in _COLOUR and photometric != "PALETTE COLOR":
        raise RenderError(
            Problem.NOT_ACCEPTABLE,
            f"photometric interpretation {photometric or 'none'!r} not shown",
        )
    raw = _decode(ds, frame)
    if source is not None:
        raw = _crop(raw, source)
    if photometric in _GRAY:
        values = _modality(raw, ds, frame)
        gray = _voi(values, ds, frame, window)
        return 255 - gray if photometric == "MONOCHROME1" else gray
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(raw, ds)
        except Exception as exc:
            raise RenderError(
                Problem.INVALID, f"the palette colour lookup table is not usable: {exc}"
            ) from None
        return _to_8bit(np.asarray(rgb), _lut_bits(rgb))
    if raw.ndim != 3 or raw.shape[-1] != 3:
        raise RenderError(
            Problem.INVALID, f"colour frame has shape {raw.shape}, not rows x columns x 3"
        )
    return _to_8bit(raw, int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8))


def _decode(ds: Dataset, frame: int) -> npt.NDArray[Any]:
    frames = number_of_frames(ds)
    if not 1 <= frame <= frames:
        raise RenderError(
            Problem.NOT_FOUND, f"the object has {frames} frame(s); there is no frame {frame}"
        )
    try:
        arr = pixel_array(ds, index=frame - 1)
    except NotImplementedError as exc:
        raise RenderError(
            Problem.NOT_ACCEPTABLE, f"no decoder here for this pixel data: {exc}"
        ) from None
    except Exception as exc:  # the pixel plugins raise many types on bad data
        syntax = ds.file_meta.get("TransferSyntaxUID")
        name = getattr(syntax, "name", syntax)
        raise RenderError(
            Problem.INVALID, f"the pixel data ({name}) does not decode: {exc}"
        ) from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise RenderError(Problem.INVALID, f"decoded frame has unexpected shape {arr.shape}")
    return arr


def _crop(arr: npt.NDArray[Any], region: Region) -> npt.NDArray[Any]:
    rows, columns = arr.shape[:2]
    if region.x >= columns or region.y >= rows:
        raise RenderError(
            Problem.MALFORMED, f"the source region starts outside the {columns}x{rows} image"
        )
    x_step = -1 if (region.width or 1) < 0 else 1
    y_step = -1 if (region.height or 1) < 0 else 1
    x_end = columns if region.width is None else min(columns, region.x + abs(region.width))
    y_end = rows if region.height is None else min(rows, region.y + abs(region.height))
    return arr[region.y : y_end, region.x : x_end][::y_step, ::x_step]


def _functional(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of a functional group macro for ``frame`` (per-frame first, then shared)."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame - 1),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if items and len(items) > index:
            inner = items[index].get(sequence)
            if inner:
                item: Dataset = inner[0]
                return item
    return None


def _modality(raw: npt.NDArray[Any], ds: Dataset, frame: int) -> FloatArray:
    """Stored values to modality values (PS3.3 C.11.1): rescale or Modality LUT."""
    source: Dataset = _functional(ds, frame, "PixelValueTransformationSequence") or ds
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in source:
        try:
            return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        except Exception as exc:
            raise RenderError(Problem.INVALID, f"the Modality LUT is not usable: {exc}") from None
    slope = _number(source.get("RescaleSlope"), 1.0) or 1.0
    intercept = _number(source.get("RescaleIntercept"), 0.0)
    values = raw.astype(np.float32, copy=True)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    return values


def _number(value: Any, default: float) -> float:
    """The first value of a DS/FD element, or ``default`` when absent or not a number."""
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        if not value:
            return default
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def object_window(ds: Dataset, frame: int = 1) -> Window | None:
    """The object's first window (Frame VOI LUT of the frame, else the top level)."""
    source: Dataset = _functional(ds, frame, "FrameVOILUTSequence") or ds
    center = _number(source.get("WindowCenter"), math.nan)
    width = _number(source.get("WindowWidth"), math.nan)
    name = str(source.get("VOILUTFunction") or "LINEAR").strip().upper()
    function = VoiLutFunction.__members__.get(name, VoiLutFunction.LINEAR)
    try:
        return Window(center, width, function)
    except ValueError:
        return None  # absent or unusable: tolerant when reading


def apply_window(values: FloatArray, window: Window) -> ByteArray:
    """The VOI LUT functions of PS3.3 C.11.2.1.2 with an output range of 0-255."""
    c, w = window.center, window.width
    if window.function is VoiLutFunction.LINEAR:
        # C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped
        if w <= 1.0:
            out = np.where(values > c - 0.5, 255.0, 0.0)
        else:
            out = ((values - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
    elif window.function is VoiLutFunction.LINEAR_EXACT:
        out = ((values - c) / w + 0.5) * 255.0  # C.11.2.1.3.2
    else:
        with np.errstate(over="ignore"):
            out = 255.0 / (1.0 + np.exp(-4.0 * (values - c) / w))  # C.11.2.1.3.1
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _voi(values: FloatArray, ds: Dataset, frame: int, window: Window | None) -> ByteArray:
    chosen = window or object_window(ds, frame)
    if chosen is None and "VOILUTSequence" in ds:
        # An unusable VOI LUT falls back to the value range.
        with contextlib.suppress(Exception):
            values = np.asarray(apply_voi(values, ds), dtype=np.float32)
    if chosen is None:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.full(values.shape, 128 if high else 0, dtype=np.uint8)
        chosen = Window((low + high) / 2.0, high - low, VoiLutFunction.LINEAR_EXACT)
    return apply_window(values, chosen)


def _lut_bits(rgb: npt.NDArray[Any]) -> int:
    peak = int(np.max(rgb)) if rgb.size else 0
    return 8 if peak < 256 else 16


def _to_8bit(arr: npt.NDArray[Any], bits: int) -> ByteArray:
    if arr.dtype == np.uint8 and bits <= 8:
        same: ByteArray = arr
        return same
    top = float((1 << max(min(bits, 32), 1)) - 1)
    scaled: FloatArray = np.clip(arr.astype(np.float32) * (255.0 / top), 0, 255)
    return np.rint(scaled).astype(np.uint8)


# -- scaling -----------------------------------------------------------------------------


def fit(width: int, height: int, viewport: Viewport) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` image scaled to fit the viewport."""
    scales = []
    if viewport.width is not None:
        scales.append(viewport.width / width)
    if viewport.height is not None:
        scales.append(viewport.height / height)
    scale = min(scales)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _scaled(pixels: ByteArray, viewport: Viewport | None) -> Image.Image:
    rows, columns = pixels.shape[:2]
    if viewport is None:
        return Image.fromarray(np.ascontiguousarray(pixels))
    width, height = fit(columns, rows, viewport)
    factor = min(columns // width, rows // height)
    if factor >= 2:
        # Block means first: resampling then touches (width x height x 4) pixels at most.
        pixels = _reduce(pixels, factor)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _reduce(pixels: ByteArray, factor: int) -> ByteArray:
    rows, columns = pixels.shape[:2]
    r, c = rows // factor * factor, columns // factor * factor
    cut = pixels[:r, :c].astype(np.float32)
    shape = (r // factor, factor, c // factor, factor, *pixels.shape[2:])
    means: FloatArray = cut.reshape(shape).mean(axis=(1, 3))
    return np.rint(means).astype(np.uint8)

"""Frames of stored pixel data (PS3.18 10.4.1.1.4): as stored, or decoded to native pixels.

Uncompressed (native) pixel data is read frame by frame with range reads: a frame is
``Rows x Columns x Samples per Pixel x Bits Allocated / 8`` bytes at a fixed place in
the stored data set (PS3.5 8.1.1), so nothing is decoded. Encapsulated pixel data
(PS3.5 A.4) is read item by item from the stored file; a frame's fragments are sent as
stored, or decoded through pydicom's pixel data plugins (pylibjpeg, openjpeg, gdcm)
when the client asks for uncompressed frames. Where a frame is and how big comes from
the index (``instance.metadata_json``), not from the file's header.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import orjson
import pydicom.encaps
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from netpacs.domain.dicom.header import DEFLATED_EXPLICIT_VR_LE, EXPLICIT_VR_BE, first_int
from netpacs.domain.outcomes import Problem, Refused
from netpacs.domain.query import StoredInstance
from netpacs.services.deflate import inflate_range
from netpacs.storage.blobstore import BlobStore

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
NATIVE_SYNTAXES = frozenset(
    {IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE}
)

# PS3.18 Table 8.7.3-2/-5: the media type of a frame in each compressed transfer syntax.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}

_PIXEL_DATA = "7FE00010"
_EXTENDED_OFFSET_TABLE = "7FE00001"
_EXTENDED_OFFSET_TABLE_LENGTHS = "7FE00002"


class FrameError(Refused):
    """A frame cannot be given: there is no such frame (NOT_FOUND), the frame list is
    wrong (MALFORMED), or it cannot be decoded here (NOT_ACCEPTABLE)."""


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """How an instance's Pixel Data (7FE0,0010) is stored (from its indexed header)."""

    transfer_syntax_uid: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int
    offset: int  # of the value in the stored data set (inflated, if deflated)
    length: int  # -1: encapsulated
    header: dict[str, Any]

    @property
    def encapsulated(self) -> bool:
        return self.length < 0

    @property
    def frame_bits(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * self.bits_allocated

    @property
    def media_type(self) -> str:
        """Media type of a frame as stored (PS3.18 Table 8.7.3-2)."""
        if self.encapsulated:
            return FRAME_MEDIA_TYPES.get(self.transfer_syntax_uid, "application/octet-stream")
        return "application/octet-stream"


def pixel_layout(inst: StoredInstance) -> PixelLayout:
    """The pixel data layout of a stored instance; FrameError 404 when it has no frames."""
    header: dict[str, Any] = orjson.loads(inst.metadata_json)
    element = header.get(_PIXEL_DATA) or {}
    uri = str(element.get("BulkDataURI", ""))
    parts = uri.split(":")
    if len(parts) != 3 or parts[0] != "bulk":
        if uri == "bulk:pydicom":
            raise FrameError(
                Problem.NOT_ACCEPTABLE,
                "the frames of this object can only be read by full decoding",
            )
        raise FrameError(
            Problem.NOT_FOUND, f"instance {inst.sop_instance_uid} has no Pixel Data (7FE0,0010)"
        )
    rows, columns = first_int(header, "00280010"), first_int(header, "00280011")
    bits = first_int(header, "00280100")
    if not rows or not columns or not bits:
        raise FrameError(
            Problem.NOT_FOUND, f"instance {inst.sop_instance_uid} has no image pixel description"
        )
    return PixelLayout(
        transfer_syntax_uid=inst.transfer_syntax_uid,
        rows=rows,
        columns=columns,
        samples_per_pixel=first_int(header, "00280002") or 1,
        bits_allocated=bits,
        number_of_frames=max(first_int(header, "00280008") or 1, 1),
        offset=int(parts[1]),
        length=int(parts[2]),
        header=header,
    )


def parse_frame_list(text: str) -> list[int]:
    """A frame list of a /frames URL (PS3.18 8.3.3.1: comma-separated, 1-based numbers)."""
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not part.isascii():
            raise FrameError(
                Problem.MALFORMED, f"frame list {text!r} is not comma-separated frame numbers"
            )
        numbers.append(int(part))
    if any(n < 1 for n in numbers):
        raise FrameError(Problem.MALFORMED, f"frame numbers start at 1 (frame list {text!r})")
    return numbers


def check_frames(layout: PixelLayout, numbers: list[int], sop_uid: str) -> None:
    """FrameError 404 for frames the instance does not have; 400 for overlong lists.

    A list may name a frame twice, but not ask for more frames than the instance has
    (or 64): answers are held in memory while they are made.
    """
    beyond = [n for n in numbers if n > layout.number_of_frames]
    if beyond:
        shown = ", ".join(map(str, beyond[:5])) + (", ..." if len(beyond) > 5 else "")
        raise FrameError(
            Problem.NOT_FOUND,
            f"instance {sop_uid} has {layout.number_of_frames} frame(s); no frame {shown}",
        )
    if len(numbers) > max(layout.number_of_frames, 64):
        raise FrameError(
            Problem.MALFORMED,
            f"{len(numbers)} frames asked for; instance {sop_uid} has {layout.number_of_frames}",
        )


class FrameReader:
    """Reads frames out of stored objects."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs

    # -- native ----------------------------------------------------------------------------
    def native(
        self, inst: StoredInstance, layout: PixelLayout, numbers: list[int]
    ) -> Iterator[bytes]:
        """Native frames as Explicit VR Little Endian pixel bytes, read by range."""
        if layout.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE or layout.frame_bits % 8:
            yield from self._native_whole(inst, layout, numbers)
            return
        size = layout.frame_bits // 8
        if size * layout.number_of_frames > layout.length:
            raise FrameError(
                Problem.NOT_FOUND,
                f"the Pixel Data of {inst.sop_instance_uid} is shorter than its frames",
            )
        base = inst.dataset_offset + layout.offset
        with self._blobs.open(inst.blob_key) as f:
            for n in numbers:
                f.seek(base + (n - 1) * size)
                yield self._little_endian(f.read(size), layout)

    def _native_whole(
        self, inst: StoredInstance, layout: PixelLayout, numbers: list[int]
    ) -> Iterator[bytes]:
        """Frames of deflated data sets or with frames not on byte boundaries (1-bit).

        A deflated data set is inflated only up to the last frame asked for, and only
        its pixel data kept (never the whole object: it may inflate to gigabytes)."""
        bits = layout.frame_bits
        needed = min(layout.length, (max(numbers) * bits + 7) // 8)
        with self._blobs.open(inst.blob_key) as f:
            f.seek(inst.dataset_offset)
            if layout.transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE:
                pixels = inflate_range(f, layout.offset, needed)
            else:
                f.seek(inst.dataset_offset + layout.offset)
                pixels = f.read(needed)
        if bits % 8 == 0:
            size = bits // 8
            for n in numbers:
                yield self._little_endian(pixels[(n - 1) * size : n * size], layout)
            return
        unpacked = np.unpackbits(np.frombuffer(pixels, dtype=np.uint8), bitorder="little")
        for n in numbers:
            frame = unpacked[(n - 1) * bits : n * bits]
            yield np.packbits(frame, bitorder="little").tobytes()

    @staticmethod
    def _little_endian(data: bytes, layout: PixelLayout) -> bytes:
        if layout.transfer_syntax_uid != EXPLICIT_VR_BE or layout.bits_allocated <= 8:
            return data
        dtype = {16: ">u2", 32: ">u4", 64: ">u8"}.get(layout.bits_allocated)
        if dtype is None:
            return data
        return np.frombuffer(data, dtype=dtype).astype(dtype.replace(">", "<")).tobytes()

    # -- encapsulated ----------------------------------------------------------------------
    def stored(
        self, inst: StoredInstance, layout: PixelLayout, numbers: list[int]
    ) -> Iterator[bytes]:
        """Encapsulated frames as stored: each frame's fragments, joined (PS3.5 A.4)."""
        offsets = self._extended_offsets(inst, layout)
        with self._blobs.open(inst.blob_key) as f:
            f.seek(inst.dataset_offset + layout.offset)
            for n in numbers:
                try:
                    yield pydicom.encaps.get_frame(
                        f,
                        n - 1,
                        extended_offsets=offsets,
                        number_of_frames=layout.number_of_frames,
                    )
                except (ValueError, KeyError, EOFError) as exc:
                    raise FrameError(
                        Problem.NOT_FOUND, f"frame {n} of {inst.sop_instance_uid}: {exc}"
                    ) from None

    def _extended_offsets(
        self, inst: StoredInstance, layout: PixelLayout
    ) -> tuple[bytes, bytes] | None:
        values = [
            self._binary(inst, layout.header.get(tag))
            for tag in (_EXTENDED_OFFSET_TABLE, _EXTENDED_OFFSET_TABLE_LENGTHS)
        ]
        if values[0] is None or values[1] is None:
            return None
        return values[0], values[1]

    def _binary(self, inst: StoredInstance, element: Any) -> bytes | None:
        if not isinstance(element, dict):
            return None
        if "InlineBinary" in element:
            return base64.b64decode(element["InlineBinary"])
        parts = str(element.get("BulkDataURI", "")).split(":")
        if len(parts) == 3 and parts[0] == "bulk" and int(parts[2]) >= 0:
            return self._blobs.get_range(
                inst.blob_key, inst.dataset_offset + int(parts[1]), int(parts[2])
            )
        return None

    # -- decoded ---------------------------------------------------------------------------
    def decoded(
        self, inst: StoredInstance, layout: PixelLayout, numbers: list[int]
    ) -> Iterator[bytes]:
        """Encapsulated frames decoded to native pixels (colour as RGB), little endian."""
        check_decodable(layout.transfer_syntax_uid)
        path = self._blobs.local_path(inst.blob_key)
        for n in numbers:
            # A remote store's blob is read through its seekable stream (ranged reads:
            # the decoder reads the frame it wants, not the whole object).
            with contextlib.ExitStack() as stack:
                source: str | BinaryIO = (
                    str(path)
                    if path is not None
                    else stack.enter_context(self._blobs.open(inst.blob_key))
                )
                try:
                    array = pixel_array(source, index=n - 1)
                except Exception as exc:  # the decoders raise many types on corrupt data
                    raise FrameError(
                        Problem.NOT_ACCEPTABLE,
                        f"frame {n} of {inst.sop_instance_uid} cannot be decoded: {exc}",
                    ) from None
            yield np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()


def check_decodable(transfer_syntax_uid: str) -> None:
    """FrameError 406 unless a pydicom pixel data plugin here decodes this syntax."""
    try:
        available = get_decoder(UID(transfer_syntax_uid)).is_available
    except NotImplementedError:
        available = False
    if not available:
        name = UID(transfer_syntax_uid).name
        raise FrameError(
            Problem.NOT_ACCEPTABLE,
            f"frames in {name} cannot be decoded here; ask for transfer-syntax=* instead",
        )

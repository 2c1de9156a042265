"""Giving a stored object in another transfer syntax (pydicom and its pixel data plugins).

Used only by the retrieve service. Compressed pixel data is decoded losslessly first
(colour as RGB) and the object keeps its SOP Instance UID; between uncompressed syntaxes
only the data set encoding changes.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import UID

from netpacs.domain.dicom.encoding import read_encoded, write_encoded
from netpacs.domain.dicom.header import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)
from netpacs.domain.outcomes import Problem, Refused
from netpacs.services.coercion import Coercion, apply_to_dataset

UNCOMPRESSED = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE})


class TranscodeError(Refused):
    """An object cannot be given in the transfer syntax asked for."""

    def __init__(self, message: str) -> None:
        super().__init__(Problem.NOT_ACCEPTABLE, message)


@functools.cache
def can_transcode(stored: str, target: str) -> bool:
    """Whether objects in ``stored`` can be given in ``target`` here."""
    try:
        check_transcodable(stored, target)
    except TranscodeError:
        return False
    return True


def check_transcodable(stored: str, target: str) -> None:
    """Raise TranscodeError unless objects in ``stored`` can be given in ``target``."""
    if stored == target:
        return
    wanted, have = UID(target), UID(stored)
    if not wanted.is_transfer_syntax or wanted == EXPLICIT_VR_BE:
        raise TranscodeError(f"netpacs does not write {target} ({wanted.name or 'unknown'})")
    if have.is_compressed and not _available(get_decoder, have):
        raise TranscodeError(f"no decoder here for the stored {have.name}")
    if wanted.is_compressed and not _available(get_encoder, wanted):
        raise TranscodeError(f"no encoder here for {wanted.name}")


def _available(get: Any, uid: UID) -> bool:
    try:
        return bool(get(uid).is_available)
    except NotImplementedError:
        return False


def transcode_part10(
    blob: bytes, sop_instance_uid: str, target_uid: str, coercion: Coercion | None
) -> bytes:
    """A stored Part 10 file as a Part 10 file in ``target_uid``, coerced when asked.

    An object without pixel data asked for in a compressed syntax comes in Explicit VR
    Little Endian (PS3.18 8.7.3.5.2). Call :func:`check_transcodable` first: this raises
    :class:`TranscodeError` on what it cannot do.
    """
    ds = pydicom.dcmread(io.BytesIO(blob))
    if coercion is not None:
        apply_to_dataset(ds, coercion)
    target = UID(target_uid)
    try:
        has_pixels = "PixelData" in ds
        if has_pixels and ds.file_meta.TransferSyntaxUID.is_compressed:
            # The same object in another syntax: pydicom would otherwise give it a
            # new SOP Instance UID, and the receiver a duplicate of the stored one.
            ds.decompress(generate_instance_uid=False)
        if target.is_compressed and has_pixels:
            ds.compress(target, generate_instance_uid=False)
        else:
            if target.is_compressed:
                target = UID(EXPLICIT_VR_LE)
            ds.file_meta.TransferSyntaxUID = target
        out = io.BytesIO()
        ds.save_as(
            out,
            implicit_vr=target == IMPLICIT_VR_LE,
            little_endian=True,
            enforce_file_format=True,
        )
    except Exception as exc:  # the pixel plugins raise many types
        raise TranscodeError(
            f"{sop_instance_uid} cannot be given in {target.name}: {exc}"
        ) from None
    return out.getvalue()


def reencode_dataset(data: bytes, stored: str, target: str) -> bytes:
    """An uncompressed data set (no file meta) in another uncompressed syntax."""
    return write_encoded(read_encoded(data, stored), target)

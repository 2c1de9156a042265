"""Whether two encodings of one SOP Instance UID hold the same instance.

A modality that re-sends after a lossless recompression, or a peer archive whose copy
is in another transfer syntax, sends the *same* instance in other bytes. Other
archives (dcm4chee, Orthanc) accept such a re-send and keep their copy; so does
netpacs. What "the same content" means here:

- every element of the data set outside group 0002 (the file meta, which says how
  it was encoded and by whom) is present in both, with equal values, recursively
  into sequence items; a value of an OW/OF/OL/OD/OV element is compared after
  byte-swapping when one side is big endian (PS3.5 7.3); a value read as UN on one
  side (an implicit VR private element) is compared as its little-endian bytes;
- Data Set Trailing Padding (FFFC,FFFC) is ignored (PS3.5 7.8: no meaning);
- the pixel data (7FE0,0010) is equal when its encoded values are equal, else when
  both decode (native, RLE, JPEG-LS, JPEG 2000 or JPEG lossless) to equal arrays:
  a *lossless* recompression. A lossy copy decodes to other pixel values and is
  therefore other content (a lossy derivative must carry a new SOP Instance UID,
  PS3.3 C.7.6.1.1.5). Float pixel data is compared as encoded.

Identical bytes are answered before this module is asked (a byte comparison of the
stored copy, the fast path of every idempotent re-send). This one decodes both data
sets with pydicom, so it runs only for a re-send whose bytes differ, and only for
objects up to :data:`COMPARE_MAX` bytes: larger ones are not compared and count as
other content (their sender is told so, and can be answered by a person).
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

# Objects up to this size are decoded and compared; larger ones count as different.
COMPARE_MAX = 256 * 1024 * 1024

_PIXEL_DATA = 0x7FE00010
_TRAILING_PADDING = 0xFFFCFFFC
_WORDS = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def content_difference(stored: bytes, received: bytes) -> str | None:
    """None when the two Part 10 files hold the same instance (module docstring);
    else a short description of the first difference, for the log and the sender."""
    try:
        a = pydicom.dcmread(io.BytesIO(stored), force=True)
        b = pydicom.dcmread(io.BytesIO(received), force=True)
    except Exception as exc:
        return f"cannot be decoded to compare: {exc}"
    return _dataset_difference(a, b, _little(a), _little(b)) or _pixel_difference(a, b)


def _little(ds: Dataset) -> bool:
    ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
    return ts != pydicom.uid.ExplicitVRBigEndian


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _dataset_difference(a: Dataset, b: Dataset, a_le: bool, b_le: bool) -> str | None:
    for tag in sorted(set(a.keys()) | set(b.keys())):
        if tag in (_PIXEL_DATA, _TRAILING_PADDING) or BaseTag(tag).group == 0x0002:
            continue
        if tag not in a or tag not in b:
            return f"{_tag(tag)} is in only one copy"
        x, y = a[tag], b[tag]
        if x.VR == "SQ" or y.VR == "SQ":
            if x.VR != y.VR or len(x.value) != len(y.value):
                return f"{_tag(tag)} differs"
            for i, j in zip(x.value, y.value, strict=True):
                found = _dataset_difference(i, j, a_le, b_le)
                if found:
                    return found
            continue
        if not _equal(x, y, a_le, b_le):
            return f"{_tag(tag)} differs"
    return None


def _equal(x: DataElement, y: DataElement, x_le: bool, y_le: bool) -> bool:
    if x.value == y.value:
        return True
    if "UN" in (x.VR, y.VR) and x.VR != y.VR:
        return _as_bytes(x, x_le) == _as_bytes(y, y_le)
    if x.VR == y.VR and x.VR in _WORDS and x_le != y_le:
        return bool(_swapped(x.value, _WORDS[x.VR]) == y.value)
    return False


def _as_bytes(elem: DataElement, little: bool) -> bytes | None:
    """The value of ``elem`` as little-endian bytes (to compare a UN with a known VR)."""
    value: Any = elem.value
    if elem.VR == "UN" or isinstance(value, bytes):
        raw = bytes(value or b"")
        return raw if little or elem.VR not in _WORDS else _swapped(raw, _WORDS[elem.VR])
    try:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_data_element

        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        write_data_element(fp, elem)
        return fp.getvalue()[8:]  # the value, after tag and 4-byte length
    except Exception:
        return None


def _swapped(raw: bytes, width: int) -> bytes:
    if not raw or len(raw) % width:
        return raw
    return np.frombuffer(raw, dtype=f"u{width}").byteswap().tobytes()


def _pixel_difference(a: Dataset, b: Dataset) -> str | None:
    if (_PIXEL_DATA in a) != (_PIXEL_DATA in b):
        return "(7FE0,0010) is in only one copy"
    if _PIXEL_DATA not in a:
        return None
    if a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID and bytes(
        a.PixelData
    ) == bytes(b.PixelData):
        return None
    try:
        with warnings.catch_warnings():  # e.g. "excess padding removed": not ours to log
            warnings.simplefilter("ignore")
            x, y = a.pixel_array, b.pixel_array
    except Exception as exc:
        return f"pixel data cannot be decoded to compare: {exc}"
    if x.shape != y.shape or not np.array_equal(x, y):
        return "the decoded pixel data differs"
    return None

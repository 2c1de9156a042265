"""A flat DICOM JSON data set (PS3.18 F.2) encoded straight to Little Endian bytes.

Every C-FIND match leaves the query service as DICOM JSON and leaves netpacs as an
encoded identifier. Through pydicom (``Dataset.from_json``, then ``write_dataset``)
that took a third of the DIMSE worker's CPU for a C-FIND by Patient ID: an element
object, a value conversion and a validation per attribute, to write a few short
strings. pydicom offers no encoder from JSON, so this module writes the common case
itself. Identifiers hold text, numbers as text (IS) and a few unsigned integers, in
Implicit or Explicit VR Little Endian, in ASCII or UTF-8.

:func:`encode_json_dataset` returns ``None`` for anything else: a sequence, a binary
or floating-point VR, a person name with more than its alphabetic group, a character
set other than the default or UTF-8, a value that is not a string where text belongs,
or a value too long for a 16-bit length. The caller then encodes through pydicom.
The bytes are pydicom's own for the same data set (tests/dicom/test_json_encode.py
compares them).
"""

from __future__ import annotations

import struct
from typing import Any

UTF8 = "ISO_IR 192"

_TEXT = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# The VRs whose text the Specific Character Set governs (PS3.5 6.1.2.3); the others
# are ASCII whatever it says (any other character: left to pydicom).
_CHARSET_TEXT = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_LONG_LENGTH = frozenset({"UC", "UR", "UT"})  # 4-byte length in Explicit VR
_UNSIGNED = {"US": "<H", "UL": "<I"}
_MAX_SHORT = 0xFFFE


def encode_json_dataset(result: dict[str, Any], *, implicit: bool) -> bytes | None:
    """``result`` encoded in Implicit (``implicit``) or Explicit VR Little Endian, or
    None when it holds something this encoder leaves to pydicom (see the module)."""
    out = bytearray()
    try:
        charset = result.get("00080005")
        codec = "ascii"
        if charset is not None:
            names = charset.get("Value") or []
            if names == [UTF8]:
                codec = "utf-8"
            elif names not in ([], [""], ["ISO_IR 6"]):
                return None
        for tag, key in sorted((int(key, 16), key) for key in result):
            if tag & 0xFFFF == 0:  # a group length: left to pydicom
                return None
            element = result[key]
            vr = element.get("vr")
            raw = _value(element, vr, codec)
            if raw is None:
                return None
            out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
            if implicit:
                out += struct.pack("<I", len(raw))
            elif vr in _LONG_LENGTH:
                out += vr.encode() + b"\0\0" + struct.pack("<I", len(raw))
            elif len(raw) > _MAX_SHORT:
                return None
            else:
                out += vr.encode() + struct.pack("<H", len(raw))
            out += raw
    except (UnicodeEncodeError, ValueError, TypeError, AttributeError, struct.error):
        return None
    return bytes(out)


def _value(element: dict[str, Any], vr: Any, codec: str) -> bytes | None:
    """The element's value field, padded to even length; None: not for this encoder."""
    if "BulkDataURI" in element or "InlineBinary" in element:
        return None
    values = element.get("Value", [])
    if not isinstance(values, list):
        return None
    if vr in _UNSIGNED:
        if not all(type(v) is int for v in values):
            return None
        return b"".join(struct.pack(_UNSIGNED[vr], v) for v in values)
    if vr == "IS":
        if not all(type(v) is int for v in values):
            return None
        text = "\\".join(str(v) for v in values)
    elif vr == "PN":
        names = []
        for v in values:
            if not isinstance(v, dict) or set(v) != {"Alphabetic"}:
                return None
            name = v["Alphabetic"]
            if not isinstance(name, str):
                return None
            names.append(name)
        text = "\\".join(names)
    elif vr in _TEXT:
        if not all(isinstance(v, str) for v in values):
            return None
        text = "\\".join(values)
    else:
        return None
    raw = text.encode(codec if vr in _CHARSET_TEXT else "ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw

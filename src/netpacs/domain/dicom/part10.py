"""DICOM Part 10 file framing (PS3.10 7.1): preamble, 'DICM', file meta group, data set.

Netpacs stores every object as a Part 10 file with a zeroed preamble. For objects
received over DIMSE (a bare data set) it writes the file meta group itself, recording
the sending and receiving AE titles there so that ``netpacs reindex`` can recover an
object's origin from the blob alone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netpacs.domain.dicom.header import HeaderError

PREAMBLE = bytes(128)
MAGIC = b"DICM"
IMPLEMENTATION_CLASS_UID = "2.25.208424395455523366323076785619246854855"
IMPLEMENTATION_VERSION_NAME = "NETPACS_010"


@dataclass(frozen=True, slots=True)
class FileMeta:
    """The file meta information that netpacs reads back."""

    transfer_syntax_uid: str
    media_storage_sop_class_uid: str
    media_storage_sop_instance_uid: str
    source_ae_title: str
    sending_ae_title: str
    receiving_ae_title: str
    dataset_offset: int  # where the data set starts in the file
    private_creator_uid: str = ""  # (0002,0100) Private Information Creator UID
    private_information: bytes = b""  # (0002,0102) Private Information


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def build_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    sending_ae_title: str | None = None,
    receiving_ae_title: str | None = None,
) -> bytes:
    """Preamble, magic and an explicit VR little endian file meta group (PS3.10 7.1)."""
    body = [
        _element(2, 0x0001, b"OB", b"\x00\x01"),
        _element(2, 0x0002, b"UI", _text(sop_class_uid, b"\0")),
        _element(2, 0x0003, b"UI", _text(sop_instance_uid, b"\0")),
        _element(2, 0x0010, b"UI", _text(transfer_syntax_uid, b"\0")),
        _element(2, 0x0012, b"UI", _text(IMPLEMENTATION_CLASS_UID, b"\0")),
        _element(2, 0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME, b" ")),
    ]
    if sending_ae_title:
        body.append(_element(2, 0x0016, b"AE", _text(sending_ae_title, b" ")))
        body.append(_element(2, 0x0017, b"AE", _text(sending_ae_title, b" ")))
    if receiving_ae_title:
        body.append(_element(2, 0x0018, b"AE", _text(receiving_ae_title, b" ")))
    group = b"".join(body)
    return PREAMBLE + MAGIC + _element(2, 0x0000, b"UL", struct.pack("<I", len(group))) + group


def read_file_meta(buf: bytes | memoryview) -> FileMeta:
    """Parse the file meta group of a Part 10 file held in ``buf``.

    Tolerant: the group length may be missing or wrong; elements are walked until
    the first non-0002 group.
    """
    if len(buf) < 132 or bytes(buf[128:132]) != MAGIC:
        raise HeaderError("not a DICOM Part 10 file (no 'DICM' after the preamble)")
    pos = 132
    values: dict[int, str] = {}
    private = b""
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 2:
            break
        vr = bytes(buf[pos + 4 : pos + 6])
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            start = pos + 8
        if start + length > len(buf):
            raise HeaderError("file meta element runs past the end of the file")
        if vr in (b"UI", b"AE", b"SH"):
            values[elem] = bytes(buf[start : start + length]).decode("ascii", "replace")
            values[elem] = values[elem].strip(" \0")
        elif elem == 0x0102:
            private = bytes(buf[start : start + length])
        pos = start + length
    ts = values.get(0x0010)
    if not ts:
        raise HeaderError("file meta has no Transfer Syntax UID (0002,0010)")
    return FileMeta(
        transfer_syntax_uid=ts,
        media_storage_sop_class_uid=values.get(0x0002, ""),
        media_storage_sop_instance_uid=values.get(0x0003, ""),
        source_ae_title=values.get(0x0016, ""),
        sending_ae_title=values.get(0x0017, ""),
        receiving_ae_title=values.get(0x0018, ""),
        dataset_offset=pos,
        private_creator_uid=values.get(0x0100, ""),
        private_information=private,
    )


def with_private_information(head: bytes, information: bytes) -> bytes:
    """``head`` (preamble, magic, file meta group) with our (0002,0100)/(0002,0102).

    Every other file meta element is kept as it was; a Private Information pair left by
    another implementation is replaced (PS3.10 7.1: the pair belongs to the application
    writing the file); the group length is recomputed. ``information`` is padded to an
    even length with a space.
    """
    if len(information) % 2:
        information += b" "
    elements: list[tuple[int, bytes]] = []
    pos = 132
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        if group != 2:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            (length,) = struct.unpack_from("<I", head, pos + 8)
            end = pos + 12 + length
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            end = pos + 8 + length
        if elem not in (0x0000, 0x0100, 0x0102):
            elements.append((elem, head[pos:end]))
        pos = end
    elements.append((0x0100, _element(2, 0x0100, b"UI", _text(IMPLEMENTATION_CLASS_UID, b"\0"))))
    elements.append((0x0102, _element(2, 0x0102, b"OB", information)))
    elements.sort(key=lambda e: e[0])
    group_bytes = b"".join(raw for _, raw in elements)
    length_element = _element(2, 0x0000, b"UL", struct.pack("<I", len(group_bytes)))
    return PREAMBLE + MAGIC + length_element + group_bytes

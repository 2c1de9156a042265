"""DIMSE command sets (PS3.7 9.3, E.1): group 0000 in implicit VR little endian.

Command sets are a dozen small elements; they are encoded and decoded directly here
so that the C-STORE path builds no pydicom objects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
# DIMSE-N used by Storage Commitment (PS3.7 10.3.1, 10.3.4; adapters/dimse/commitment.py)
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130

# -- DIMSE-N for MPPS (PS3.7 10.3.3 N-SET, 10.3.5 N-CREATE; issue 15) --
N_SET_RQ = 0x0120
N_SET_RSP = 0x8120
N_CREATE_RQ = 0x0140
N_CREATE_RSP = 0x8140

NO_DATA_SET = 0x0101
HAS_DATA_SET = 0x0000

# Element numbers within group 0000 and how each is encoded.
AFFECTED_SOP_CLASS_UID = 0x0002
REQUESTED_SOP_CLASS_UID = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
COMMAND_DATA_SET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE_UID = 0x1000
REMAINING = 0x1020
COMPLETED = 0x1021
FAILED = 0x1022
WARNING = 0x1023
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_MESSAGE_ID = 0x1031
# -- DIMSE-N elements used by MPPS and Storage Commitment (issue 15) --
ERROR_ID = 0x0903
REQUESTED_SOP_INSTANCE_UID = 0x1001
EVENT_TYPE_ID = 0x1002
ACTION_TYPE_ID = 0x1008

_US = frozenset(
    {
        COMMAND_FIELD,
        MESSAGE_ID,
        MESSAGE_ID_BEING_RESPONDED_TO,
        PRIORITY,
        COMMAND_DATA_SET_TYPE,
        STATUS,
        REMAINING,
        COMPLETED,
        FAILED,
        WARNING,
        MOVE_ORIGINATOR_MESSAGE_ID,
        ERROR_ID,
        EVENT_TYPE_ID,
        ACTION_TYPE_ID,
    }
)
_UID = frozenset(
    {
        AFFECTED_SOP_CLASS_UID,
        REQUESTED_SOP_CLASS_UID,
        AFFECTED_SOP_INSTANCE_UID,
        REQUESTED_SOP_INSTANCE_UID,
    }
)
_AE = frozenset({MOVE_DESTINATION, MOVE_ORIGINATOR_AE})
_EL = struct.Struct("<HHI")


class CommandError(ValueError):
    """A command set that cannot be decoded."""


@dataclass(slots=True)
class Command:
    """A decoded command set: values by element number of group 0000."""

    values: dict[int, int | str] = field(default_factory=dict)

    def get_int(self, elem: int, default: int = 0) -> int:
        v = self.values.get(elem, default)
        return v if isinstance(v, int) else default

    def get_str(self, elem: int) -> str:
        v = self.values.get(elem, "")
        return v if isinstance(v, str) else ""

    @property
    def field(self) -> int:
        return self.get_int(COMMAND_FIELD)

    @property
    def message_id(self) -> int:
        return self.get_int(MESSAGE_ID)

    @property
    def has_data_set(self) -> bool:
        return self.get_int(COMMAND_DATA_SET_TYPE, NO_DATA_SET) != NO_DATA_SET


def decode_command(buf: bytes) -> Command:
    values: dict[int, int | str] = {}
    pos = 0
    n = len(buf)
    while pos + 8 <= n:
        group, elem, length = _EL.unpack_from(buf, pos)
        pos += 8
        if pos + length > n:
            raise CommandError("command element runs past the end of the command set")
        if group != 0:
            raise CommandError(f"element ({group:04X},{elem:04X}) in a command set")
        raw = buf[pos : pos + length]
        pos += length
        if elem in _US and length == 2:
            values[elem] = struct.unpack("<H", raw)[0]
        elif elem in _UID or elem in _AE or elem == ERROR_COMMENT:
            values[elem] = raw.decode("ascii", "replace").strip(" \0")
    if pos != n:
        raise CommandError("trailing bytes after the command set")
    if COMMAND_FIELD not in values:
        raise CommandError("command set without a Command Field (0000,0100)")
    return Command(values)


def _pad(raw: bytes, pad: bytes) -> bytes:
    return raw + pad if len(raw) % 2 else raw


def encode_command(values: dict[int, int | str]) -> bytes:
    """Encode group 0000 with its group length, elements in ascending order."""
    parts: list[bytes] = []
    for elem in sorted(values):
        value = values[elem]
        if elem in _US:
            raw = struct.pack("<H", int(value))
        elif elem in _UID:
            raw = _pad(str(value).encode("ascii"), b"\0")
        elif elem in _AE:
            raw = str(value).encode("ascii", "replace")[:16].ljust(16)
        elif elem == ERROR_COMMENT:
            raw = _pad(str(value).encode("ascii", "replace")[:64], b" ")
        elif elem == OFFENDING_ELEMENT:
            tag = int(value)
            raw = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        else:
            raise ValueError(f"cannot encode command element (0000,{elem:04X})")
        parts.append(_EL.pack(0, elem, len(raw)) + raw)
    body = b"".join(parts)
    return _EL.pack(0, 0, 4) + struct.pack("<I", len(body)) + body


def response(
    request: Command,
    rsp_field: int,
    status: int,
    *,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    has_data_set: bool = False,
    error_comment: str | None = None,
    counts: tuple[int, int, int, int] | None = None,
) -> bytes:
    """An encoded response command set to ``request``."""
    values: dict[int, int | str] = {
        COMMAND_FIELD: rsp_field,
        MESSAGE_ID_BEING_RESPONDED_TO: request.message_id,
        COMMAND_DATA_SET_TYPE: HAS_DATA_SET if has_data_set else NO_DATA_SET,
        STATUS: status,
    }
    cls = sop_class_uid if sop_class_uid is not None else request.get_str(AFFECTED_SOP_CLASS_UID)
    if cls:
        values[AFFECTED_SOP_CLASS_UID] = cls
    if sop_instance_uid:
        values[AFFECTED_SOP_INSTANCE_UID] = sop_instance_uid
    if error_comment:
        values[ERROR_COMMENT] = error_comment
    if counts is not None:
        remaining, completed, failed, warning = counts
        if remaining >= 0:
            values[REMAINING] = remaining
        values[COMPLETED] = completed
        values[FAILED] = failed
        values[WARNING] = warning
    return encode_command(values)

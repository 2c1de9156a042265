"""DICOM upper layer PDUs (PS3.8 9.3): association negotiation, data, release, abort.

Why our own: the receive path is an asyncio protocol with no per-association polling
threads (PERFORMANCE.md: pynetdicom's two polling loops per association, not our
code, cap its C-STORE rate). pynetdicom's PDU classes are bound to its primitives
and state machine, so the few PDU layouts are encoded and decoded here, following
PS3.8 9.3 tables 9-11 to 9-26.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# Presentation context results (PS3.8 9.3.3.2)
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ (PS3.8 9.3.4)
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3
RJ_REASON_NO_REASON = 1
RJ_REASON_APP_CONTEXT = 2
RJ_REASON_CALLING_AE = 3
RJ_REASON_CALLED_AE = 7
RJ_REASON_TEMPORARY_CONGESTION = 1  # with source 3 (presentation)
RJ_REASON_LOCAL_LIMIT_EXCEEDED = 2  # with source 3 (presentation)

# A-ABORT sources and reasons (PS3.8 9.3.8)
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_INVALID_PARAMETER = 6

_HDR = struct.Struct(">BBI")
_ITEM = struct.Struct(">BBH")


class PDUError(ValueError):
    """A PDU that cannot be decoded; the association is aborted."""


@dataclass(frozen=True, slots=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoleSelection:
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    called_ae_title: str
    calling_ae_title: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_pdu_length: int  # 0: no limit
    implementation_class_uid: str
    implementation_version_name: str
    roles: tuple[RoleSelection, ...] = ()


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    context_id: int
    result: int
    transfer_syntax: str  # meaningful only when result == PC_ACCEPTANCE
    abstract_syntax: str = ""


@dataclass(slots=True)
class AssociateAccept:
    called_ae_title: str
    calling_ae_title: str
    contexts: list[AcceptedContext]
    max_pdu_length: int
    implementation_class_uid: str
    implementation_version_name: str
    roles: list[RoleSelection] = field(default_factory=list)


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _HDR.pack(pdu_type, 0, len(body)) + body


def _item(item_type: int, body: bytes) -> bytes:
    return _ITEM.pack(item_type, 0, len(body)) + body


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ")


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip()


def _ae16(value: str) -> bytes:
    return value.encode("ascii", "replace")[:16].ljust(16)


def decode_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the body (after the 6-byte PDU header) of an A-ASSOCIATE-RQ."""
    if len(body) < 68:
        raise PDUError("A-ASSOCIATE-RQ is shorter than its fixed fields")
    called = _ae(body[4:20])
    calling = _ae(body[20:36])
    pos = 68
    app_ctx = ""
    contexts: list[ProposedContext] = []
    roles: list[RoleSelection] = []
    max_len = 0
    impl_uid = impl_name = ""
    while pos + 4 <= len(body):
        itype, _, ilen = _ITEM.unpack_from(body, pos)
        ibody = body[pos + 4 : pos + 4 + ilen]
        if len(ibody) != ilen:
            raise PDUError("A-ASSOCIATE-RQ item runs past the PDU")
        pos += 4 + ilen
        if itype == 0x10:
            app_ctx = _uid(ibody)
        elif itype == 0x20:
            contexts.append(_decode_proposed_context(ibody))
        elif itype == 0x50:
            max_len, impl_uid, impl_name, roles = _decode_user_info(ibody)
    return AssociateRequest(
        called_ae_title=called,
        calling_ae_title=calling,
        application_context=app_ctx,
        contexts=tuple(contexts),
        max_pdu_length=max_len,
        implementation_class_uid=impl_uid,
        implementation_version_name=impl_name,
        roles=tuple(roles),
    )


def _decode_proposed_context(body: bytes) -> ProposedContext:
    if len(body) < 4:
        raise PDUError("presentation context item too short")
    ctx_id = body[0]
    pos = 4
    abstract = ""
    transfer: list[str] = []
    while pos + 4 <= len(body):
        stype, _, slen = _ITEM.unpack_from(body, pos)
        value = _uid(body[pos + 4 : pos + 4 + slen])
        pos += 4 + slen
        if stype == 0x30:
            abstract = value
        elif stype == 0x40:
            transfer.append(value)
    return ProposedContext(ctx_id, abstract, tuple(transfer))


def _decode_user_info(body: bytes) -> tuple[int, str, str, list[RoleSelection]]:
    pos = 0
    max_len = 0
    impl_uid = impl_name = ""
    roles: list[RoleSelection] = []
    while pos + 4 <= len(body):
        stype, _, slen = _ITEM.unpack_from(body, pos)
        sbody = body[pos + 4 : pos + 4 + slen]
        pos += 4 + slen
        if stype == 0x51 and slen == 4:
            (max_len,) = struct.unpack(">I", sbody)
        elif stype == 0x52:
            impl_uid = _uid(sbody)
        elif stype == 0x55:
            impl_name = _ae(sbody)
        elif stype == 0x54 and slen >= 4:
            (ulen,) = struct.unpack_from(">H", sbody, 0)
            uid = _uid(sbody[2 : 2 + ulen])
            if len(sbody) >= 4 + ulen:
                roles.append(RoleSelection(uid, bool(sbody[2 + ulen]), bool(sbody[3 + ulen])))
    return max_len, impl_uid, impl_name, roles


def encode_associate_ac(ac: AssociateAccept) -> bytes:
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for ctx in ac.contexts:
        ts = _item(0x40, ctx.transfer_syntax.encode()) if ctx.transfer_syntax else b""
        items.append(_item(0x21, bytes([ctx.context_id, 0, ctx.result, 0]) + ts))
    user = [
        _item(0x51, struct.pack(">I", ac.max_pdu_length)),
        _item(0x52, ac.implementation_class_uid.encode()),
    ]
    for role in ac.roles:
        uid = role.sop_class_uid.encode()
        user.append(
            _item(0x54, struct.pack(">H", len(uid)) + uid + bytes([role.scu_role, role.scp_role]))
        )
    user.append(_item(0x55, ac.implementation_version_name.encode()))
    items.append(_item(0x50, b"".join(user)))
    fixed = (
        struct.pack(">HH", 1, 0)
        + _ae16(ac.called_ae_title)
        + _ae16(ac.calling_ae_title)
        + bytes(32)
    )
    return pdu(A_ASSOCIATE_AC, fixed + b"".join(items))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_rp() -> bytes:
    return pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = 0) -> bytes:
    return pdu(A_ABORT, bytes([0, 0, source, reason]))


def encode_p_data(
    context_id: int, payload: bytes | memoryview, *, command: bool, max_pdu_length: int
) -> list[bytes | memoryview]:
    """P-DATA-TF PDUs carrying one message fragment stream (PS3.8 9.3.5, E.2).

    Returns a list of buffers to write in order (headers and payload slices, so large
    data sets are not copied).
    """
    view = memoryview(payload)
    limit = (max_pdu_length - 6) if max_pdu_length else 1 << 24
    limit = max(limit, 1)
    out: list[bytes | memoryview] = []
    pos = 0
    total = len(view)
    while True:
        chunk = view[pos : pos + limit]
        pos += len(chunk)
        last = pos >= total
        mch = (1 if command else 0) | (2 if last else 0)
        out.append(
            struct.pack(">BBIIBB", P_DATA_TF, 0, len(chunk) + 6, len(chunk) + 2, context_id, mch)
        )
        out.append(chunk)
        if last:
            return out

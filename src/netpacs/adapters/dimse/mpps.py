"""Modality Performed Procedure Step SCP: N-CREATE and N-SET (PS3.4 F.7, PS3.7 10.3).

The data set becomes :class:`~netpacs.services.orders.mpps.StepValues`; the MPPS service
applies the rules; its refusals become the statuses of :data:`STATUSES` with the reason
in the Error Comment (and, for a step that may no longer be updated, Error ID A710 as
PS3.4 F.7.2.2.2 names it).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse.negotiation import MPPS
from netpacs.domain.uids import is_valid_uid
from netpacs.services.orders.mpps import (
    MAX_SERIES,
    MppsProblem,
    MppsRefused,
    PerformedSeries,
    StepValues,
)

if TYPE_CHECKING:
    from netpacs.adapters.dimse.handlers import AssociationHandlers
    from netpacs.adapters.dimse.message import Message

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_OBJECT_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
INVALID_OBJECT_INSTANCE = 0x0117
NOT_AUTHORIZED = 0x0124
#: Error ID (0000,0903) of "Performed Procedure Step Object may no longer be updated".
NO_LONGER_UPDATABLE_ERROR_ID = 0xA710

#: The adapter's one mapping: MPPS refusal -> DIMSE status (PS3.7 C.4, PS3.4 F.7.2).
STATUSES: dict[MppsProblem, int] = {
    MppsProblem.DUPLICATE: DUPLICATE_SOP_INSTANCE,
    MppsProblem.NO_SUCH_INSTANCE: NO_SUCH_OBJECT_INSTANCE,
    MppsProblem.NO_LONGER_UPDATABLE: PROCESSING_FAILURE,
    MppsProblem.INVALID_VALUE: INVALID_ATTRIBUTE_VALUE,
    MppsProblem.MISSING_ATTRIBUTE: MISSING_ATTRIBUTE,
    MppsProblem.NOT_AUTHORIZED: NOT_AUTHORIZED,
}


async def n_create(h: AssociationHandlers, msg: Message) -> None:
    uid = msg.command.get_str(c.AFFECTED_SOP_INSTANCE_UID) or generate_uid()
    await _apply(h, msg, c.N_CREATE_RSP, uid, create=True)


async def n_set(h: AssociationHandlers, msg: Message) -> None:
    uid = msg.command.get_str(c.REQUESTED_SOP_INSTANCE_UID)
    await _apply(h, msg, c.N_SET_RSP, uid, create=False)


async def _apply(h: AssociationHandlers, msg: Message, rsp: int, uid: str, *, create: bool) -> None:
    service = h.s.mpps
    try:
        if service is None:
            raise MppsRefused(MppsProblem.NOT_AUTHORIZED, "no MPPS here (an edge node)")
        if not is_valid_uid(uid):
            _respond(h, msg, rsp, INVALID_OBJECT_INSTANCE, uid, f"SOP Instance UID {uid[:40]!r}")
            return
        values = step_values(_dataset(h, msg))
        if create:
            await h._run(service.create, h.principal, uid, values)
        else:
            await h._run(service.update, h.principal, uid, values)
    except MppsRefused as refused:
        error_id = (
            NO_LONGER_UPDATABLE_ERROR_ID
            if refused.problem is MppsProblem.NO_LONGER_UPDATABLE and not create
            else None
        )
        _respond(h, msg, rsp, STATUSES[refused.problem], uid, refused.message, error_id)
        return
    _respond(h, msg, rsp, SUCCESS, uid)


def _respond(
    h: AssociationHandlers,
    msg: Message,
    rsp: int,
    status: int,
    uid: str,
    comment: str | None = None,
    error_id: int | None = None,
) -> None:
    if h.assoc.closed:
        return
    values: dict[int, int | str] = {
        c.COMMAND_FIELD: rsp,
        c.MESSAGE_ID_BEING_RESPONDED_TO: msg.command.message_id,
        c.COMMAND_DATA_SET_TYPE: c.NO_DATA_SET,
        c.STATUS: status,
        c.AFFECTED_SOP_CLASS_UID: MPPS,
    }
    if is_valid_uid(uid):
        values[c.AFFECTED_SOP_INSTANCE_UID] = uid
    if comment:
        values[c.ERROR_COMMENT] = comment
    if error_id is not None:
        values[c.ERROR_ID] = error_id
    h.assoc.send_message(msg.context_id, c.encode_command(values), None)


def _dataset(h: AssociationHandlers, msg: Message) -> dict[str, Any]:
    from netpacs.adapters.dimse.handlers import _encoding

    if msg.data is None:
        return {}
    if not isinstance(msg.data, bytes):
        raise MppsRefused(MppsProblem.INVALID_VALUE, "the attribute list is too large")
    implicit, little, deflated = _encoding(h.assoc.contexts[msg.context_id].transfer_syntax)
    try:
        found: dict[str, Any] = decode(
            io.BytesIO(msg.data), implicit, little, deflated
        ).to_json_dict()
    except Exception as exc:
        raise MppsRefused(
            MppsProblem.INVALID_VALUE, f"the attribute list cannot be decoded: {exc}"[:64]
        ) from None
    return found


def _str(ds: dict[str, Any], tag: str) -> str | None:
    element = ds.get(tag)
    if element is None:
        return None
    values = element.get("Value") or [""]
    return str(values[0]).strip()


def step_values(ds: dict[str, Any]) -> StepValues:
    """The attributes of an MPPS attribute list the service works on (PS3.3 C.4.13-15)."""
    scheduled = (ds.get("00400270") or {}).get("Value") or [{}]
    first = scheduled[0] if isinstance(scheduled[0], dict) else {}
    series: tuple[PerformedSeries, ...] | None = None
    if "00400340" in ds:
        items = (ds["00400340"].get("Value") or [])[:MAX_SERIES]
        series = tuple(
            PerformedSeries(
                series_instance_uid=_str(item, "0020000E") or "",
                images=len((item.get("00081140") or {}).get("Value") or []),
                description=(_str(item, "0008103E") or "")[:64],
            )
            for item in items
            if isinstance(item, dict) and _str(item, "0020000E")
        )
    return StepValues(
        status=_str(ds, "00400252"),
        accession_number=_str(first, "00080050") or None,
        study_instance_uid=_str(first, "0020000D") or None,
        modality=_str(ds, "00080060"),
        performed_station_ae=_str(ds, "00400241"),
        series=series,
    )

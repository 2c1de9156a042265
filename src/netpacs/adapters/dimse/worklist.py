"""Modality Worklist C-FIND SCP (Modality Worklist Information Model - FIND, PS3.4 K).

Turns the identifier into :class:`~netpacs.services.orders.worklist.WorklistKeys`, asks
the worklist service (which decides what the calling AE may see), and answers each
scheduled step with the return keys the identifier asked for (PS3.4 K.6.1.2.2): its
top-level attributes, and of the Scheduled Procedure Step Sequence the attributes of
the item sent (all of them when the sequence was sent empty).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from pynetdicom.dsutils import decode

from netpacs.adapters.dimse import commands as c
from netpacs.adapters.dimse import status as st
from netpacs.adapters.dimse.negotiation import MODALITY_WORKLIST_FIND
from netpacs.domain.query import QueryError
from netpacs.services.orders.worklist import ScheduledStep, WorklistKeys

if TYPE_CHECKING:
    from netpacs.adapters.dimse.handlers import AssociationHandlers
    from netpacs.adapters.dimse.message import Message

__all__ = ["MODALITY_WORKLIST_FIND", "answer_for", "c_find", "worklist_keys"]

SPS_SEQUENCE = "00400100"
_STATION_AE = "00400001"
_START_DATE = "00400002"
_START_TIME = "00400003"
_MODALITY = "00080060"
_PATIENT_NAME = "00100010"
_PATIENT_ID = "00100020"
_ACCESSION = "00080050"
_CHARSET = "00080005"


async def c_find(h: AssociationHandlers, msg: Message) -> None:
    """Answer one worklist C-FIND: a pending response per scheduled step, then success
    (A700 with a comment when there were more than the service answers)."""
    worklist = h.s.worklist
    if worklist is None:
        h._reply(msg, c.C_FIND_RSP, st.SOP_CLASS_NOT_SUPPORTED, comment="no worklist here")
        return
    try:
        ident = _identifier(h, msg)
        keys = worklist_keys(ident)
        answer = await h._run(worklist.find, h.principal, keys, query=_query_text(keys))
    except QueryError as exc:
        h._reply(msg, c.C_FIND_RSP, st.IDENTIFIER_DOES_NOT_MATCH, comment=str(exc))
        return
    for step in answer.steps:
        if msg.command.message_id in h.assoc.cancelled:
            h.assoc.cancelled.discard(msg.command.message_id)
            h._reply(msg, c.C_FIND_RSP, st.CANCEL)
            return
        encoded = h._encode_identifier(msg, answer_for(step, ident))
        h._reply(msg, c.C_FIND_RSP, st.PENDING, identifier=encoded)
    if answer.truncated:
        h._reply(
            msg,
            c.C_FIND_RSP,
            st.OUT_OF_RESOURCES,
            comment=f"more than {len(answer.steps)} matches: narrow the query",
        )
        return
    h._reply(msg, c.C_FIND_RSP, st.SUCCESS)


def _identifier(h: AssociationHandlers, msg: Message) -> dict[str, Any]:
    from netpacs.adapters.dimse.handlers import _encoding

    if not isinstance(msg.data, bytes):
        raise QueryError(
            "the request has no identifier"
            if msg.data is None
            else "the identifier is too large for a query"
        )
    implicit, little, deflated = _encoding(h.assoc.contexts[msg.context_id].transfer_syntax)
    try:
        ident: dict[str, Any] = decode(
            io.BytesIO(msg.data), implicit, little, deflated
        ).to_json_dict()
    except Exception as exc:
        raise QueryError(f"the identifier cannot be decoded: {exc}") from None
    return ident


def _text(element: dict[str, Any] | None) -> str:
    """A matching key's value as DICOM text ('' when absent or universal)."""
    if not element:
        return ""
    values = element.get("Value") or []
    parts = []
    for value in values:
        if isinstance(value, dict):
            value = value.get("Alphabetic", "")
        parts.append(str(value))
    return "\\".join(parts)


def _sps_item(ident: dict[str, Any]) -> dict[str, Any] | None:
    """The Scheduled Procedure Step Sequence item sent (None: not sent; {} empty)."""
    element = ident.get(SPS_SEQUENCE)
    if element is None:
        return None
    items = element.get("Value") or []
    if len(items) > 1:
        raise QueryError("the Scheduled Procedure Step Sequence has more than one item")
    return items[0] if items else {}


def worklist_keys(ident: dict[str, Any]) -> WorklistKeys:
    item = _sps_item(ident) or {}
    return WorklistKeys(
        station_ae=_text(item.get(_STATION_AE)),
        modality=_text(item.get(_MODALITY)),
        start_date=_text(item.get(_START_DATE)),
        start_time=_text(item.get(_START_TIME)),
        patient_name=_text(ident.get(_PATIENT_NAME)),
        patient_id=_text(ident.get(_PATIENT_ID)),
        accession_number=_text(ident.get(_ACCESSION)),
    )


def _query_text(keys: WorklistKeys) -> str:
    return "; ".join(f"{k}={v}" for k, v in vars_of(keys).items() if v)


def vars_of(keys: WorklistKeys) -> dict[str, str]:
    return {name: getattr(keys, name) for name in keys.__dataclass_fields__}


def _el(vr: str, value: str | None) -> dict[str, Any]:
    if not value:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


def _step_item(step: ScheduledStep) -> dict[str, Any]:
    """The Scheduled Procedure Step Sequence item of ``step`` (PS3.4 K.6.1.2.2)."""
    return {
        _STATION_AE: _el("AE", step.scheduled_station_ae),
        _START_DATE: _el("DA", step.scheduled_at[:8]),
        _START_TIME: _el("TM", step.scheduled_at[8:14]),
        _MODALITY: _el("CS", step.modality),
        "00400006": _el("PN", ""),  # Scheduled Performing Physician's Name
        "00400007": _el("LO", step.procedure_text),  # Scheduled Procedure Step Description
        "00400009": _el("SH", step.scheduled_step_id),
        "00400010": _el("SH", ""),  # Scheduled Station Name
        "00400011": _el("SH", step.site),  # Scheduled Procedure Step Location
        "00400020": _el("CS", "STARTED" if step.started else "SCHEDULED"),
    }


def _attributes(step: ScheduledStep) -> dict[str, Any]:
    code = (
        [
            {
                "00080100": _el("SH", step.procedure_code[:16]),
                "00080102": _el("SH", step.procedure_scheme[:16] or "L"),
                "00080104": _el("LO", step.procedure_text[:64] or step.procedure_code[:64]),
            }
        ]
        if step.procedure_code
        else []
    )
    return {
        _ACCESSION: _el("SH", step.accession_number),
        "00080051": {  # Issuer of Accession Number Sequence: the trust
            "vr": "SQ",
            "Value": [{"00400031": _el("UT", step.issuer)}],
        },
        "00080090": _el("PN", step.requesting_clinician),  # Referring Physician's Name
        _PATIENT_NAME: _el("PN", step.patient_name),
        _PATIENT_ID: _el("LO", step.patient_id),
        "00100021": _el("LO", step.issuer),  # Issuer of Patient ID
        "00100030": _el("DA", step.patient_birth_date),
        "00100040": _el("CS", step.patient_sex),
        "0020000D": _el("UI", step.study_instance_uid),
        "00321032": _el("PN", step.requesting_clinician),  # Requesting Physician
        "00321033": _el("LO", step.requesting_location[:64]),  # Requesting Service
        "00321060": _el("LO", step.procedure_text[:64]),  # Requested Procedure Description
        "00321064": {"vr": "SQ", "Value": code},  # Requested Procedure Code Sequence
        "00380300": _el("LO", step.requesting_location[:64]),  # Current Patient Location
        "00401001": _el("SH", step.requested_procedure_id),
        "00401002": _el("LO", step.reason[:64]),  # Reason for the Requested Procedure
        "00401003": _el("SH", step.priority.dicom),  # Requested Procedure Priority
        "00402016": _el("LO", step.placer_order_number[:64]),
        "00402017": _el("LO", step.filler_order_number[:64]),
    }


def answer_for(step: ScheduledStep, ident: dict[str, Any]) -> dict[str, Any]:
    """``step`` as the identifier asked: its requested keys only."""
    everything = _attributes(step)
    answer = {
        tag: everything.get(tag, {"vr": el.get("vr", "UN")})
        for tag, el in ident.items()
        if tag not in (_CHARSET, SPS_SEQUENCE)
    }
    item = _sps_item(ident)
    if item is not None:
        full = _step_item(step)
        chosen = {t: full.get(t, {"vr": e.get("vr", "UN")}) for t, e in item.items()} or full
        answer[SPS_SEQUENCE] = {"vr": "SQ", "Value": [chosen]}
    return answer

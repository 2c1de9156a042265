"""HL7 v2 order messages, ORM^O01 and OMI^O23 (HL7 v2.5 chapter 4, IHE RAD-4/RAD-13):
read one into an :class:`~netpacs.services.orders.OrderEvent`.

Where each value is read (the first of several places that has it; docs/interfaces.md):

- control: ORC-1 (NW, XO, CA, DC, SC with ORC-5); placer and filler order numbers:
  ORC-2 / OBR-2 and ORC-3 / OBR-3
- accession number: IPC-1 in OMI, else OBR-18 (IHE's placer field 1)
- requested procedure id and scheduled procedure step id: IPC-2 and IPC-4, else OBR-19
  and OBR-20; Study Instance UID: IPC-3, else ZDS-1 (IHE ORM)
- requested procedure: OBR-4 (code, text, coding system); modality: IPC-5, OBR-24, else
  from the procedure
- priority: TQ1-9, ORC-7.6, OBR-27.6, OBR-5 (S, A, R); scheduled time: TQ1-7, ORC-7.4,
  OBR-27.4, OBR-36
- requesting clinician: ORC-12, else OBR-16; location: PV1-3 and patient class PV1-2
- reason: OBR-31; site: IPC-8; scheduled station AE: IPC-9, else OBR-21

One order per message: the first ORC/OBR (and IPC) are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netpacs.adapters.hl7 import messages as m
from netpacs.adapters.hl7.messages import AckCode, Header, Rejected
from netpacs.services.adt import Demographics
from netpacs.services.orders import OrderControl, OrderEvent

ORDER_TYPES = frozenset({"ORM", "OMI"})
_TABLE_VALUE_NOT_FOUND = "103"


@dataclass(frozen=True, slots=True)
class OrderRequest:
    header: Header
    event: OrderEvent
    digest: str


def read_order(payload: bytes) -> OrderRequest:
    """Read one payload as an order message; raises :class:`Rejected` saying why not."""
    header, message, digest = m.parse(payload)
    for segment in ("PID", "ORC", "OBR"):
        if not _has(message, segment):
            raise Rejected(
                f"the message has no {segment} segment",
                code=AckCode.AR,
                error=m.SEGMENT_ERROR,
                header=header,
            )
    control = _first(message, ("ORC", 1)).upper()
    try:
        order_control = OrderControl(control)
    except ValueError:
        raise Rejected(
            f"ORC-1 order control {control[:8]!r} is not supported "
            f"(supported: {', '.join(c.value for c in OrderControl)})",
            code=AckCode.AR,
            error=_TABLE_VALUE_NOT_FOUND,
            header=header,
        ) from None
    return OrderRequest(header, _event(message, header, order_control), digest)


def _event(message: Any, header: Header, control: OrderControl) -> OrderEvent:
    def v(segment: str, field: int, comp: int = 1, sub: int = 1) -> str:
        if not _has(message, segment):
            return ""
        raw = m.value(message, segment, field, 1, comp, sub).strip()
        return "" if raw == '""' else raw

    return OrderEvent(
        control=control,
        control_id=header.control_id,
        identifiers=m.identifiers(message, "PID", 3),
        demographics=Demographics(
            name=m.patient_name(message),
            birth_date=m.field_text(message, "PID", 7),
            sex=m.field_text(message, "PID", 8),
        ),
        accession_number=v("IPC", 1) or v("OBR", 18),
        placer_order_number=v("ORC", 2) or v("OBR", 2),
        filler_order_number=v("ORC", 3) or v("OBR", 3),
        requested_procedure_id=v("IPC", 2) or v("OBR", 19),
        scheduled_step_id=v("IPC", 4) or v("OBR", 20),
        study_instance_uid=v("IPC", 3) or v("ZDS", 1),
        procedure_code=v("OBR", 4, 1),
        procedure_text=v("OBR", 4, 2),
        procedure_scheme=v("OBR", 4, 3),
        modality=v("IPC", 5) or v("OBR", 24),
        priority=v("TQ1", 9) or v("ORC", 7, 6) or v("OBR", 27, 6) or v("OBR", 5),
        scheduled_at=v("TQ1", 7) or v("ORC", 7, 4) or v("OBR", 27, 4) or v("OBR", 36),
        requesting_clinician=_person(v, "ORC", 12) or _person(v, "OBR", 16),
        requesting_location=" ".join(filter(None, (v("PV1", 3, c) for c in (1, 2, 3)))),
        location_facility=v("PV1", 3, 4),
        patient_class=v("PV1", 2),
        reason=v("OBR", 31, 2) or v("OBR", 31, 1),
        site=v("IPC", 8, 1) or v("IPC", 8, 4),
        scheduled_station_ae=v("IPC", 9) or v("OBR", 21),
        order_status=v("ORC", 5),
    )


def _person(v: Any, segment: str, field: int) -> str:
    """An XCN as a DICOM PN: FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX (XCN.2, .3, .4, .6, .5)."""
    parts = [v(segment, field, c) for c in (2, 3, 4, 6, 5)]
    return "^".join(parts).rstrip("^")


def _has(message: Any, segment: str) -> bool:
    try:
        message.segment(segment)
    except KeyError:
        return False
    return True


def _first(message: Any, *places: tuple[str, int]) -> str:
    for segment, field in places:
        if _has(message, segment):
            found = m.value(message, segment, field).strip()
            if found:
                return found
    return ""

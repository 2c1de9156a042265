"""Order rules (HL7 ORM^O01 / OMI^O23): new, change, cancel, discontinue, status change.

Orders come over a trust's feed under the ADT feed's rules, reused from
:class:`~netpacs.services.adt.AdtService`: the connection's feed must speak for MSH-4,
MSH-4 must be of the trust that issues PID-3's hospital number, and each control id is
applied once with its acknowledgement kept. An order is kept per (trust, accession
number); a message that cannot be applied (a change or cancel for an unknown order, a
cancel after the procedure started, a missing accession number) is refused with the
reason and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from pydicom.uid import generate_uid

from netpacs.domain.region import Region
from netpacs.domain.uids import is_valid_uid
from netpacs.index.schema import imaging_order
from netpacs.services.adt import (
    AdtCaller,
    AdtResult,
    AdtService,
    Identity,
    MessageKey,
    Outcome,
    Refused,
    StoredAck,
)
from netpacs.services.orders.model import (
    SC_STATUS,
    OrderControl,
    OrderEvent,
    OrderStatus,
    Priority,
    modality_of_procedure,
)

log = logging.getLogger(__name__)

_DICOM_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}
MAX_SH = 16  # DICOM SH: accession number, requested procedure id, step id
#: Called after a change that touches the reporting worklist (priority, clinician...):
#: (connection, the order's Study Instance UID, now).
OrderChanged = Callable[[sa.Connection, str, dt.datetime], None]


class OrderService:
    """Applies order messages to ``imaging_order`` under the feed rules of ``adt``."""

    def __init__(
        self,
        adt: AdtService,
        region: Region,
        *,
        on_change: OrderChanged | None = None,
    ) -> None:
        self._adt = adt
        self._region = region
        self._on_change = on_change

    def process(
        self,
        key: MessageKey,
        event: OrderEvent,
        acknowledge: Callable[[AdtResult], StoredAck],
        *,
        caller: AdtCaller,
    ) -> StoredAck:
        return self._adt.apply_once(
            key,
            acknowledge,
            caller=caller,
            apply=lambda conn, now: self._apply(conn, event, now, key.sending_facility),
            patients=[(i.value, i.authority) for i in event.identifiers if not i.is_nhs_number],
        )

    # -- applying ---------------------------------------------------------------------

    def _apply(
        self, conn: sa.Connection, event: OrderEvent, now: dt.datetime, sending_facility: str
    ) -> AdtResult:
        identity = self._adt.local_identity(event.identifiers)
        self._adt.check_sender(sending_facility, identity)
        trust = identity.issuer
        accession = event.accession_number.strip()
        if not accession:
            raise Refused(
                Outcome.MISSING_FIELD,
                "the accession number is missing (OBR-18, or IPC-1 in OMI); nothing applied",
            )
        if len(accession) > MAX_SH:
            raise Refused(
                Outcome.INVALID_CONTENT,
                f"accession number {accession[:32]!r} is longer than 16 characters (DICOM SH)",
            )
        where = sa.and_(
            imaging_order.c.trust == trust, imaging_order.c.accession_number == accession
        )
        row = conn.execute(sa.select(imaging_order).where(where)).first()
        name = f"order {accession} at {trust}"
        if event.control is OrderControl.NW:
            if row is not None:
                raise Refused(
                    Outcome.ORDER_EXISTS,
                    f"{name} exists already (a new order needs a new accession number); "
                    "nothing applied",
                )
            values = self._new(event, identity, accession, sending_facility)
            values.update(created_at=now, updated_at=now, last_control_id=event.control_id)
            conn.execute(sa.insert(imaging_order).values(**values))
            return AdtResult(Outcome.APPLIED, f"{name} scheduled")
        if row is None:
            raise Refused(
                Outcome.UNKNOWN_ORDER,
                f"ORC-1 {event.control.value} for {name}: no such order; nothing applied",
            )
        if (row.patient_id, row.issuer) != (identity.patient_id, identity.issuer):
            raise Refused(
                Outcome.INVALID_CONTENT,
                f"{name} is for {row.patient_id} at {row.issuer}, not {identity}; nothing applied",
            )
        status = OrderStatus(row.status)
        changes, detail = self._transition(event, status, name)
        if event.control is OrderControl.XO:
            changes.update(self._changed(event, identity, sending_facility, row))
        changes.update(updated_at=now, last_control_id=event.control_id)
        conn.execute(sa.update(imaging_order).where(where).values(**changes))
        if self._on_change is not None:
            self._on_change(conn, row.study_instance_uid, now)
        return AdtResult(Outcome.APPLIED, detail)

    def _transition(
        self, event: OrderEvent, status: OrderStatus, name: str
    ) -> tuple[dict[str, Any], str]:
        """The status an order message moves ``status`` to (refused when it may not)."""
        control = event.control
        if control is OrderControl.XO:
            if not status.open:
                raise Refused(
                    Outcome.ORDER_CLOSED, f"{name} is {status.value}: it cannot be changed"
                )
            return {}, f"{name} changed"
        if control is OrderControl.CA:
            if status is not OrderStatus.SCHEDULED:
                raise Refused(
                    Outcome.ORDER_CLOSED,
                    f"{name} is {status.value}: only a scheduled order can be cancelled"
                    + (" (discontinue it, DC)" if status.open else "")
                    + "; nothing applied",
                )
            return {"status": OrderStatus.CANCELLED.value}, f"{name} cancelled"
        if control is OrderControl.DC:
            if not status.open:
                raise Refused(
                    Outcome.ORDER_CLOSED,
                    f"{name} is {status.value}: it cannot be discontinued; nothing applied",
                )
            return {"status": OrderStatus.DISCONTINUED.value}, f"{name} discontinued"
        target = SC_STATUS.get(event.order_status.strip().upper())
        if target is None:
            raise Refused(
                Outcome.INVALID_CONTENT,
                f"SC needs ORC-5 order status SC, IP or CM, not {event.order_status[:8]!r}",
            )
        if not status.open:
            raise Refused(
                Outcome.ORDER_CLOSED, f"{name} is {status.value}: its status cannot change"
            )
        return {"status": target.value}, f"{name} {target.value}"

    def _new(
        self, event: OrderEvent, identity: Identity, accession: str, facility: str
    ) -> dict[str, Any]:
        values = self._fields(event, identity, facility, require=True)
        uid = event.study_instance_uid.strip()
        values.update(
            trust=identity.issuer,
            accession_number=accession,
            status=OrderStatus.SCHEDULED.value,
            patient_id=identity.patient_id,
            issuer=identity.issuer,
            study_instance_uid=uid if is_valid_uid(uid) else generate_uid(),
            requested_procedure_id=_sh(event.requested_procedure_id) or accession,
            scheduled_step_id=_sh(event.scheduled_step_id) or accession,
        )
        values.setdefault("priority", Priority.ROUTINE.value)
        values.setdefault("scheduled_at", dt.datetime.now().strftime("%Y%m%d%H%M%S"))
        return values

    def _changed(
        self, event: OrderEvent, identity: Identity, facility: str, row: Any
    ) -> dict[str, Any]:
        values = self._fields(event, identity, facility, require=False)
        if event.requested_procedure_id:
            values["requested_procedure_id"] = _sh(event.requested_procedure_id)
        if event.scheduled_step_id:
            values["scheduled_step_id"] = _sh(event.scheduled_step_id)
        return {k: v for k, v in values.items() if v != getattr(row, k)}

    def _fields(
        self, event: OrderEvent, identity: Identity, facility: str, *, require: bool
    ) -> dict[str, Any]:
        """The order's columns from what ``event`` sent ('' fields left out)."""
        demo = event.demographics
        sex = (demo.sex or "").strip().upper()
        sent: dict[str, Any] = {
            "placer_order_number": event.placer_order_number,
            "filler_order_number": event.filler_order_number,
            "patient_name": demo.name or "",
            "patient_birth_date": (demo.birth_date or "")[:8],
            "patient_sex": _DICOM_SEX.get(sex, ""),
            "procedure_code": event.procedure_code,
            "procedure_scheme": event.procedure_scheme,
            "procedure_text": event.procedure_text,
            "requesting_clinician": event.requesting_clinician,
            "requesting_location": event.requesting_location,
            "patient_class": event.patient_class,
            "reason": event.reason,
            "scheduled_station_ae": event.scheduled_station_ae.strip()[:16],
        }
        values = {k: v for k, v in sent.items() if v}
        nhs = [i.value for i in event.identifiers if i.is_nhs_number]
        if nhs and len(nhs[0]) == 10 and nhs[0].isdigit():
            values["nhs_number"] = nhs[0]
        modality = event.modality.strip().upper() or modality_of_procedure(
            event.procedure_code, event.procedure_text
        )
        if modality:
            values["modality"] = modality[:16]
        elif require:
            raise Refused(
                Outcome.MISSING_FIELD,
                "no modality: OBR-24 is empty and the procedure (OBR-4) names none; "
                "nothing applied",
            )
        if event.priority:
            priority = Priority.from_hl7(event.priority)
            if priority is None:
                raise Refused(
                    Outcome.INVALID_CONTENT,
                    f"priority {event.priority[:8]!r} is not one of S, A, R (HL7 table 0485)",
                )
            values["priority"] = priority.value
        if event.scheduled_at:
            values["scheduled_at"] = _scheduled(event.scheduled_at)
        site = self._site(event, identity.issuer, facility, require=require)
        if site:
            values["site"] = site
        return values

    def _site(self, event: OrderEvent, trust: str, facility: str, *, require: bool) -> str:
        """Where the procedure is performed: IPC-8, else the scheduled station AE's site,
        else MSH-4 or PV1-3.4 when it is a site code of the trust."""
        found = self._region.trust(trust)
        sites = {s.code for s in found.sites} if found is not None else set()
        if event.site:
            code = event.site.strip()
            if code not in sites:
                raise Refused(
                    Outcome.INVALID_CONTENT,
                    f"IPC-8 location {code[:16]!r} is not a site of {trust}; nothing applied",
                )
            return code
        ae_title = event.scheduled_station_ae
        station = self._region.ae(ae_title) if ae_title else None
        if station is not None and station.site is not None and station.site in sites:
            return station.site
        for candidate in (facility.split("^", 1)[0].strip(), event.location_facility.strip()):
            if candidate in sites:
                return candidate
        if require:
            raise Refused(
                Outcome.MISSING_FIELD,
                f"no site of {trust} performs the order: name it in IPC-8, the scheduled "
                "station AE, MSH-4 or PV1-3.4 (a site code); nothing applied",
            )
        return ""

    # -- audit --------------------------------------------------------------------------


def _sh(value: str) -> str:
    return value.strip()[:MAX_SH]


def _scheduled(value: str) -> str:
    """An HL7 DTM (YYYY[MM[DD[HH[MM[SS]]]]], a fraction and zone ignored) as 14 digits."""
    digits = value.strip().split(".")[0].split("+")[0].split("-")[0]
    if not digits.isdigit() or len(digits) < 8 or len(digits) > 14:
        raise Refused(
            Outcome.INVALID_CONTENT,
            f"scheduled date/time {value[:32]!r} is not an HL7 date/time YYYYMMDD[HHMM[SS]]",
        )
    padded = digits.ljust(14, "0")
    try:
        dt.datetime.strptime(padded, "%Y%m%d%H%M%S")
    except ValueError:
        raise Refused(
            Outcome.INVALID_CONTENT, f"scheduled date/time {value[:32]!r} is not a real time"
        ) from None
    return padded

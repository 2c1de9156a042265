"""Modality Performed Procedure Step (PS3.4 F.7): what a modality says it performed.

N-CREATE makes a step IN PROGRESS and links it to its order (by the accession number of
its Scheduled Step Attributes, at the modality's trust, else by Study Instance UID); the
order is then in progress and leaves the worklist. N-SET changes its attributes while it
is IN PROGRESS, and makes it COMPLETED (with at least one performed series) or
DISCONTINUED; after that it may no longer be updated (F.7.2.2.2). A COMPLETED step
completes its order and its study (``on_completed``: the reporting worklist); a
DISCONTINUED one puts a started order back on the worklist to be performed again.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from netpacs.domain.region import Region
from netpacs.index.schema import imaging_order, performed_step
from netpacs.services.access import Principal
from netpacs.services.audit import AuditRecord, AuditService, Event
from netpacs.services.orders.model import OrderStatus

log = logging.getLogger(__name__)

MAX_SERIES = 1000  # performed series in one step


class MppsStatus(enum.Enum):
    """Performed Procedure Step Status (0040,0252)."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class MppsProblem(enum.Enum):
    DUPLICATE = "duplicate instance"
    NO_SUCH_INSTANCE = "no such instance"
    NO_LONGER_UPDATABLE = "may no longer be updated"
    INVALID_VALUE = "invalid attribute value"
    MISSING_ATTRIBUTE = "missing attribute"
    NOT_AUTHORIZED = "not authorized"


class MppsRefused(Exception):
    def __init__(self, problem: MppsProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


@dataclass(frozen=True, slots=True)
class PerformedSeries:
    series_instance_uid: str
    images: int  # Referenced Image Sequence items
    description: str = ""


@dataclass(frozen=True, slots=True)
class StepValues:
    """What an N-CREATE or N-SET says; None: not sent (an N-SET keeps the value)."""

    status: str | None = None
    accession_number: str | None = None
    study_instance_uid: str | None = None
    modality: str | None = None
    performed_station_ae: str | None = None
    series: tuple[PerformedSeries, ...] | None = None


#: Called in the transaction that completes a step: (connection, Study Instance UID, now).
StudyCompleted = Callable[[sa.Connection, str, dt.datetime], None]


class MppsService:
    def __init__(
        self,
        engine: sa.Engine,
        region: Region,
        audit: AuditService | None = None,
        *,
        on_completed: StudyCompleted | None = None,
    ) -> None:
        self._engine = engine
        self._region = region
        self._audit = audit
        self._on_completed = on_completed

    def create(self, principal: Principal, sop_instance_uid: str, values: StepValues) -> str:
        """N-CREATE: a new step IN PROGRESS; what it was linked to, in words."""
        trust = self._trust(principal)
        status = (values.status or "").strip()
        if status != MppsStatus.IN_PROGRESS.value:
            raise MppsRefused(
                MppsProblem.INVALID_VALUE,
                f"Performed Procedure Step Status must be IN PROGRESS at N-CREATE, not {status!r}",
            )
        now = dt.datetime.now(dt.UTC)
        with self._engine.begin() as conn:
            seen = conn.execute(
                sa.select(performed_step.c.id).where(
                    performed_step.c.sop_instance_uid == sop_instance_uid
                )
            ).first()
            if seen is not None:
                raise MppsRefused(MppsProblem.DUPLICATE, f"MPPS {sop_instance_uid} exists already")
            order = self._order_of(conn, trust, values)
            study_uid = values.study_instance_uid or (order.study_instance_uid if order else "")
            conn.execute(
                sa.insert(performed_step).values(
                    sop_instance_uid=sop_instance_uid,
                    trust=trust,
                    performed_station_ae=(values.performed_station_ae or principal.user_id)[:16],
                    status=status,
                    order_fk=order.id if order is not None else None,
                    study_instance_uid=study_uid or "",
                    accession_number=(values.accession_number or "")[:16],
                    modality=(values.modality or "")[:16],
                    performed_series_json=_series_json(values.series or ()),
                    created_at=now,
                    updated_at=now,
                )
            )
            if order is not None and order.status == OrderStatus.SCHEDULED.value:
                self._set_order(conn, order.id, OrderStatus.IN_PROGRESS, now)
            linked = (
                f"order {order.accession_number} at {trust}" if order is not None else "no order"
            )
        # Audited after the transaction: the audit writer may need the same database lock.
        self._record(principal, f"MPPS {sop_instance_uid} IN PROGRESS ({linked})")
        return linked

    def update(self, principal: Principal, sop_instance_uid: str, values: StepValues) -> str:
        """N-SET: change an IN PROGRESS step; COMPLETED and DISCONTINUED are final."""
        trust = self._trust(principal)
        now = dt.datetime.now(dt.UTC)
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(performed_step)
                .where(performed_step.c.sop_instance_uid == sop_instance_uid)
                .with_for_update()
            ).first()
            if row is None or row.trust != trust:
                raise MppsRefused(
                    MppsProblem.NO_SUCH_INSTANCE, f"no MPPS {sop_instance_uid} of {trust}"
                )
            if row.status != MppsStatus.IN_PROGRESS.value:
                raise MppsRefused(
                    MppsProblem.NO_LONGER_UPDATABLE,
                    f"MPPS is {row.status}: it may no longer be updated",
                )
            target = MppsStatus.IN_PROGRESS
            if values.status is not None:
                try:
                    target = MppsStatus(values.status.strip())
                except ValueError:
                    raise MppsRefused(
                        MppsProblem.INVALID_VALUE,
                        f"Performed Procedure Step Status {values.status[:20]!r} is not "
                        "IN PROGRESS, COMPLETED or DISCONTINUED",
                    ) from None
            series = (
                values.series
                if values.series is not None
                else _series_of(row.performed_series_json)
            )
            if target is MppsStatus.COMPLETED and not series:
                raise MppsRefused(
                    MppsProblem.NO_LONGER_UPDATABLE,
                    "COMPLETED needs at least one Performed Series Sequence item",
                )
            changes: dict[str, Any] = {"status": target.value, "updated_at": now}
            if values.series is not None:
                changes["performed_series_json"] = _series_json(values.series)
            conn.execute(
                sa.update(performed_step).where(performed_step.c.id == row.id).values(**changes)
            )
            self._finish(conn, row, target, now)
        self._record(principal, f"MPPS {sop_instance_uid} {target.value}")
        return target.value

    def _finish(self, conn: sa.Connection, row: Any, target: MppsStatus, now: dt.datetime) -> None:
        order = (
            conn.execute(sa.select(imaging_order).where(imaging_order.c.id == row.order_fk)).first()
            if row.order_fk is not None
            else None
        )
        if target is MppsStatus.COMPLETED:
            if order is not None and OrderStatus(order.status).open:
                self._set_order(conn, order.id, OrderStatus.COMPLETED, now)
            study_uid = row.study_instance_uid or (order.study_instance_uid if order else "")
            if study_uid and self._on_completed is not None:
                self._on_completed(conn, study_uid, now)
        elif (
            target is MppsStatus.DISCONTINUED
            and order is not None
            and order.status == OrderStatus.IN_PROGRESS.value
        ):
            self._set_order(conn, order.id, OrderStatus.SCHEDULED, now)

    def _trust(self, principal: Principal) -> str:
        ae = self._region.ae(principal.user_id)
        if ae is None or principal.trust is None:
            raise MppsRefused(
                MppsProblem.NOT_AUTHORIZED, "only an AE of the region may report procedure steps"
            )
        return principal.trust

    def _order_of(self, conn: sa.Connection, trust: str, values: StepValues) -> Any:
        """The order a step performs: its accession number at the AE's trust, else its
        Study Instance UID (an order of the same trust only)."""
        where = None
        if values.accession_number:
            where = imaging_order.c.accession_number == values.accession_number.strip()
        elif values.study_instance_uid:
            where = imaging_order.c.study_instance_uid == values.study_instance_uid.strip()
        if where is None:
            return None
        return conn.execute(
            sa.select(imaging_order).where(where, imaging_order.c.trust == trust)
        ).first()

    @staticmethod
    def _set_order(
        conn: sa.Connection, order_id: int, status: OrderStatus, now: dt.datetime
    ) -> None:
        conn.execute(
            sa.update(imaging_order)
            .where(imaging_order.c.id == order_id)
            .values(status=status.value, updated_at=now)
        )

    def _record(self, principal: Principal, detail: str) -> None:
        log.info("%s: %s", principal.user_id, detail)
        if self._audit is not None:
            self._audit.record(AuditRecord(Event.PATIENT_RECORD, principal.actor(), detail=detail))


def _series_json(series: tuple[PerformedSeries, ...]) -> str:
    return orjson.dumps(
        [
            {"uid": s.series_instance_uid, "images": s.images, "description": s.description}
            for s in series[:MAX_SERIES]
        ]
    ).decode()


def _series_of(text: str) -> tuple[PerformedSeries, ...]:
    return tuple(
        PerformedSeries(s["uid"], int(s["images"]), s.get("description", ""))
        for s in orjson.loads(text or "[]")
    )

"""The Modality Worklist: the scheduled procedure steps a modality asks for (PS3.4 K),
answered from the orders.

Which orders a calling AE sees is decided here, once: a modality AE of the region sees
the open orders of its own site for its own modality; a workstation or archive of a
trust sees its trust's open orders; nothing of another trust, ever. Scheduled and
started orders are open; cancelled, discontinued and completed ones never show.

Matching (PS3.4 K.2.2.1, C.2.2.2): Scheduled Station AE Title, Modality, Patient ID and
Accession Number by single value or wild card (``*``, ``?``); Patient's Name the same,
case-insensitively; Scheduled Procedure Step Start Date and Time by single value or
range, combined into one date-time range when both are given (C.2.2.2.5.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.domain.query import QueryError
from netpacs.domain.region import AEKind, Region
from netpacs.index.schema import imaging_order
from netpacs.services.access import Principal
from netpacs.services.audit import AuditRecord, AuditService, Event
from netpacs.services.orders.model import OrderStatus, Priority

MAX_MATCHES = 1000  # answers to one query; more: narrow it (the status says so)
MAX_KEY_LENGTH = 256
_OPEN = (OrderStatus.SCHEDULED.value, OrderStatus.IN_PROGRESS.value)


@dataclass(frozen=True, slots=True)
class WorklistKeys:
    """The matching keys of one worklist query, as sent ('' is universal matching)."""

    station_ae: str = ""
    modality: str = ""
    start_date: str = ""  # DA or DA range
    start_time: str = ""  # TM or TM range
    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    """One worklist answer: an open order as a requested procedure with its one step."""

    accession_number: str
    placer_order_number: str
    filler_order_number: str
    patient_id: str
    issuer: str
    nhs_number: str | None
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    requested_procedure_id: str
    scheduled_step_id: str
    procedure_code: str
    procedure_scheme: str
    procedure_text: str
    modality: str
    priority: Priority
    requesting_clinician: str
    requesting_location: str
    reason: str
    site: str
    scheduled_at: str  # YYYYMMDDHHMMSS
    scheduled_station_ae: str
    started: bool  # a performed procedure step is in progress


@dataclass(frozen=True, slots=True)
class WorklistAnswer:
    steps: list[ScheduledStep]
    truncated: bool  # more than MAX_MATCHES matched


class ModalityWorklist:
    def __init__(self, engine: sa.Engine, region: Region, audit: AuditService | None) -> None:
        self._engine = engine
        self._region = region
        self._audit = audit

    def scope(self, principal: Principal) -> sa.ColumnElement[bool]:
        """The orders ``principal`` may see (see the module docstring)."""
        ae = self._region.ae(principal.user_id)
        if ae is None or ae.trust != principal.trust:
            return sa.false()
        where = imaging_order.c.trust == ae.trust
        if ae.kind is AEKind.MODALITY:
            where = sa.and_(where, imaging_order.c.site == (ae.site or ""))
            if ae.modality:
                where = sa.and_(where, imaging_order.c.modality == ae.modality)
        return where

    def find(self, principal: Principal, keys: WorklistKeys, *, query: str = "") -> WorklistAnswer:
        """The open scheduled steps ``principal`` may see that match ``keys``, in
        scheduled order; audited as a Query naming the patients answered."""
        conditions = [self.scope(principal), imaging_order.c.status.in_(_OPEN)]
        conditions += _matching(keys)
        statement = (
            sa.select(imaging_order)
            .where(*conditions)
            .order_by(imaging_order.c.scheduled_at, imaging_order.c.id)
            .limit(MAX_MATCHES + 1)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(statement).all()
        steps = [_step(row) for row in rows[:MAX_MATCHES]]
        if self._audit is not None:
            self._audit.record(
                AuditRecord(
                    Event.QUERY,
                    principal.actor(),
                    patients=sorted({(s.patient_id, s.issuer) for s in steps}),
                    query=query,
                    detail=f"modality worklist query: {len(steps)} answers",
                )
            )
        return WorklistAnswer(steps, len(rows) > MAX_MATCHES)


def _step(row: Any) -> ScheduledStep:
    return ScheduledStep(
        accession_number=row.accession_number,
        placer_order_number=row.placer_order_number,
        filler_order_number=row.filler_order_number,
        patient_id=row.patient_id,
        issuer=row.issuer,
        nhs_number=row.nhs_number,
        patient_name=row.patient_name,
        patient_birth_date=row.patient_birth_date,
        patient_sex=row.patient_sex,
        study_instance_uid=row.study_instance_uid,
        requested_procedure_id=row.requested_procedure_id,
        scheduled_step_id=row.scheduled_step_id,
        procedure_code=row.procedure_code,
        procedure_scheme=row.procedure_scheme,
        procedure_text=row.procedure_text,
        modality=row.modality,
        priority=Priority(row.priority),
        requesting_clinician=row.requesting_clinician,
        requesting_location=row.requesting_location,
        reason=row.reason,
        site=row.site,
        scheduled_at=row.scheduled_at,
        scheduled_station_ae=row.scheduled_station_ae,
        started=row.status == OrderStatus.IN_PROGRESS.value,
    )


# -- matching ----------------------------------------------------------------------------


def _matching(keys: WorklistKeys) -> list[sa.ColumnElement[bool]]:
    where = []
    for column, value, fold in (
        (imaging_order.c.scheduled_station_ae, keys.station_ae, False),
        (imaging_order.c.modality, keys.modality, False),
        (imaging_order.c.patient_id, keys.patient_id, False),
        (imaging_order.c.accession_number, keys.accession_number, False),
        (imaging_order.c.patient_name, keys.patient_name, True),
    ):
        condition = _text(column, value, fold=fold)
        if condition is not None:
            where.append(condition)
    when = _when(keys.start_date, keys.start_time)
    if when is not None:
        where.append(when)
    return where


def _text(column: Any, value: str, *, fold: bool) -> sa.ColumnElement[bool] | None:
    """Single value, wild card or (backslash-separated) alternatives (C.2.2.2.1, .4)."""
    value = value.strip()
    if len(value) > MAX_KEY_LENGTH:
        raise QueryError(f"a matching key is longer than {MAX_KEY_LENGTH} characters")
    if value in ("", "*"):
        return None
    target = sa.func.upper(column) if fold else column
    alternatives = []
    for part in value.split("\\"):
        part = part.upper() if fold else part
        if "*" in part or "?" in part:
            escaped = part.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            pattern = escaped.replace("*", "%").replace("?", "_")
            alternatives.append(target.like(pattern, escape="!"))
        else:
            alternatives.append(target == part)
    return sa.or_(*alternatives)


_DA = re.compile(r"\d{8}")
_TM = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


def _range(value: str, pattern: re.Pattern[str], what: str) -> tuple[str, str] | None:
    value = value.strip()
    if value in ("", "*"):
        return None
    low, sep, high = value.partition("-")
    if not sep:
        high = low
    for part in (low, high):
        if part and not pattern.fullmatch(part):
            raise QueryError(f"Scheduled Procedure Step Start {what} {value[:40]!r} is not valid")
    if not low and not high:
        raise QueryError(f"Scheduled Procedure Step Start {what} {value!r} is not a range")
    return low, high


def _when(date: str, time: str) -> sa.ColumnElement[bool] | None:
    """Date and time range matching on ``scheduled_at`` (14 digits), combined."""
    dates = _range(date, _DA, "Date")
    times = _range(time, _TM, "Time")
    at = imaging_order.c.scheduled_at
    t_low = t_high = ""
    if times is not None:
        t_low = times[0].split(".")[0].ljust(6, "0") if times[0] else ""
        t_high = times[1].split(".")[0].ljust(6, "9") if times[1] else ""
    if dates is None and times is None:
        return None
    if dates is None:
        clock = sa.func.substr(at, 9, 6)
        parts = ([clock >= t_low] if t_low else []) + ([clock <= t_high] if t_high else [])
        return sa.and_(*parts)
    d_low, d_high = dates
    low = d_low + (t_low or "000000") if d_low else ""
    high = d_high + (t_high or "235959") if d_high else ""
    parts = ([at >= low] if low else []) + ([at <= high] if high else [])
    return sa.and_(*parts)

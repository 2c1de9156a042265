"""A study's order as reporting reads it (services.reporting.orders has the rules)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from netpacs.index.schema import imaging_order
from netpacs.services.orders.model import PATIENT_CLASS


def order_of_study(
    conn: sa.Connection, study_uid: str, *, accession_number: str = "", trust: str = ""
) -> Any:
    """The order a study performs (None when it has none)."""
    row = conn.execute(
        sa.select(imaging_order).where(imaging_order.c.study_instance_uid == study_uid)
    ).first()
    if row is None and accession_number and trust:
        row = conn.execute(
            sa.select(imaging_order).where(
                imaging_order.c.trust == trust,
                imaging_order.c.accession_number == accession_number,
            )
        ).first()
    return row


def order_summary(order: Any) -> dict[str, str]:
    """What the report page shows of an order."""
    return {
        "accession_number": order.accession_number,
        "placer_order_number": order.placer_order_number,
        "filler_order_number": order.filler_order_number,
        "priority": order.priority,
        "requesting_clinician": readable_name(order.requesting_clinician),
        "requesting_location": order.requesting_location,
        "patient_class": order.patient_class,
        "patient_class_text": PATIENT_CLASS.get(order.patient_class, order.patient_class),
        "reason": order.reason,
        "procedure": order.procedure_text or order.procedure_code,
    }


def readable_name(person_name: str) -> str:
    """A DICOM PN (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) as people write it."""
    family, given, middle, prefix, suffix = (person_name.split("^") + [""] * 5)[:5]
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


def orders_of_studies(conn: sa.Connection, study_uids: list[str]) -> dict[str, dict[str, str]]:
    """The orders of these studies (by the Study Instance UID the worklist gave), as
    :func:`order_summary` shows them."""
    if not study_uids:
        return {}
    rows = conn.execute(
        sa.select(imaging_order).where(imaging_order.c.study_instance_uid.in_(study_uids))
    ).all()
    return {row.study_instance_uid: order_summary(row) for row in rows}

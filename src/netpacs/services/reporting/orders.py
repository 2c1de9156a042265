"""A study's order in reporting (issue 15): the worklist item of a study that has an
order takes the order's priority, and the report page shows the order's requesting
clinician, location and reason.

The order of a study is found by its Study Instance UID (the one the worklist gave the
modality), else by its accession number at the trust that captured it. Its reporting
priority: STAT, or a patient from the emergency department (PV1-2 E) -> emergency; a
reason or procedure naming the cancer two-week wait -> cancer-2ww; ASAP or an inpatient
(PV1-2 I) -> inpatient; a GP requesting location -> gp; otherwise outpatient.

When the region's ``reporting.ready_at`` is ``"mpps"``, a study with an order becomes
an item only when its modality reports the procedure step COMPLETED; otherwise (the
default) at its first image series, as a study without an order. A change of the order
that makes it more urgent raises the priority of its open item (never lowers it: an
administrator may have raised it).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from netpacs.domain.region import Region
from netpacs.index.reporting import insert_worklist_item
from netpacs.index.schema import worklist_item
from netpacs.services.reporting.common import OPEN, Priority, ReportingError, target
from netpacs.services.reporting.ordered import order_of_study

_2WW = re.compile(r"\b2WW\b|TWO[ -]WEEK[ -]WAIT|CANCER PATHWAY")
_GP = re.compile(r"\b(GP|GENERAL PRACTICE|PRIMARY CARE|SURGERY)\b")


def reporting_priority(order: Any) -> Priority:
    """The reporting priority of an order (module doc)."""
    words = f"{order.reason} {order.procedure_text}".upper()
    if order.priority == "stat" or order.patient_class == "E":
        return Priority.EMERGENCY
    if _2WW.search(words):
        return Priority.CANCER_2WW
    if order.priority == "asap" or order.patient_class == "I":
        return Priority.INPATIENT
    if _GP.search(order.requesting_location.upper()):
        return Priority.GP
    return Priority.OUTPATIENT


@dataclass(frozen=True, slots=True)
class OrderedStudies:
    region: Region

    def on_new_series(
        self, conn: sa.Connection, *, study_uid: str, accession_number: str, trust: str
    ) -> tuple[bool, Priority | None]:
        """For a study's first image series: (wait for its MPPS, the order's priority)."""
        order = order_of_study(conn, study_uid, accession_number=accession_number, trust=trust)
        if order is None:
            return False, None
        # Only an order still to be performed waits; a completed (or closed) one does not.
        waiting = order.status in ("scheduled", "in progress")
        wait = self.region.reporting.ready_at == "mpps" and waiting
        return wait, reporting_priority(order)

    def study_completed(self, conn: sa.Connection, study_uid: str, now: dt.datetime) -> None:
        """An MPPS COMPLETED the study: it becomes ready to report (``ready_at = "mpps"``)
        and its item takes the order's priority."""
        from netpacs.services.reporting.worklist import stored_study_item

        order = order_of_study(conn, study_uid)
        if self._raise(conn, study_uid, order, now):
            return
        if self.region.reporting.ready_at != "mpps":
            return
        priority = reporting_priority(order) if order is not None else None
        try:
            values = stored_study_item(
                conn, self.region, study_uid, priority=priority, arrived_at=now
            )
        except ReportingError:
            return  # no images yet: the first series will make the item
        insert_worklist_item(conn, values)

    def order_changed(self, conn: sa.Connection, study_uid: str, now: dt.datetime) -> None:
        """An order change (XO): its open item is re-prioritised when more urgent."""
        self._raise(conn, study_uid, order_of_study(conn, study_uid), now)

    def _raise(self, conn: sa.Connection, study_uid: str, order: Any, now: dt.datetime) -> bool:
        """Raise the study's open item to its order's priority; whether it has an item."""
        item = conn.execute(
            sa.select(worklist_item).where(worklist_item.c.study_instance_uid == study_uid)
        ).first()
        if item is None:
            return False
        if order is None or item.status not in OPEN:
            return True
        wanted = reporting_priority(order)
        if wanted.rank < Priority(item.priority).rank:
            conn.execute(
                sa.update(worklist_item)
                .where(worklist_item.c.id == item.id)
                .values(
                    priority=wanted.value,
                    due_at=item.arrived_at + target(self.region, wanted),
                )
            )
        return True

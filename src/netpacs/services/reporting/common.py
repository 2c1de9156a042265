"""What the reporting services share: the problems they report, the priorities, a
worklist item as the API shows it, and the scope of one principal (the items and
patients that are theirs)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from netpacs.domain.outcomes import Problem, Refused
from netpacs.domain.region import Region, ReportingAgreement
from netpacs.index.reporting import worklist_rows
from netpacs.index.schema import report, worklist_item
from netpacs.services.access import (
    NOBODY,
    AccessRules,
    Capability,
    Principal,
    Role,
    agreement_items,
)
from netpacs.services.access_policy import AccessPolicy
from netpacs.services.audit import AuditRecord, AuditService, Event, Purpose
from netpacs.services.reporting.ordered import order_of_study, order_summary


class ReportingError(Refused):
    """A request the reporting rules refuse: not found (or not the principal's to see),
    forbidden for the role, held by another reporter or final already (CONFLICT), or a
    value of the request refused (INVALID)."""


def not_found() -> ReportingError:
    # The same words whether the study does not exist or the user may not see it.
    return ReportingError(Problem.NOT_FOUND, "no such study on the worklist")


class Priority(enum.Enum):
    EMERGENCY = "emergency"
    INPATIENT = "inpatient"
    CANCER_2WW = "cancer-2ww"
    OUTPATIENT = "outpatient"
    GP = "gp"

    @property
    def rank(self) -> int:
        return list(Priority).index(self)

    @property
    def label(self) -> str:
        return _PRIORITY_LABELS[self]

    @classmethod
    def parse(cls, value: str) -> Priority:
        """The priority ``value`` names; INVALID, naming the choices, when none."""
        try:
            return cls(value)
        except ValueError:
            raise ReportingError(
                Problem.INVALID, f"priority {value!r}: one of {', '.join(p.value for p in cls)}"
            ) from None


_PRIORITY_LABELS = {
    Priority.EMERGENCY: "Emergency",
    Priority.INPATIENT: "Inpatient",
    Priority.CANCER_2WW: "Cancer two-week wait",
    Priority.OUTPATIENT: "Outpatient",
    Priority.GP: "GP direct access",
}

#: Item statuses still to be reported.
OPEN = ("unreported", "draft", "preliminary")
#: The worklist item's values when nobody holds it.
NO_CLAIM: dict[str, None] = dict.fromkeys(
    ("claimed_by", "claimed_by_name", "claimed_by_trust", "claimed_at", "claim_expires_at")
)


def target(region: Region, priority: Priority) -> dt.timedelta:
    """The time from arrival to final report the region sets for ``priority``."""
    return dt.timedelta(hours=region.reporting.turnaround_hours[priority.value])


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``."""
    if value is None:
        return None
    return aware(value).isoformat()[:-6] + "Z"  # "+00:00" of a UTC time replaced


def aware(value: dt.datetime) -> dt.datetime:
    """``value`` in UTC (the index's sessions give UTC times: index.db)."""
    zone = value.tzinfo
    if zone is dt.UTC:
        return value
    if zone is None:  # SQLite gives naive datetimes back; they were written in UTC
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def report_row(conn: sa.Connection, study_uid: str, *, required: bool = False) -> Any:
    """The study's report row (None when it has none, unless ``required``)."""
    query = sa.select(report).where(report.c.study_instance_uid == study_uid)
    return conn.execute(query).one() if required else conn.execute(query).first()


def holder(row: sa.Row[Any], now: dt.datetime) -> str | None:
    """Who holds the item at ``now`` (a lapsed claim is nobody's)."""
    m = row._mapping
    if m["claimed_by"] is None or m["claim_expires_at"] is None:
        return None
    return str(m["claimed_by"]) if aware(m["claim_expires_at"]) > now else None


def held_message(row: sa.Row[Any]) -> str:
    m = row._mapping
    since = aware(m["claimed_at"]).strftime("%H:%M") if m["claimed_at"] else "?"
    who = m["claimed_by_name"] or m["claimed_by"]
    return f"claimed by {who} ({m['claimed_by']}, {m['claimed_by_trust']}) since {since} UTC"


_SHOWN = (
    "study_instance_uid", "patient_id", "issuer", "patient_name", "nhs_number",
    "accession_number", "study_date", "requesting_trust", "requesting_site", "modality",
    "body_part", "study_description", "subspecialty",
)  # fmt: skip


def item_json(row: sa.Row[Any], now: dt.datetime) -> dict[str, Any]:
    """A worklist row (index.reporting.worklist_rows) as the API shows it at ``now``.
    (A worklist page builds hundreds: the look-ups are made once each.)"""
    m = row._mapping
    due = aware(m["due_at"])
    held = holder(row, now) is not None
    reported = m["reported_at"]
    end = aware(reported) if reported and m["status"] == "final" else now
    priority = Priority(m["priority"])
    out = {key: m[key] for key in _SHOWN}
    out["priority"] = priority.value
    out["priority_label"] = priority.label
    out["status"] = m["status"]
    if held:
        out["claimed_by"] = m["claimed_by"]
        out["claimed_by_name"] = m["claimed_by_name"]
        out["claimed_by_trust"] = m["claimed_by_trust"]
        out["claimed_at"] = iso(m["claimed_at"])
        out["claim_expires_at"] = iso(m["claim_expires_at"])
    else:
        out.update(NO_CLAIM)
    out["arrived_at"] = iso(m["arrived_at"])
    out["due_at"] = iso(due)
    out["reported_at"] = iso(reported)
    out["reported_by"] = m["reported_by"]
    out["breached"] = end > due
    out["minutes_to_breach"] = int((due - now).total_seconds() // 60)
    out["second_opinion_requested"] = m["second_opinion_requested_by"] is not None
    return out


@dataclass(frozen=True, slots=True)
class ReportingScope:
    """One principal's view of reporting: the items their agreements assign them, the
    patients they may see, and where both are kept. Built once per process for
    :data:`NOBODY`; each request works with a copy for its principal."""

    read_engine: sa.Engine
    write_engine: sa.Engine
    region: Region
    audit: AuditService
    access: AccessPolicy
    principal: Principal = NOBODY
    rules: AccessRules = field(default_factory=AccessRules)

    def for_principal(self, principal: Principal) -> ReportingScope:
        return dataclasses.replace(self, principal=principal)

    def with_agreements(self, principal: Principal) -> Principal:
        """The principal with the requesting trusts its reporting agreements cover (whose
        worklist patients it may then see: services.access)."""
        if principal.role is not Role.RADIOLOGIST:
            return principal
        return dataclasses.replace(
            principal, reports_for=self.region.reporting.applying(principal.trust)
        )

    def require_reporter(self) -> None:
        """AccessDenied (audited) unless the principal may report."""
        self.access.require(self.principal, Capability.REPORT)

    def require_admin(self, what: str) -> None:
        """AccessDenied (audited) unless the principal manages the worklist (a PACS admin,
        or netpacs itself); ``what`` they asked to do."""
        if not self.principal.may(Capability.MANAGE_WORKLIST):
            self.access.deny(
                self.principal, Capability.MANAGE_WORKLIST, f"only a PACS admin may {what}"
            )

    def agreements(self) -> tuple[ReportingAgreement, ...] | None:
        """The agreements that assign the principal work; None: every item (admins)."""
        p = self.principal
        if p.sees_everything:
            return None
        if p.role is not Role.RADIOLOGIST:
            return ()
        return self.region.reporting.applying(p.trust)

    def subspecialties(self) -> tuple[str, ...]:
        return self.region.reporting.reporter_subspecialties.get(self.principal.user_id, ())

    def visible_patients(self) -> sa.ColumnElement[bool] | None:
        return self.rules.visible_patients(self.principal)

    def condition(self) -> sa.ColumnElement[bool]:
        """Items the principal may report (by agreement) and whose patient they may see
        (a condition on ``worklist_item`` joined to its ``study`` and ``patient``)."""
        conds: list[sa.ColumnElement[bool]] = []
        assigned = self._assigned()
        if assigned is not None:
            conds.append(assigned)
        visible = self._patient_condition()
        if visible is not None:
            conds.append(visible)
        return sa.and_(sa.true(), *conds)

    def item_condition(self) -> sa.ColumnElement[bool] | None:
        """The same as :meth:`condition` on ``worklist_item`` alone, when it needs no
        patient (see :meth:`AccessRules.sees_assigned_items`); else None."""
        if self._patient_condition() is not None:
            return None
        return sa.and_(sa.true(), *([] if (a := self._assigned()) is None else [a]))

    def _assigned(self) -> sa.ColumnElement[bool] | None:
        agreements = self.agreements()
        return agreement_items(agreements) if agreements is not None else None

    def _patient_condition(self) -> sa.ColumnElement[bool] | None:
        """The condition on the item's patient, None when every item the principal's
        agreements assign shows a patient they may see."""
        agreements = self.agreements()
        if agreements and self.rules.sees_assigned_items(self.principal, agreements):
            return None
        return self.visible_patients()

    def items(self) -> sa.Select[Any]:
        """The principal's worklist rows."""
        return worklist_rows().where(self.condition())

    def item(self, study_uid: str) -> dict[str, Any]:
        """The principal's worklist item of a study; NOT_FOUND when it is not theirs."""
        with self.read_engine.connect() as conn:
            row = conn.execute(
                self.items().where(worklist_item.c.study_instance_uid == study_uid)
            ).first()
            order = order_of_study(conn, study_uid) if row is not None else None
        if row is None:
            raise not_found()
        # The study's order (issue 15): requesting clinician, location, reason.
        return item_json(row, dt.datetime.now(dt.UTC)) | {
            "order": order_summary(order) if order is not None else None
        }

    def locked_item(self, conn: sa.Connection, study_uid: str) -> sa.Row[Any]:
        """The principal's worklist row of a study, locked for this transaction."""
        row = conn.execute(
            self.items()
            .where(worklist_item.c.study_instance_uid == study_uid)
            .with_for_update(of=worklist_item)
        ).first()
        if row is None:
            raise not_found()
        return row

    def claim_values(self, now: dt.datetime, by: Principal | None = None) -> dict[str, Any]:
        """The item's values while ``by`` (default: the principal) holds it from ``now``."""
        p = by or self.principal
        return {
            "claimed_by": p.user_id,
            "claimed_by_name": p.name or p.user_id,
            "claimed_by_trust": p.trust,
            "claim_expires_at": now + dt.timedelta(minutes=self.region.reporting.claim_minutes),
        }

    def may_read_draft(self, conn: sa.Connection, study_uid: str, author: str) -> bool:
        """Whether the principal reads the draft report of a study: its author, or a
        reporting colleague (one who may report the study: an agreement of the region
        assigns them its worklist item, or they manage the worklist)."""
        p = self.principal
        if p.user_id == author:
            return True
        if not p.may(Capability.REPORT):
            return False
        query = self.items().where(worklist_item.c.study_instance_uid == study_uid)
        return conn.execute(sa.select(query.exists())).scalar_one()

    def audit_read(
        self, patients: Sequence[tuple[str, str]], study_uids: Sequence[str], what: str
    ) -> None:
        """Audit what the principal read of patients' reports (PS3.15 A.5.3.9 Patient
        Record, action Read)."""
        self.audit.record(
            AuditRecord(
                Event.PATIENT_RECORD_READ,
                self.principal.actor(),
                purpose=Purpose.TREAT,
                patients=list(dict.fromkeys(patients)),
                study_uids=list(dict.fromkeys(study_uids)),
                detail=what,
            )
        )

    def audit_event(self, item: sa.Row[Any], what: str) -> None:
        """Audit what the principal did with a patient's worklist item or report."""
        self.audit.record(
            AuditRecord(
                Event.PATIENT_RECORD,
                self.principal.actor(),
                purpose=Purpose.TREAT,
                patients=[(item.patient_id, item.issuer)],
                study_uids=[item.study_instance_uid],
                detail=what,
            )
        )

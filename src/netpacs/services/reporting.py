"""Networked reporting (issue 6): the regional worklist, claims, reports and signing.

One worklist for the region. A study that needs a report becomes a worklist item when
its first image series arrives from a modality or a user (DIMSE C-STORE, STOW-RS);
history migrated with ``netpacs import``, re-indexed objects and copies from peer
archives are not queued (they were reported where they were made), nor are series of
non-image objects (SR, presentation states, key objects). Each item has the
requesting trust and site (where it was captured), modality, body part, a
subspecialty, a priority and a target time (``due_at``) from the region's turnaround
targets.

Priority is read from the request attributes the modality copied from its worklist
(in order of precedence): Requested Procedure Priority STAT or a requesting service
naming the emergency department -> emergency; "2WW"/"two week wait"/"cancer pathway"
in the reason for the request or the procedure description -> cancer-2ww; HIGH or a
ward/inpatient requesting service -> inpatient; a GP requesting service -> gp;
otherwise outpatient. An admin can change it.

Who reports what: radiologists of the trusts an agreement of the region file names
(``[reporting.agreements]``), for the requesting trusts it names; admins manage
everything. The claim is one row of the index that every worker and every trust
reads, so everyone sees who has an item and since when; it is taken with one
conditional UPDATE, so two reporters can never both hold it, and signing final
requires holding it under a row lock, so two reporters can never both finalise.
A claim lapses ``claim_minutes`` after the holder's last save.

A final report is never edited: later words are addenda. Signing final and adding an
addendum queue an HL7 ORU^R01 for the requesting trust in the same transaction (the
outputs' outbox: sent by the results worker, never lost) and then store a Basic Text
SR in the study (services.report_outputs).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from netpacs.dicom.header import JsonDataset, first_str
from netpacs.domain.outcomes import Origin, Protocol
from netpacs.domain.region import SUBSPECIALTIES, AEKind, Region, ReportingAgreement
from netpacs.domain.report import Addendum, Reporter, SignedReport
from netpacs.index.schema import (
    instance,
    patient,
    report,
    report_event,
    result_outbox,
    series,
    study,
    user_account,
    worklist_item,
)
from netpacs.index.writer import InstanceRecord
from netpacs.services.access import AccessRules, Capability, Principal, Role, agreement_items
from netpacs.services.audit import AuditRecord, AuditService, Event, Purpose

if TYPE_CHECKING:
    from netpacs.services.report_outputs import ReportOutputs

log = logging.getLogger(__name__)


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


_PRIORITY_LABELS = {
    Priority.EMERGENCY: "Emergency",
    Priority.INPATIENT: "Inpatient",
    Priority.CANCER_2WW: "Cancer two-week wait",
    Priority.OUTPATIENT: "Outpatient",
    Priority.GP: "GP direct access",
}

#: Series of these modalities are not images to report (they may come with a study).
NOT_REPORTED = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG", "RWV", "PLAN", "OT", ""})

OPEN = ("unreported", "draft", "preliminary")

_BODY_PARTS: tuple[tuple[str, frozenset[str]], ...] = (
    ("breast", frozenset({"BREAST"})),
    ("neuro", frozenset({"HEAD", "BRAIN", "SKULL", "NECK", "CSPINE", "HEADNECK", "IAC"})),
    ("cardiac", frozenset({"HEART", "CARDIAC", "CORONARY", "AORTA"})),
    ("chest", frozenset({"CHEST", "LUNG", "THORAX", "RIBS"})),
    (
        "body",
        frozenset(
            {"ABDOMEN", "PELVIS", "ABDOMENPELVIS", "CHESTABDPELVIS", "LIVER", "KIDNEY", "COLON"}
        ),
    ),
    (
        "msk",
        frozenset(
            {
                "KNEE", "SHOULDER", "HIP", "HAND", "WRIST", "ELBOW", "ANKLE", "FOOT", "SPINE",
                "LSPINE", "TSPINE", "SSPINE", "EXTREMITY", "LEG", "ARM", "FEMUR", "TIBIA",
                "HUMERUS", "FOREARM", "CLAVICLE", "FINGER", "TOE",
            }
        ),
    ),
)  # fmt: skip

TEMPLATES: dict[str, str] = {
    "CT": "CLINICAL DETAILS:\n\n\nTECHNIQUE:\n\n\nCOMPARISON:\n\n\nFINDINGS:\n\n\nCONCLUSION:\n",
    "MR": "CLINICAL DETAILS:\n\n\nTECHNIQUE:\nSequences: \n\nCOMPARISON:\n\n\nFINDINGS:\n\n\n"
    "CONCLUSION:\n",
    "CR": "CLINICAL DETAILS:\n\n\nFINDINGS:\n\n\nCONCLUSION:\n",
    "DX": "CLINICAL DETAILS:\n\n\nFINDINGS:\n\n\nCONCLUSION:\n",
    "US": "CLINICAL DETAILS:\n\n\nFINDINGS:\n\n\nMEASUREMENTS:\n\n\nCONCLUSION:\n",
    "MG": "CLINICAL DETAILS:\n\n\nBREAST COMPOSITION:\n\n\nFINDINGS:\n\n\n"
    "CONCLUSION:\nBI-RADS category: \n",
    "NM": "CLINICAL DETAILS:\n\n\nRADIOPHARMACEUTICAL:\n\n\nFINDINGS:\n\n\nCONCLUSION:\n",
    "PT": "CLINICAL DETAILS:\n\n\nTECHNIQUE:\n\n\nFINDINGS:\n\n\nCONCLUSION:\n",
    "XA": "CLINICAL DETAILS:\n\n\nPROCEDURE:\n\n\nFINDINGS:\n\n\nCONCLUSION:\n",
}
MIN_FINAL_TEXT = 10
#: The worklist item's values when nobody holds it.
_NO_CLAIM: dict[str, None] = dict.fromkeys(
    ("claimed_by", "claimed_by_name", "claimed_by_trust", "claimed_at", "claim_expires_at")
)
MAX_TEXT = 100_000


class ReportingError(Exception):
    """A request the reporting rules refuse; ``status`` is the HTTP status it means."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _not_found() -> ReportingError:
    # The same words whether the study does not exist or the user may not see it.
    return ReportingError(404, "no such study on the worklist")


# -- deciding the worklist item of a new series --------------------------------------


def _strings(h: JsonDataset, tag: str) -> list[str]:
    """Top-level values of ``tag`` and those in Request Attributes Sequence items."""
    found = [first_str(h, tag)]
    seq = h.get("00400275", {}).get("Value", [])
    for item in seq if isinstance(seq, list) else []:
        if isinstance(item, dict):
            found.append(first_str(item, tag))
    return [f.upper() for f in found if f]


def priority_of(h: JsonDataset) -> Priority:
    """The reporting priority the request attributes in a header say (module doc)."""
    stated = _strings(h, "00401003")  # Requested Procedure Priority
    service = " ".join(_strings(h, "00321033"))  # Requesting Service
    reason = " ".join(
        _strings(h, "00401002")  # Reason for the Requested Procedure
        + _strings(h, "00321060")  # Requested Procedure Description
        + _strings(h, "00081030")  # Study Description
    )
    if "STAT" in stated or re.search(r"\b(EMERGENCY|A&E|ED|RESUS)\b", service):
        return Priority.EMERGENCY
    if re.search(r"\b2WW\b|TWO[ -]WEEK[ -]WAIT|CANCER PATHWAY", reason):
        return Priority.CANCER_2WW
    if "HIGH" in stated or re.search(r"\b(WARD|INPATIENT|ADMISSIONS?)\b", service):
        return Priority.INPATIENT
    if re.search(r"\b(GP|GENERAL PRACTICE|PRIMARY CARE)\b", service):
        return Priority.GP
    return Priority.OUTPATIENT


def subspecialty_of(modality: str, body_part: str, h: JsonDataset) -> str:
    """The subspecialty that reports a study: paediatric under 16, else by body part."""
    birth, day = first_str(h, "00100030"), first_str(h, "00080020")
    dated = len(birth) == 8 and len(day) == 8 and birth.isdigit() and day.isdigit()
    if dated and int(day) - int(birth) < 160000:
        return "paediatric"
    if modality == "MG":
        return "breast"
    part = re.sub(r"[^A-Z]", "", body_part.upper())
    for name, parts in _BODY_PARTS:
        if part in parts:
            return name
    return "general"


def _queued(origin: Any, region: Region) -> bool:
    """Whether objects from this origin are queued for reporting (module doc)."""
    if not isinstance(origin, Origin):
        return False
    if origin.protocol not in (Protocol.DIMSE, Protocol.DICOMWEB):
        return False
    ae = region.ae(origin.ae_title) if origin.ae_title else None
    return ae is None or ae.kind is not AEKind.ARCHIVE


@dataclass(frozen=True, slots=True)
class WorklistRule:
    """The index writer's hook for a new series (index.writer.NewSeriesHook)."""

    region: Region

    def __call__(
        self, conn: sa.Connection, record: InstanceRecord, study_pk: int, now: dt.datetime
    ) -> None:
        modality = str(record.series.get("modality") or "").upper()
        if modality in NOT_REPORTED or not _queued(record.hints.get("origin"), self.region):
            return
        header = record.hints.get("header")
        h: JsonDataset = header if isinstance(header, dict) else {}
        priority = priority_of(h)
        body_part = str(record.series.get("body_part_examined") or "")
        origin = record.hints["origin"]
        values = {
            "study_instance_uid": record.study["study_instance_uid"],
            "requesting_trust": record.study.get("origin_trust") or origin.trust or "",
            "requesting_site": record.study.get("origin_site"),
            "modality": modality,
            "body_part": body_part,
            "study_description": str(record.study.get("study_description") or ""),
            "subspecialty": subspecialty_of(modality, body_part, h),
            "priority": priority.value,
            "arrived_at": now,
            "due_at": now + target(self.region, priority),
            "status": "unreported",
        }
        _insert_item(conn, values)


def _insert_item(conn: sa.Connection, values: dict[str, Any]) -> bool:
    """Insert a worklist item unless the study has one; whether it was inserted."""
    insert = (
        postgresql.insert(worklist_item)
        if conn.dialect.name == "postgresql"
        else sqlite.insert(worklist_item)
    )
    done = conn.execute(
        insert.values(values).on_conflict_do_nothing().returning(worklist_item.c.id)
    ).first()
    return done is not None


def _report_row(conn: sa.Connection, study_uid: str, *, required: bool = False) -> Any:
    """The study's report row (None when it has none, unless ``required``)."""
    query = sa.select(report).where(report.c.study_instance_uid == study_uid)
    return conn.execute(query).one() if required else conn.execute(query).first()


def target(region: Region, priority: Priority) -> dt.timedelta:
    return dt.timedelta(hours=region.reporting.turnaround_hours[priority.value])


# -- the service ---------------------------------------------------------------------

View = Literal["all", "mine", "subspecialty", "trust"]
StatusFilter = Literal["open", "reported", "all"]


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite gives naive datetimes back
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class ReportingService:
    """The worklist, claims and reports, for one principal (see :meth:`for_principal`)."""

    def __init__(
        self,
        engine: sa.Engine,
        write_engine: sa.Engine,
        region: Region,
        *,
        principal: Principal,
        audit: AuditService,
        outputs: ReportOutputs | None = None,
        rules: AccessRules | None = None,
    ) -> None:
        self._engine = engine
        self._write = write_engine
        self._region = region
        self._principal = principal
        self._audit = audit
        self._outputs = outputs
        self._rules = rules or AccessRules()

    def for_principal(self, principal: Principal) -> ReportingService:
        return ReportingService(
            self._engine,
            self._write,
            self._region,
            principal=principal,
            audit=self._audit,
            outputs=self._outputs,
            rules=self._rules,
        )

    @property
    def principal(self) -> Principal:
        return self._principal

    def with_agreements(self, principal: Principal) -> Principal:
        """The principal with the requesting trusts its reporting agreements cover (whose
        worklist patients it may then see: services.access)."""
        if principal.role is not Role.RADIOLOGIST:
            return principal
        return dataclasses.replace(
            principal, reports_for=self._region.reporting.applying(principal.trust)
        )

    # -- who may report what -----------------------------------------------------------
    def may_report(self) -> bool:
        return self._principal.may(Capability.REPORT)

    def agreements(self) -> tuple[ReportingAgreement, ...] | None:
        """The agreements that assign the principal work; None: every item (admins)."""
        p = self._principal
        if p.sees_everything:
            return None
        if p.role is not Role.RADIOLOGIST:
            return ()
        return self._region.reporting.applying(p.trust)

    def subspecialties(self) -> tuple[str, ...]:
        return self._region.reporting.reporter_subspecialties.get(self._principal.user_id, ())

    def _require_reporter(self) -> None:
        if not self.may_report():
            raise ReportingError(
                403, f"reporting is for radiologists and admins, not a {self._principal.role.value}"
            )

    def _scope(self) -> sa.ColumnElement[bool]:
        """Items the principal may report (by agreement) and whose patient they may see."""
        conds: list[sa.ColumnElement[bool]] = []
        agreements = self.agreements()
        assigned = agreement_items(agreements) if agreements is not None else None
        if assigned is not None:
            conds.append(assigned)
        visible = self._rules.visible_patients(self._principal)
        if visible is not None:
            conds.append(visible)
        return sa.and_(sa.true(), *conds)

    def _item_query(self) -> sa.Select[Any]:
        return (
            sa.select(
                worklist_item,
                patient.c.patient_id,
                patient.c.issuer,
                patient.c.patient_name,
                patient.c.nhs_number,
                study.c.study_date,
                study.c.accession_number,
                report.c.second_opinion_requested_by,
            )
            .select_from(
                worklist_item.join(
                    study, study.c.study_instance_uid == worklist_item.c.study_instance_uid
                )
                .join(patient, patient.c.id == study.c.patient_fk)
                .outerjoin(
                    report, report.c.study_instance_uid == worklist_item.c.study_instance_uid
                )
            )
            .where(self._scope())
        )

    def _item_json(self, row: sa.Row[Any], now: dt.datetime) -> dict[str, Any]:
        m = row._mapping
        due = _aware(m["due_at"])
        held = m["claimed_by"] is not None and _aware(m["claim_expires_at"]) > now
        reported = m["status"] == "final"
        end = _aware(m["reported_at"]) if reported and m["reported_at"] else now
        priority = Priority(m["priority"])
        return {
            "study_instance_uid": m["study_instance_uid"],
            "patient_id": m["patient_id"],
            "issuer": m["issuer"],
            "patient_name": m["patient_name"],
            "nhs_number": m["nhs_number"],
            "accession_number": m["accession_number"],
            "study_date": m["study_date"],
            "requesting_trust": m["requesting_trust"],
            "requesting_site": m["requesting_site"],
            "modality": m["modality"],
            "body_part": m["body_part"],
            "study_description": m["study_description"],
            "subspecialty": m["subspecialty"],
            "priority": priority.value,
            "priority_label": priority.label,
            "status": m["status"],
            "claimed_by": m["claimed_by"] if held else None,
            "claimed_by_name": m["claimed_by_name"] if held else None,
            "claimed_by_trust": m["claimed_by_trust"] if held else None,
            "claimed_at": _iso(m["claimed_at"]) if held else None,
            "claim_expires_at": _iso(m["claim_expires_at"]) if held else None,
            "arrived_at": _iso(m["arrived_at"]),
            "due_at": _iso(due),
            "reported_at": _iso(m["reported_at"]),
            "reported_by": m["reported_by"],
            "breached": end > due,
            "minutes_to_breach": int((due - now).total_seconds() // 60),
            "second_opinion_requested": m["second_opinion_requested_by"] is not None,
        }

    # -- the worklist --------------------------------------------------------------------
    def worklist(
        self,
        *,
        view: View = "all",
        trust: str | None = None,
        subspecialty: str | None = None,
        status: StatusFilter = "open",
        priority: str | None = None,
        limit: int = 500,
    ) -> dict[str, Any]:
        self._require_reporter()
        now = dt.datetime.now(dt.UTC)
        q = self._item_query()
        if status == "open":
            q = q.where(worklist_item.c.status.in_(OPEN))
        elif status == "reported":
            q = q.where(worklist_item.c.status == "final")
        if view == "mine":
            q = q.where(
                sa.or_(
                    sa.and_(
                        worklist_item.c.claimed_by == self._principal.user_id,
                        worklist_item.c.claim_expires_at > now,
                    ),
                    worklist_item.c.reported_by == self._principal.user_id,
                )
            )
        elif view == "subspecialty":
            wanted = [subspecialty] if subspecialty else list(self.subspecialties())
            q = q.where(worklist_item.c.subspecialty.in_(wanted))
        elif view == "trust":
            q = q.where(worklist_item.c.requesting_trust == (trust or self._principal.trust))
        if trust and view != "trust":
            q = q.where(worklist_item.c.requesting_trust == trust)
        if subspecialty and view != "subspecialty":
            q = q.where(worklist_item.c.subspecialty == subspecialty)
        if priority:
            try:
                q = q.where(worklist_item.c.priority == Priority(priority).value)
            except ValueError:
                raise ReportingError(
                    422, f"priority {priority!r}: one of {', '.join(p.value for p in Priority)}"
                ) from None
        rank = sa.case(
            {p.value: p.rank for p in Priority}, value=worklist_item.c.priority, else_=99
        )
        order = (
            (worklist_item.c.reported_at.desc(),)
            if status == "reported"
            else (rank, worklist_item.c.due_at, worklist_item.c.id)
        )
        counts_q = (
            sa.select(worklist_item.c.requesting_trust, worklist_item.c.priority, sa.func.count())
            .select_from(
                worklist_item.join(
                    study, study.c.study_instance_uid == worklist_item.c.study_instance_uid
                ).join(patient, patient.c.id == study.c.patient_fk)
            )
            .where(self._scope(), worklist_item.c.status.in_(OPEN))
            .group_by(worklist_item.c.requesting_trust, worklist_item.c.priority)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(q.order_by(*order).limit(max(1, min(limit, 2000)))).all()
            counts = conn.execute(counts_q).all()
        p = self._principal
        return {
            "items": [self._item_json(r, now) for r in rows],
            "counts": sorted(
                ({"trust": t, "priority": pr, "count": int(c)} for t, pr, c in counts),
                key=lambda c: (c["trust"], Priority(c["priority"]).rank),
            ),
            "me": {
                "username": p.user_id,
                "name": p.name or "",
                "trust": p.trust,
                "role": p.role.value,
                "subspecialties": list(self.subspecialties()),
            },
            "priorities": [
                {
                    "code": pr.value,
                    "label": pr.label,
                    "target_hours": self._region.reporting.turnaround_hours[pr.value],
                }
                for pr in Priority
            ],
            "subspecialties": list(SUBSPECIALTIES),
        }

    def item(self, study_uid: str) -> dict[str, Any]:
        self._require_reporter()
        with self._engine.connect() as conn:
            row = conn.execute(
                self._item_query().where(worklist_item.c.study_instance_uid == study_uid)
            ).first()
        if row is None:
            raise _not_found()
        return self._item_json(row, dt.datetime.now(dt.UTC))

    def statuses(self, study_uids: Sequence[str]) -> dict[str, str]:
        """Report status of each study on the worklist (for study lists): unreported,
        draft, preliminary or final. Studies the principal already sees; no scope."""
        if not study_uids:
            return {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(worklist_item.c.study_instance_uid, worklist_item.c.status).where(
                    worklist_item.c.study_instance_uid.in_(list(study_uids))
                )
            ).all()
        return {uid: status for uid, status in rows}

    def queue(
        self,
        study_uid: str,
        *,
        priority: str | None = None,
        arrived_at: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """An admin puts a study on the worklist that was not queued on arrival (e.g. an
        imported outside study that needs a report here); 409 when it is already on it."""
        if not self._principal.sees_everything:
            raise ReportingError(403, "only a PACS admin may add studies to the worklist")
        chosen: Priority | None = None
        if priority is not None:
            try:
                chosen = Priority(priority)
            except ValueError:
                raise ReportingError(
                    422, f"priority {priority!r}: one of {', '.join(p.value for p in Priority)}"
                ) from None
        now = dt.datetime.now(dt.UTC)
        arrived = arrived_at or now
        with self._write.begin() as conn:
            st = conn.execute(
                sa.select(study).where(study.c.study_instance_uid == study_uid)
            ).first()
            if st is None:
                raise _not_found()
            first = conn.execute(
                sa.select(series.c.modality, series.c.body_part_examined, instance.c.metadata_json)
                .select_from(series.join(instance, instance.c.series_fk == series.c.id))
                .where(series.c.study_fk == st.id, series.c.modality.not_in(sorted(NOT_REPORTED)))
                .order_by(series.c.id, instance.c.id)
                .limit(1)
            ).first()
            if first is None:
                raise ReportingError(422, "the study has no images to report")
            header: JsonDataset = orjson.loads(first.metadata_json)
            chosen = chosen or priority_of(header)
            modality = first.modality.upper()
            inserted = _insert_item(
                conn,
                {
                    "study_instance_uid": study_uid,
                    "requesting_trust": st.origin_trust or "",
                    "requesting_site": st.origin_site,
                    "modality": modality,
                    "body_part": first.body_part_examined,
                    "study_description": st.study_description,
                    "subspecialty": subspecialty_of(modality, first.body_part_examined, header),
                    "priority": chosen.value,
                    "arrived_at": arrived,
                    "due_at": arrived + target(self._region, chosen),
                    "status": "unreported",
                },
            )
            if not inserted:
                raise ReportingError(409, "the study is already on the worklist")
        return self.item(study_uid)

    # -- claims --------------------------------------------------------------------------
    def _locked_item(self, conn: sa.Connection, study_uid: str) -> sa.Row[Any]:
        row = conn.execute(
            self._item_query()
            .where(worklist_item.c.study_instance_uid == study_uid)
            .with_for_update(of=worklist_item)
        ).first()
        if row is None:
            raise _not_found()
        return row

    @staticmethod
    def _holder(row: sa.Row[Any], now: dt.datetime) -> str | None:
        m = row._mapping
        if m["claimed_by"] is None or m["claim_expires_at"] is None:
            return None
        return str(m["claimed_by"]) if _aware(m["claim_expires_at"]) > now else None

    @staticmethod
    def _held_message(row: sa.Row[Any]) -> str:
        m = row._mapping
        since = _aware(m["claimed_at"]).strftime("%H:%M") if m["claimed_at"] else "?"
        who = m["claimed_by_name"] or m["claimed_by"]
        return f"claimed by {who} ({m['claimed_by']}, {m['claimed_by_trust']}) since {since} UTC"

    def _claim_values(self, now: dt.datetime, holder: Principal | None = None) -> dict[str, Any]:
        p = holder or self._principal
        return {
            "claimed_by": p.user_id,
            "claimed_by_name": p.name or p.user_id,
            "claimed_by_trust": p.trust,
            "claim_expires_at": now + dt.timedelta(minutes=self._region.reporting.claim_minutes),
        }

    def claim(self, study_uid: str) -> dict[str, Any]:
        """Take the item for the principal (renews their own claim); 409 when another
        reporter holds it or it is reported."""
        self._require_reporter()
        now = dt.datetime.now(dt.UTC)
        with self._write.begin() as conn:
            row = self._locked_item(conn, study_uid)
            if row.status == "final":
                raise ReportingError(
                    409, f"already reported by {row.reported_by}: add an addendum instead"
                )
            holder = self._holder(row, now)
            if holder is not None and holder != self._principal.user_id:
                raise ReportingError(409, self._held_message(row))
            values = self._claim_values(now)
            if holder is None:
                values["claimed_at"] = now
            conn.execute(
                sa.update(worklist_item).where(worklist_item.c.id == row.id).values(values)
            )
        self._audit_report_event(row, "claimed for reporting")
        return self.item(study_uid)

    def release(self, study_uid: str) -> dict[str, Any]:
        self._require_reporter()
        now = dt.datetime.now(dt.UTC)
        with self._write.begin() as conn:
            row = self._locked_item(conn, study_uid)
            holder = self._holder(row, now)
            others = holder is not None and holder != self._principal.user_id
            if others and not self._principal.sees_everything:
                raise ReportingError(
                    409, self._held_message(row) + ": only they or an admin may release it"
                )
            conn.execute(
                sa.update(worklist_item).where(worklist_item.c.id == row.id).values(_NO_CLAIM)
            )
        return self.item(study_uid)

    def assign(self, study_uid: str, username: str) -> dict[str, Any]:
        """An admin gives the item to a radiologist who may report it."""
        if not self._principal.sees_everything:
            raise ReportingError(403, "only a PACS admin may reassign worklist items")
        now = dt.datetime.now(dt.UTC)
        with self._engine.connect() as conn:
            account = conn.execute(
                sa.select(user_account).where(
                    user_account.c.username == username.strip(), user_account.c.disabled.is_(False)
                )
            ).first()
        if account is None or account.role != Role.RADIOLOGIST.value:
            raise ReportingError(422, f"{username!r} is not a radiologist's account")
        assignee = Principal(
            account.username, Role.RADIOLOGIST, account.trust, name=account.display_name
        )
        with self._write.begin() as conn:
            row = self._locked_item(conn, study_uid)
            agreements = self.for_principal(assignee).agreements()
            if agreements is not None and not any(
                a.covers(row.requesting_trust, row.subspecialty) for a in agreements
            ):
                raise ReportingError(
                    422,
                    f"{username} ({account.trust}) has no reporting agreement for "
                    f"{row.requesting_trust}'s {row.subspecialty} studies",
                )
            if row.status == "final":
                raise ReportingError(409, "already reported: nothing to assign")
            conn.execute(
                sa.update(worklist_item)
                .where(worklist_item.c.id == row.id)
                .values(claimed_at=now, **self._claim_values(now, assignee))
            )
        self._audit_report_event(row, f"assigned to {username}")
        return self.item(study_uid)

    def set_priority(self, study_uid: str, priority: str) -> dict[str, Any]:
        if not self._principal.sees_everything:
            raise ReportingError(403, "only a PACS admin may change a priority")
        try:
            new = Priority(priority)
        except ValueError:
            raise ReportingError(
                422, f"priority {priority!r}: one of {', '.join(p.value for p in Priority)}"
            ) from None
        with self._write.begin() as conn:
            row = self._locked_item(conn, study_uid)
            conn.execute(
                sa.update(worklist_item)
                .where(worklist_item.c.id == row.id)
                .values(
                    priority=new.value, due_at=_aware(row.arrived_at) + target(self._region, new)
                )
            )
        return self.item(study_uid)

    # -- reports -------------------------------------------------------------------------
    def templates(self) -> dict[str, str]:
        return dict(TEMPLATES)

    def report(self, study_uid: str) -> dict[str, Any]:
        """The report of a study the principal may see (404 when none or hidden)."""
        visible = self._rules.visible_patients(self._principal)
        q = (
            sa.select(report)
            .select_from(
                report.join(study, study.c.study_instance_uid == report.c.study_instance_uid).join(
                    patient, patient.c.id == study.c.patient_fk
                )
            )
            .where(report.c.study_instance_uid == study_uid)
        )
        if visible is not None:
            q = q.where(visible)
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
            if row is None:
                raise ReportingError(404, "no report for this study yet")
            events = conn.execute(
                sa.select(report_event)
                .where(report_event.c.report_fk == row.id)
                .order_by(report_event.c.id)
            ).all()
        return self._report_json(row, events)

    def published(self, study_uids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Preliminary and final reports (not drafts) of studies the caller has already
        found through the query service (which applied the access rules), by UID."""
        if not study_uids:
            return {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(report).where(
                    report.c.study_instance_uid.in_(list(study_uids)),
                    report.c.status.in_(("preliminary", "final")),
                )
            ).all()
            events = conn.execute(
                sa.select(report_event)
                .where(report_event.c.report_fk.in_([r.id for r in rows]))
                .order_by(report_event.c.id)
            ).all()
        by_report: dict[int, list[sa.Row[Any]]] = {}
        for e in events:
            by_report.setdefault(e.report_fk, []).append(e)
        return {r.study_instance_uid: self._report_json(r, by_report.get(r.id, [])) for r in rows}

    @staticmethod
    def _report_json(row: sa.Row[Any], events: Sequence[sa.Row[Any]]) -> dict[str, Any]:
        m = row._mapping

        def ev(e: sa.Row[Any]) -> dict[str, Any]:
            return {
                "kind": e.kind,
                "text": e.text,
                "author": e.author,
                "author_name": e.author_name,
                "author_trust": e.author_trust,
                "at": _iso(e.at),
            }

        return {
            "study_instance_uid": m["study_instance_uid"],
            "status": m["status"],
            "text": m["text"],
            "template": m["template"],
            "author": m["author"],
            "author_name": m["author_name"],
            "author_trust": m["author_trust"],
            "created_at": _iso(m["created_at"]),
            "updated_at": _iso(m["updated_at"]),
            "preliminary_at": _iso(m["preliminary_at"]),
            "signed_at": _iso(m["signed_at"]),
            "version": m["version"],
            "sr_sop_instance_uid": m["sr_sop_instance_uid"],
            "addenda": [
                {k: v for k, v in ev(e).items() if k != "kind"}
                for e in events
                if e.kind == "addendum"
            ],
            "history": [ev(e) for e in events],
            "second_opinion": (
                {
                    "requested_by": m["second_opinion_requested_by"],
                    "reason": m["second_opinion_reason"],
                }
                if m["second_opinion_requested_by"]
                else None
            ),
            "discrepancy": (
                {"text": m["discrepancy"], "by": m["discrepancy_by"]} if m["discrepancy"] else None
            ),
        }

    def _event(
        self, conn: sa.Connection, report_pk: int, kind: str, text: str | None, now: dt.datetime
    ) -> int:
        p = self._principal
        return int(
            conn.execute(
                sa.insert(report_event)
                .values(
                    report_fk=report_pk,
                    kind=kind,
                    text=text,
                    author=p.user_id,
                    author_name=p.name or "",
                    author_trust=p.trust or "",
                    at=now,
                )
                .returning(report_event.c.id)
            ).scalar_one()
        )

    @staticmethod
    def _clean(text: Any) -> str:
        if not isinstance(text, str):
            raise ReportingError(422, "text must be a string")
        if len(text) > MAX_TEXT:
            raise ReportingError(422, f"the report is over {MAX_TEXT} characters")
        if any(ord(c) < 32 and c not in "\n\r\t" for c in text):
            raise ReportingError(422, "the text has control characters")
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def _note(self, text: Any, missing: str) -> str:
        """A short text (addendum, reason, discrepancy): cleaned, 422 ``missing`` if empty."""
        note = self._clean(text).strip()
        if len(note) < 3:
            raise ReportingError(422, missing)
        return note

    def save(
        self,
        study_uid: str,
        text: Any,
        status: Any,
        *,
        template: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Save a draft, save a preliminary report or sign final (module doc)."""
        self._require_reporter()
        if status not in ("draft", "preliminary", "final"):
            raise ReportingError(422, "status must be draft, preliminary or final")
        text = self._clean(text)
        now = dt.datetime.now(dt.UTC)
        p = self._principal
        signed: SignedReport | None = None
        with self._write.begin() as conn:
            item = self._locked_item(conn, study_uid)
            if item.status == "final":
                raise ReportingError(
                    409,
                    f"already signed final by {item.reported_by}: a final report is never "
                    "edited; add an addendum",
                )
            holder = self._holder(item, now)
            if holder is not None and holder != p.user_id:
                raise ReportingError(409, self._held_message(item))
            if status == "final" and len(text.strip()) < MIN_FINAL_TEXT:
                raise ReportingError(
                    422, f"a final report needs its text (at least {MIN_FINAL_TEXT} characters)"
                )
            existing = _report_row(conn, study_uid)
            if version is not None and existing is not None and existing.version != version:
                raise ReportingError(
                    409,
                    f"the report changed since you loaded it (version {existing.version}, "
                    f"by {existing.author}): reload it",
                )
            values: dict[str, Any] = {
                "status": status,
                "text": text,
                "author": p.user_id,
                "author_name": p.name or "",
                "author_trust": p.trust or "",
                "updated_at": now,
            }
            if template is not None:
                values["template"] = str(template)[:32]
            if status == "preliminary":
                values["preliminary_at"] = now
            if status == "final":
                values["signed_at"] = now
            if existing is None:
                report_pk = int(
                    conn.execute(
                        sa.insert(report)
                        .values(study_instance_uid=study_uid, created_at=now, version=1, **values)
                        .returning(report.c.id)
                    ).scalar_one()
                )
                self._event(conn, report_pk, "draft", None, now)
            else:
                report_pk = existing.id
                conn.execute(
                    sa.update(report)
                    .where(report.c.id == report_pk)
                    .values(version=report.c.version + 1, **values)
                )
            item_values: dict[str, Any] = {"status": status}
            if status == "final":
                item_values |= {"reported_at": now, "reported_by": p.user_id, **_NO_CLAIM}
            else:  # saving claims (or renews the claim)
                item_values |= self._claim_values(now)
                if holder is None:
                    item_values["claimed_at"] = now
            conn.execute(
                sa.update(worklist_item).where(worklist_item.c.id == item.id).values(item_values)
            )
            if status != "draft":
                event_pk = self._event(conn, report_pk, status, text, now)
                if status == "final":
                    signed = self._signed(conn, item, text, now, "final", now)
                    if self._outputs is not None:
                        self._outputs.queue_result(conn, signed, event_pk)
        if status != "draft":
            self._audit_report_event(item, f"report {status}")
        if signed is not None:
            self._store_sr(signed)
        return self.report(study_uid)

    def addendum(self, study_uid: str, text: Any) -> dict[str, Any]:
        self._require_reporter()
        text = self._note(text, "an addendum needs its text")
        now = dt.datetime.now(dt.UTC)
        with self._write.begin() as conn:
            item = self._locked_item(conn, study_uid)
            existing = _report_row(conn, study_uid)
            if existing is None or existing.status != "final":
                raise ReportingError(
                    409, "an addendum is added to a final report; this one is not signed yet"
                )
            event_pk = self._event(conn, existing.id, "addendum", text, now)
            conn.execute(
                sa.update(report)
                .where(report.c.id == existing.id)
                # None until the new version's SR is stored (store_missing_srs retries)
                .values(version=report.c.version + 1, updated_at=now, sr_sop_instance_uid=None)
            )
            signed = self._signed(
                conn, item, existing.text, _aware(existing.signed_at), "addendum", now
            )
            if self._outputs is not None:
                self._outputs.queue_result(conn, signed, event_pk)
        self._audit_report_event(item, "addendum added")
        self._store_sr(signed)
        return self.report(study_uid)

    def second_opinion(self, study_uid: str, reason: Any) -> dict[str, Any]:
        """Ask a colleague: the request is recorded and the claim released for them."""
        self._require_reporter()
        reason = self._note(reason, "say what the second opinion is about")
        now = dt.datetime.now(dt.UTC)
        with self._write.begin() as conn:
            item = self._locked_item(conn, study_uid)
            existing = _report_row(conn, study_uid)
            if existing is None:
                raise ReportingError(409, "save a draft before asking for a second opinion")
            self._event(conn, existing.id, "second-opinion", reason, now)
            conn.execute(
                sa.update(report)
                .where(report.c.id == existing.id)
                .values(
                    second_opinion_requested_by=self._principal.user_id,
                    second_opinion_reason=reason,
                    updated_at=now,
                )
            )
            holder = self._holder(item, now)
            if item.status != "final" and holder == self._principal.user_id:
                conn.execute(
                    sa.update(worklist_item).where(worklist_item.c.id == item.id).values(_NO_CLAIM)
                )
        self._audit_report_event(item, "second opinion requested")
        return self.report(study_uid)

    def discrepancy(self, study_uid: str, text: Any) -> dict[str, Any]:
        """Flag a discrepancy in a final report (peer review, a later reader)."""
        self._require_reporter()
        text = self._note(text, "describe the discrepancy")
        now = dt.datetime.now(dt.UTC)
        with self._write.begin() as conn:
            item = self._locked_item(conn, study_uid)
            existing = _report_row(conn, study_uid)
            if existing is None or existing.status != "final":
                raise ReportingError(409, "a discrepancy is flagged on a final report")
            self._event(conn, existing.id, "discrepancy", text, now)
            conn.execute(
                sa.update(report)
                .where(report.c.id == existing.id)
                .values(discrepancy=text, discrepancy_by=self._principal.user_id, updated_at=now)
            )
        self._audit_report_event(item, "discrepancy flagged")
        return self.report(study_uid)

    def _signed(
        self,
        conn: sa.Connection,
        item: sa.Row[Any],
        text: str,
        signed_at: dt.datetime,
        event: Literal["final", "addendum"],
        now: dt.datetime,
    ) -> SignedReport:
        rep = _report_row(conn, item.study_instance_uid, required=True)
        addenda = conn.execute(
            sa.select(report_event)
            .where(report_event.c.report_fk == rep.id, report_event.c.kind == "addendum")
            .order_by(report_event.c.id)
        ).all()
        pat = conn.execute(
            sa.select(patient)
            .select_from(patient.join(study, study.c.patient_fk == patient.c.id))
            .where(study.c.study_instance_uid == item.study_instance_uid)
        ).one()
        return SignedReport(
            study_instance_uid=item.study_instance_uid,
            accession_number=item.accession_number or "",
            patient_id=pat.patient_id,
            issuer=pat.issuer,
            patient_name=pat.patient_name,
            birth_date=pat.patient_birth_date,
            sex=pat.patient_sex,
            nhs_number=pat.nhs_number,
            requesting_trust=item.requesting_trust,
            requesting_site=item.requesting_site,
            modality=item.modality,
            study_description=item.study_description,
            text=text,
            author=Reporter(rep.author, rep.author_name, rep.author_trust),
            signed_at=signed_at,
            addenda=tuple(
                Addendum(
                    a.text or "", Reporter(a.author, a.author_name, a.author_trust), _aware(a.at)
                )
                for a in addenda
            ),
            event=event,
            event_at=now,
        )

    def _store_sr(self, signed: SignedReport) -> bool:
        """Store the report's SR in its study; False (logged) when that failed: the
        report stays signed, its ORU queued, and store_missing_srs tries again."""
        if self._outputs is None:
            return False
        try:
            sop_uid = self._outputs.store_sr(signed)
        except Exception:
            log.exception("could not store the SR of %s (retried later)", signed.study_instance_uid)
            return False
        with self._write.begin() as conn:
            conn.execute(
                sa.update(report)
                .where(report.c.study_instance_uid == signed.study_instance_uid)
                .values(sr_sop_instance_uid=sop_uid)
            )
        return True

    def store_missing_srs(self, *, older_than: float = 60.0, limit: int = 50) -> int:
        """Store the SR of each final report whose SR is missing (storing failed after
        the signature committed); run by one process (the results worker). How many."""
        if self._outputs is None:
            return 0
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        with self._engine.connect() as conn:
            due = (
                conn.execute(
                    sa.select(report.c.study_instance_uid)
                    .where(
                        report.c.status == "final",
                        report.c.sr_sop_instance_uid.is_(None),
                        report.c.updated_at < cutoff,
                    )
                    .order_by(report.c.updated_at)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
        done = 0
        for uid in due:
            with self._engine.connect() as conn:
                item = conn.execute(
                    self._item_query().where(worklist_item.c.study_instance_uid == uid)
                ).first()
                rep = _report_row(conn, uid, required=True)
                if item is None or rep.signed_at is None:
                    continue
                addenda = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(report_event)
                    .where(report_event.c.report_fk == rep.id, report_event.c.kind == "addendum")
                ).scalar_one()
                signed = self._signed(
                    conn,
                    item,
                    rep.text,
                    _aware(rep.signed_at),
                    "addendum" if addenda else "final",
                    dt.datetime.now(dt.UTC),
                )
            done += int(self._store_sr(signed))
        return done

    def results(
        self, *, waiting: bool = True, trust: str | None = None, limit: int = 200
    ) -> dict[str, Any]:
        """The HL7 results (ORU) queued for the trusts: those waiting for delivery (or
        all), oldest first, with attempts and the last error; for PACS admins."""
        if not self._principal.sees_everything:
            raise ReportingError(403, "the results outbox is for PACS admins")
        q = sa.select(
            result_outbox.c.trust,
            result_outbox.c.study_instance_uid,
            result_outbox.c.control_id,
            result_outbox.c.created_at,
            result_outbox.c.attempts,
            result_outbox.c.next_attempt_at,
            result_outbox.c.last_error,
            result_outbox.c.sent_at,
        )
        if waiting:
            q = q.where(result_outbox.c.sent_at.is_(None))
        if trust:
            q = q.where(result_outbox.c.trust == trust)
        counts_q = (
            sa.select(result_outbox.c.trust, sa.func.count())
            .where(result_outbox.c.sent_at.is_(None))
            .group_by(result_outbox.c.trust)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(q.order_by(result_outbox.c.id).limit(limit)).all()
            counts: dict[str, int] = {t: int(n) for t, n in conn.execute(counts_q).all()}
        endpoints = {t.ods_code: t.results_endpoint for t in self._region.trusts}
        return {
            "waiting_by_trust": [
                {
                    "trust": t,
                    "waiting": int(counts.get(t, 0)),
                    "endpoint": f"{e.host}:{e.port}" if e else None,
                }
                for t, e in endpoints.items()
            ],
            "messages": [
                {
                    "trust": r.trust,
                    "study_instance_uid": r.study_instance_uid,
                    "control_id": r.control_id,
                    "queued_at": _iso(r.created_at),
                    "attempts": r.attempts,
                    "next_attempt_at": None if r.sent_at else _iso(r.next_attempt_at),
                    "last_error": r.last_error,
                    "sent_at": _iso(r.sent_at),
                }
                for r in rows
            ],
        }

    def _audit_report_event(self, item: sa.Row[Any], what: str) -> None:
        self._audit.record(
            AuditRecord(
                Event.PATIENT_RECORD,
                self._principal.actor(),
                purpose=Purpose.TREAT,
                patients=[(item.patient_id, item.issuer)],
                study_uids=[item.study_instance_uid],
                detail=what,
            )
        )

    # -- priors and turnaround -------------------------------------------------------------
    def priors(self, study_uid: str) -> dict[str, Any]:
        """The current study and the person's other studies from every trust, newest
        first (identities linked by NHS number are one person)."""
        self._require_reporter()
        with self._engine.connect() as conn:
            cur = conn.execute(
                self._item_query().where(worklist_item.c.study_instance_uid == study_uid)
            ).first()
            if cur is None:
                raise _not_found()
            same_person = sa.or_(
                patient.c.id
                == sa.select(study.c.patient_fk)
                .where(study.c.study_instance_uid == study_uid)
                .scalar_subquery(),
                sa.and_(patient.c.nhs_number.is_not(None), patient.c.nhs_number == cur.nhs_number),
            )
            modalities = (
                sa.select(sa.func.min(series.c.modality))
                .where(
                    series.c.study_fk == study.c.id, series.c.modality.not_in(["SR", "PR", "KO"])
                )
                .scalar_subquery()
            )
            q = (
                sa.select(
                    study.c.study_instance_uid,
                    study.c.study_date,
                    study.c.study_time,
                    study.c.study_description,
                    study.c.origin_trust,
                    patient.c.patient_id,
                    patient.c.issuer,
                    modalities.label("modality"),
                    worklist_item.c.status,
                )
                .select_from(
                    study.join(patient, patient.c.id == study.c.patient_fk).outerjoin(
                        worklist_item,
                        worklist_item.c.study_instance_uid == study.c.study_instance_uid,
                    )
                )
                .where(same_person, study.c.study_instance_uid != study_uid)
                .order_by(study.c.study_date.desc(), study.c.study_time.desc())
                .limit(200)
            )
            visible = self._rules.visible_patients(self._principal)
            if visible is not None:
                q = q.where(visible)
            rows = conn.execute(q).all()
        cur_json = self._item_json(cur, dt.datetime.now(dt.UTC))
        return {
            "study": {
                **cur_json,
                "description": cur_json["study_description"],
                "trust": cur_json["requesting_trust"],
            },
            "priors": [
                {
                    "study_instance_uid": r.study_instance_uid,
                    "study_date": r.study_date,
                    "modality": r.modality or "",
                    "description": r.study_description,
                    "trust": r.origin_trust or r.issuer,
                    "patient_id": r.patient_id,
                    "issuer": r.issuer,
                    "report_status": r.status,
                }
                for r in rows
            ],
        }

    def turnaround(self, days: int = 30) -> dict[str, Any]:
        """Arrival-to-final times, backlog and breaches per trust and modality."""
        self._require_reporter()
        if not 1 <= days <= 366:
            raise ReportingError(422, "days must be 1 to 366")
        now = dt.datetime.now(dt.UTC)
        since = now - dt.timedelta(days=days)
        q = (
            sa.select(
                worklist_item.c.requesting_trust,
                worklist_item.c.modality,
                worklist_item.c.priority,
                worklist_item.c.status,
                worklist_item.c.arrived_at,
                worklist_item.c.due_at,
                worklist_item.c.reported_at,
            )
            .select_from(
                worklist_item.join(
                    study, study.c.study_instance_uid == worklist_item.c.study_instance_uid
                ).join(patient, patient.c.id == study.c.patient_fk)
            )
            .where(
                self._scope(),
                sa.or_(worklist_item.c.status.in_(OPEN), worklist_item.c.reported_at >= since),
            )
        )
        with self._engine.connect() as conn:
            rows = conn.execute(q).all()
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        by_priority: dict[tuple[str, str], int] = {}
        for r in rows:
            g = groups.setdefault(
                (r.requesting_trust, r.modality),
                {"times": [], "backlog": 0, "breaches": 0, "open_breaches": 0},
            )
            due = _aware(r.due_at)
            if r.status == "final" and r.reported_at is not None:
                done = _aware(r.reported_at)
                g["times"].append((done - _aware(r.arrived_at)).total_seconds() / 60)
                if done > due:
                    g["breaches"] += 1
            else:
                g["backlog"] += 1
                key = (r.requesting_trust, r.priority)
                by_priority[key] = by_priority.get(key, 0) + 1
                if now > due:
                    g["breaches"] += 1
                    g["open_breaches"] += 1
        out = []
        for (trust, modality), g in sorted(groups.items()):
            times = sorted(g["times"])
            out.append(
                {
                    "trust": trust,
                    "modality": modality,
                    "reported": len(times),
                    "median_minutes": _centile(times, 50),
                    "p90_minutes": _centile(times, 90),
                    "backlog": g["backlog"],
                    "breaches": g["breaches"],
                    "open_breaches": g["open_breaches"],
                }
            )
        return {
            "days": days,
            "rows": out,
            "backlog_by_priority": [
                {"trust": t, "priority": p, "count": c}
                for (t, p), c in sorted(
                    by_priority.items(), key=lambda kv: (kv[0][0], Priority(kv[0][1]).rank)
                )
            ],
        }


def _centile(values: list[float], pct: int) -> float | None:
    """Nearest-rank centile of sorted values, in whole minutes (None when empty)."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, -(-pct * len(values) // 100) - 1))
    return round(values[k], 1)

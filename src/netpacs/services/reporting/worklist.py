"""The regional worklist: which new series make a worklist item (priority,
subspecialty, target time), and the worklist each reporter sees.

A study that needs a report becomes a worklist item when its first image series
arrives from a modality or a user (DIMSE C-STORE, STOW-RS); history migrated with
``netpacs import``, re-indexed objects and copies from peer archives are not queued
(they were reported where they were made), nor are series of non-image objects (SR,
presentation states, key objects). Each item has the requesting trust and site (where
it was captured), modality, body part, a subspecialty, a priority and a target time
(``due_at``) from the region's turnaround targets.

Priority is read from the request attributes the modality copied from its worklist
(in order of precedence): Requested Procedure Priority STAT or a requesting service
naming the emergency department -> emergency; "2WW"/"two week wait"/"cancer pathway"
in the reason for the request or the procedure description -> cancer-2ww; HIGH or a
ward/inpatient requesting service -> inpatient; a GP requesting service -> gp;
otherwise outpatient. An admin can change it (services.reporting.claims).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from netpacs.domain.dicom.header import JsonDataset, first_str
from netpacs.domain.outcomes import Origin, Problem, Protocol
from netpacs.domain.region import SUBSPECIALTIES, AEKind, Region
from netpacs.index.records import InstanceRecord
from netpacs.index.reporting import first_image, insert_worklist_item
from netpacs.index.schema import patient, study, worklist_item
from netpacs.services.access import Principal
from netpacs.services.reporting.common import (
    OPEN,
    Priority,
    ReportingError,
    ReportingScope,
    item_json,
    not_found,
    target,
)

#: Series of these modalities are not images to report (they may come with a study).
NOT_REPORTED = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG", "RWV", "PLAN", "OT", ""})

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

View = Literal["all", "mine", "subspecialty", "trust"]
StatusFilter = Literal["open", "reported", "all"]


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


def _new_item(
    region: Region,
    *,
    study_uid: str,
    modality: str,
    body_part: str,
    header: JsonDataset,
    priority: Priority | None,
    arrived_at: dt.datetime,
) -> dict[str, Any]:
    """A worklist item's values (requesting trust, site and description to be added)."""
    chosen = priority or priority_of(header)
    return {
        "study_instance_uid": study_uid,
        "modality": modality,
        "body_part": body_part,
        "subspecialty": subspecialty_of(modality, body_part, header),
        "priority": chosen.value,
        "arrived_at": arrived_at,
        "due_at": arrived_at + target(region, chosen),
        "status": "unreported",
    }


@dataclass(frozen=True, slots=True)
class WorklistRule:
    """The index writer's hook for a new series (index.writer.NewSeriesHook). A study
    with an order takes the order's priority, and waits for its MPPS when the region
    says so (services.reporting.orders)."""

    region: Region

    def __call__(
        self, conn: sa.Connection, record: InstanceRecord, study_pk: int, now: dt.datetime
    ) -> None:
        from netpacs.services.reporting.orders import OrderedStudies

        modality = record.series.modality.upper()
        origin = record.origin
        if modality in NOT_REPORTED or not _queued(origin, self.region):
            return
        wait, ordered = OrderedStudies(self.region).on_new_series(
            conn,
            study_uid=record.study.study_instance_uid,
            accession_number=record.study.accession_number,
            trust=record.study.origin_trust or origin.trust or "",
        )
        if wait:
            return
        values = _new_item(
            self.region,
            study_uid=record.study.study_instance_uid,
            modality=modality,
            body_part=record.series.body_part_examined,
            header=record.header,
            priority=ordered,
            arrived_at=now,
        )
        insert_worklist_item(
            conn,
            values
            | {
                "requesting_trust": record.study.origin_trust or origin.trust or "",
                "requesting_site": record.study.origin_site,
                "study_description": record.study.study_description,
            },
        )


def stored_study_item(
    conn: sa.Connection,
    region: Region,
    study_uid: str,
    *,
    priority: Priority | None,
    arrived_at: dt.datetime,
) -> dict[str, Any]:
    """The worklist item of a stored study from its first image (NOT_FOUND without the
    study, INVALID when it has no images to report)."""
    st = conn.execute(sa.select(study).where(study.c.study_instance_uid == study_uid)).first()
    if st is None:
        raise not_found()
    first = first_image(conn, st.id, skip=NOT_REPORTED)
    if first is None:
        raise ReportingError(Problem.INVALID, "the study has no images to report")
    values = _new_item(
        region,
        study_uid=study_uid,
        modality=first.modality.upper(),
        body_part=first.body_part_examined,
        header=orjson.loads(first.metadata_json),
        priority=priority,
        arrived_at=arrived_at,
    )
    return values | {
        "requesting_trust": st.origin_trust or "",
        "requesting_site": st.origin_site,
        "study_description": st.study_description,
    }


# -- the worklist ----------------------------------------------------------------------


def open_order() -> tuple[sa.ColumnElement[Any], ...]:
    """The open items' order: priority, then time to breach, then arrival. PostgreSQL
    has an index in this order (migration 0019, which spells the same expression)."""
    rank = sa.case({p.value: p.rank for p in Priority}, value=worklist_item.c.priority, else_=99)
    return (rank, worklist_item.c.due_at, worklist_item.c.id)


def _per_trust_and_priority(*conditions: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The open worklist items meeting ``conditions``, counted per requesting trust and
    priority."""
    by = (worklist_item.c.requesting_trust, worklist_item.c.priority)
    return (
        sa.select(*by, sa.func.count())
        .where(worklist_item.c.status.in_(OPEN), *conditions)
        .group_by(*by)
    )


class WorklistService:
    """The worklist a reporter sees, and an admin adding a study to it."""

    def __init__(self, scope: ReportingScope) -> None:
        self._scope = scope

    def for_principal(self, principal: Principal) -> WorklistService:
        return WorklistService(self._scope.for_principal(principal))

    def with_agreements(self, principal: Principal) -> Principal:
        """The principal with its reporting agreements (see ReportingScope)."""
        return self._scope.with_agreements(principal)

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
        """The principal's items, by priority and time to breach (reported: newest
        first), the open items' counts per trust and priority, and the choices."""
        scope = self._scope
        scope.require_reporter()
        now = dt.datetime.now(dt.UTC)
        q = self._filtered(scope.items(), view, trust, subspecialty, status, now)
        if priority:
            q = q.where(worklist_item.c.priority == Priority.parse(priority).value)
        order = (worklist_item.c.reported_at.desc(),) if status == "reported" else open_order()
        with scope.read_engine.connect() as conn:
            rows = conn.execute(q.order_by(*order).limit(max(1, min(limit, 2000)))).all()
            counts = conn.execute(self._counts()).all()
        return {
            "items": [item_json(r, now) for r in rows],
            "counts": sorted(
                ({"trust": t, "priority": pr, "count": int(c)} for t, pr, c in counts),
                key=lambda c: (c["trust"], Priority(c["priority"]).rank),
            ),
            "me": self._me(),
            "priorities": [
                {
                    "code": pr.value,
                    "label": pr.label,
                    "target_hours": scope.region.reporting.turnaround_hours[pr.value],
                }
                for pr in Priority
            ],
            "subspecialties": list(SUBSPECIALTIES),
        }

    def _filtered(
        self,
        q: sa.Select[Any],
        view: View,
        trust: str | None,
        subspecialty: str | None,
        status: StatusFilter,
        now: dt.datetime,
    ) -> sa.Select[Any]:
        """``q`` narrowed to a status, a view and the trust and subspecialty asked for."""
        p = self._scope.principal
        if status == "open":
            q = q.where(worklist_item.c.status.in_(OPEN))
        elif status == "reported":
            q = q.where(worklist_item.c.status == "final")
        if view == "mine":
            q = q.where(
                sa.or_(
                    sa.and_(
                        worklist_item.c.claimed_by == p.user_id,
                        worklist_item.c.claim_expires_at > now,
                    ),
                    worklist_item.c.reported_by == p.user_id,
                )
            )
        elif view == "subspecialty":
            wanted = [subspecialty] if subspecialty else list(self._scope.subspecialties())
            q = q.where(worklist_item.c.subspecialty.in_(wanted))
        elif view == "trust":
            q = q.where(worklist_item.c.requesting_trust == (trust or p.trust))
        if trust and view != "trust":
            q = q.where(worklist_item.c.requesting_trust == trust)
        if subspecialty and view != "subspecialty":
            q = q.where(worklist_item.c.subspecialty == subspecialty)
        return q

    def _counts(self) -> sa.Select[Any]:
        """Open items per requesting trust and priority, of the principal's scope (an
        item whose study row has gone, hidden by a rejection, is neither listed nor
        counted); with a patient condition, through the items' studies and patients."""
        alone = self._scope.item_condition()
        if alone is not None:
            return self.counts_of(alone)
        joined = worklist_item.join(
            study, study.c.study_instance_uid == worklist_item.c.study_instance_uid
        ).join(patient, patient.c.id == study.c.patient_fk)
        return _per_trust_and_priority(self._scope.condition()).select_from(joined)

    @staticmethod
    def counts_of(items: sa.ColumnElement[bool]) -> sa.Select[Any]:
        """Open ``items`` per requesting trust and priority, when no patient condition
        applies: by the items' ``study_gone`` mark alone (migration 0020: one index of
        the open items, where looking each one up in the study index took 29 ms at
        8,082 open items)."""
        return _per_trust_and_priority(items, ~worklist_item.c.study_gone)

    def _me(self) -> dict[str, Any]:
        p = self._scope.principal
        return {
            "username": p.user_id,
            "name": p.name or "",
            "trust": p.trust,
            "role": p.role.value,
            "subspecialties": list(self._scope.subspecialties()),
        }

    def item(self, study_uid: str) -> dict[str, Any]:
        """The principal's worklist item of a study (NOT_FOUND when not theirs)."""
        self._scope.require_reporter()
        return self._scope.item(study_uid)

    def statuses(self, study_uids: Sequence[str]) -> dict[str, str]:
        """Report status of each study on the worklist (for study lists): unreported,
        draft, preliminary or final. Studies the principal already sees; no scope."""
        if not study_uids:
            return {}
        with self._scope.read_engine.connect() as conn:
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
        imported outside study that needs a report here); CONFLICT when it is already
        on it, INVALID when it has no images to report."""
        scope = self._scope
        scope.require_admin("add studies to the worklist")
        chosen = Priority.parse(priority) if priority is not None else None
        arrived = arrived_at or dt.datetime.now(dt.UTC)
        with scope.write_engine.begin() as conn:
            values = stored_study_item(
                conn, scope.region, study_uid, priority=chosen, arrived_at=arrived
            )
            if not insert_worklist_item(conn, values):
                raise ReportingError(Problem.CONFLICT, "the study is already on the worklist")
        return self.item(study_uid)

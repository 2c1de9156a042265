"""A report's text rules and templates, the report as the API shows it, and the
report as it is signed (domain.report.SignedReport, what its ORU and SR are made of)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any, Literal

import sqlalchemy as sa

from netpacs.domain.outcomes import Problem
from netpacs.domain.report import Addendum, Reporter, SignedReport
from netpacs.index.schema import patient, report_event, study
from netpacs.services.reporting.common import ReportingError, aware, iso, report_row

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
MAX_TEXT = 100_000
#: The statuses of a report that everyone who may see the patient reads (FHIR
#: DiagnosticReport, /api/reports); a draft is its author's and reporting colleagues'.
PUBLISHED = ("preliminary", "final")


def clean(text: Any) -> str:
    """A report's text with newlines made one kind; INVALID when it cannot be one."""
    if not isinstance(text, str):
        raise ReportingError(Problem.INVALID, "text must be a string")
    if len(text) > MAX_TEXT:
        raise ReportingError(Problem.INVALID, f"the report is over {MAX_TEXT} characters")
    if any(ord(c) < 32 and c not in "\n\r\t" for c in text):
        raise ReportingError(Problem.INVALID, "the text has control characters")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def note(text: Any, missing: str) -> str:
    """A short text (addendum, reason, discrepancy): cleaned, INVALID ``missing`` if empty."""
    cleaned = clean(text).strip()
    if len(cleaned) < 3:
        raise ReportingError(Problem.INVALID, missing)
    return cleaned


def report_json(row: sa.Row[Any], events: Sequence[sa.Row[Any]]) -> dict[str, Any]:
    """A report row and its events (oldest first) as the API shows them."""
    m = row._mapping

    def ev(e: sa.Row[Any]) -> dict[str, Any]:
        return {
            "kind": e.kind,
            "text": e.text,
            "author": e.author,
            "author_name": e.author_name,
            "author_trust": e.author_trust,
            "at": iso(e.at),
        }

    return {
        "study_instance_uid": m["study_instance_uid"],
        "status": m["status"],
        "text": m["text"],
        "template": m["template"],
        "author": m["author"],
        "author_name": m["author_name"],
        "author_trust": m["author_trust"],
        "created_at": iso(m["created_at"]),
        "updated_at": iso(m["updated_at"]),
        "preliminary_at": iso(m["preliminary_at"]),
        "signed_at": iso(m["signed_at"]),
        "version": m["version"],
        "sr_sop_instance_uid": m["sr_sop_instance_uid"],
        "addenda": [
            {k: v for k, v in ev(e).items() if k != "kind"} for e in events if e.kind == "addendum"
        ],
        "history": [ev(e) for e in events],
        "second_opinion": (
            {"requested_by": m["second_opinion_requested_by"], "reason": m["second_opinion_reason"]}
            if m["second_opinion_requested_by"]
            else None
        ),
        "discrepancy": (
            {"text": m["discrepancy"], "by": m["discrepancy_by"]} if m["discrepancy"] else None
        ),
    }


def signed_report(
    conn: sa.Connection,
    item: sa.Row[Any],
    text: str,
    signed_at: dt.datetime,
    event: Literal["final", "addendum"],
    now: dt.datetime,
) -> SignedReport:
    """The signed report of a worklist row (index.reporting.worklist_rows), with its
    patient and addenda as the index holds them in this transaction."""
    rep = report_row(conn, item.study_instance_uid, required=True)
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
            Addendum(a.text or "", Reporter(a.author, a.author_name, a.author_trust), aware(a.at))
            for a in addenda
        ),
        event=event,
        event_at=now,
    )

"""FHIR R4 resources from netpacs's records: ImagingStudy, DiagnosticReport, identifiers.

The mapping only (no HTTP): the routes of :mod:`.fhir` search and read, these functions
say how a study and its report look in FHIR (see :mod:`.fhir` for the systems used).
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

from netpacs.adapters.http.deps import DICOMWEB_ROOT
from netpacs.domain.region import Region
from netpacs.domain.report import sections
from netpacs.services.imaging_study import NHS_NUMBER_ISSUERS, StudyRecord

FHIR_ROOT = "/fhir"
FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
ISSUER_SYSTEM_PREFIX = "urn:netpacs:issuer:"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
ENDPOINT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
UK_TIME = ZoneInfo("Europe/London")
DEFAULT_COUNT = 50
MAX_COUNT = 500
_ENDPOINT_ID = "dicomweb"


def patient_identifier(value: str, issuer: str) -> dict[str, str]:
    """A DICOM Patient ID and Issuer of Patient ID as a FHIR Identifier."""
    if issuer.strip().upper() in NHS_NUMBER_ISSUERS:
        return {"system": NHS_NUMBER_SYSTEM, "value": value.replace(" ", "")}
    if issuer:
        return {"system": ISSUER_SYSTEM_PREFIX + issuer, "value": value}
    return {"value": value}


def _display_name(pn: str) -> str:
    """``FAMILY^Given^Middle^Prefix^Suffix`` as ``FAMILY, Given Middle`` (NHS style)."""
    parts = [p.strip() for p in pn.split("^")]
    family = parts[0] if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    return f"{family}, {given}" if family and given else family or given


def started(date: str, time: str, offset: str) -> str | None:
    """Study Date and Time as a FHIR dateTime (a time needs a zone there, FHIR R4 2.24)."""
    if not re.fullmatch(r"\d{8}", date):
        return None
    try:
        day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:8]))
    except ValueError:
        return None
    match = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", time.replace(":", ""))
    if not match:
        return day.isoformat()
    hh, mm, ss = (int(g or 0) for g in match.groups()[:3])
    try:
        moment = dt.datetime(day.year, day.month, day.day, hh, mm, min(ss, 59))
    except ValueError:
        return day.isoformat()
    zone = re.fullmatch(r"([+-])(\d{2})(\d{2})", offset.strip())
    if zone:
        sign = -1 if zone.group(1) == "-" else 1
        delta = dt.timedelta(hours=int(zone.group(2)), minutes=int(zone.group(3)))
        return moment.replace(tzinfo=dt.timezone(sign * delta)).isoformat()
    return moment.replace(tzinfo=UK_TIME).isoformat()


def _endpoint(base: str) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint",
        "id": _ENDPOINT_ID,
        "status": "active",
        "connectionType": {"system": ENDPOINT_TYPE_SYSTEM, "code": "dicom-wado-rs"},
        "name": "netpacs DICOMweb",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": base + DICOMWEB_ROOT,
    }


def _modality(code: str) -> dict[str, str]:
    return {"system": DCM_SYSTEM, "code": code}


def _series(record: StudyRecord) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in record.series:
        item: dict[str, Any] = {
            "uid": s.series_instance_uid,
            "modality": _modality(s.modality or "OT"),
        }
        if s.series_number is not None and s.series_number >= 0:
            item["number"] = s.series_number
        if s.series_description:
            item["description"] = s.series_description
        if s.number_of_instances is not None:
            item["numberOfInstances"] = s.number_of_instances
        if s.body_part_examined:
            # Body Part Examined is a DICOM defined term, not a SNOMED code: shown as text.
            item["bodySite"] = {"display": s.body_part_examined}
        out.append(item)
    return out


def imaging_study(record: StudyRecord, base: str) -> dict[str, Any]:
    """A StudyRecord as a FHIR R4 ImagingStudy (with its contained DICOMweb Endpoint)."""
    identifiers: list[dict[str, Any]] = [
        {
            "use": "official",
            "system": DICOM_UID_SYSTEM,
            "value": f"urn:oid:{record.study_instance_uid}",
        }
    ]
    if record.accession_number:
        identifiers.append(
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "value": record.accession_number,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": record.study_instance_uid,
        "contained": [_endpoint(base)],
        "identifier": identifiers,
        "status": "available",
        "subject": _subject(record),
        "endpoint": [{"reference": f"#{_ENDPOINT_ID}"}],
    }
    if record.modalities:
        resource["modality"] = [_modality(m) for m in record.modalities]
    when = started(record.study_date, record.study_time, record.timezone_offset)
    if when:
        resource["started"] = when
    if record.number_of_series is not None:
        resource["numberOfSeries"] = record.number_of_series
    if record.number_of_instances is not None:
        resource["numberOfInstances"] = record.number_of_instances
    if record.study_description:
        resource["description"] = record.study_description
    series = _series(record)
    if series:
        resource["series"] = series
    return resource


def _subject(record: StudyRecord) -> dict[str, Any]:
    if record.nhs_number:
        subject_id = {"system": NHS_NUMBER_SYSTEM, "value": record.nhs_number}
    else:
        subject_id = patient_identifier(record.patient_id, record.issuer_of_patient_id)
    subject: dict[str, Any] = {"type": "Patient", "identifier": subject_id}
    if record.patient_name:
        subject["display"] = _display_name(record.patient_name)
    return subject


def report_text(rep: dict[str, Any]) -> str:
    """The report as people read it: the signed text, then each addendum."""
    parts = [rep["text"].rstrip()]
    for a in rep["addenda"]:
        who = a["author_name"] or a["author"]
        parts.append(f"ADDENDUM ({who}, {a['author_trust']}, {a['at']}):\n{a['text'].strip()}")
    return "\n\n".join(parts) + "\n"


def _organisation(ods_code: str, region: Region) -> dict[str, Any]:
    trust = region.trust(ods_code)
    return {
        "type": "Organization",
        "identifier": {"system": ODS_SYSTEM, "value": ods_code},
        "display": trust.name if trust else ods_code,
    }


def diagnostic_report(
    record: StudyRecord, rep: dict[str, Any], base: str, region: Region
) -> dict[str, Any]:
    """A study's report (services.reporting) as a FHIR R4 DiagnosticReport."""
    status = rep["status"]
    if status == "final" and rep["addenda"]:
        status = "appended"
    text = report_text(rep)
    issued = rep["signed_at"] or rep["preliminary_at"] or rep["updated_at"]
    # The reporter's name as it is (a name may already say the trust, as the demo users'
    # do); their trust is the performer.
    interpreter = {
        "type": "Practitioner",
        "identifier": {"system": "urn:netpacs:user", "value": rep["author"]},
        "display": rep["author_name"] or rep["author"],
    }
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": record.study_instance_uid,
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "18748-4",
                    "display": "Diagnostic imaging study",
                }
            ],
            "text": record.study_description or "Imaging report",
        },
        "subject": _subject(record),
        "issued": issued,
        "resultsInterpreter": [interpreter],
        "performer": [_organisation(rep["author_trust"], region)],
        "imagingStudy": [{"reference": f"ImagingStudy/{record.study_instance_uid}"}],
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "en-GB",
                "data": base64.b64encode(text.encode()).decode("ascii"),
                "title": "Radiology report",
            }
        ],
    }
    resource["identifier"] = _report_identifiers(record, rep.get("order"))
    if not resource["identifier"]:
        del resource["identifier"]
    when = started(record.study_date, record.study_time, record.timezone_offset)
    if when:
        resource["effectiveDateTime"] = when
    conclusion = next(
        (
            body
            for heading, body in sections(rep["text"])
            if heading in ("Conclusion", "Impression")
        ),
        None,
    )
    if conclusion:
        resource["conclusion"] = conclusion
    return resource


def _report_identifiers(record: StudyRecord, order: dict[str, str] | None) -> list[dict[str, Any]]:
    """The accession number and, for a study with an HL7 order, its placer and filler
    order numbers (v2-0203 ACSN, PLAC, FILL)."""
    accession = (order or {}).get("accession_number") or record.accession_number
    values = [
        ("ACSN", accession),
        ("PLAC", (order or {}).get("placer_order_number", "")),
        ("FILL", (order or {}).get("filler_order_number", "")),
    ]
    return [
        {"type": {"coding": [{"system": V2_0203, "code": code}]}, "value": value}
        for code, value in values
        if value
    ]
